"""A socket client that reads every message on a thread of its own, like a dashboard's worker: what the remote
tests attach with, to see the history, the Live line and the live events a viewer gets."""

from __future__ import annotations

import threading

from tuitune.remote import protocol
from tuitune.remote.client import RunClient


class Viewer:
    def __init__(self, client: RunClient) -> None:
        self.client = client
        self.messages: list[dict] = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        for m in self.client.messages():
            self.messages.append(m)

    def types(self) -> list[str]:
        return [m["type"] for m in self.messages]

    def applied(self) -> list[str]:
        return [m["command"] for m in self.messages if m["type"] == "CommandApplied"]

    def split(self) -> tuple[list[dict], list[dict]] | None:
        """(history, live) split at the Live line; None before it came."""
        types = self.types()
        if protocol.LIVE not in types:
            return None
        i = types.index(protocol.LIVE)
        return self.messages[:i], self.messages[i + 1 :]

    def live(self) -> list[dict]:
        parts = self.split()
        return parts[1] if parts else []
