"""Which event answers which command: the one place a command sent over the control socket is matched to the engine's
confirmation (`CommandApplied`) or refusal (`CommandRefused`), so its sender (`tuitune ctl`, an agent) hears how it
ended.

A client may give a command an `id` (any short string or integer); the server then answers that client alone with a
`Reply` line once the engine has acted on it: `{"type": "Reply", "id": ..., "ok": true|false, "event": {...}}`. A
command without an id gets no reply (older clients, the dashboard: they read the broadcast events).

The engine's events carry no id: they name the command's type (`CommandApplied.command`). The match is by order,
which is exact because the engine applies the commands of its one queue in the order the server put them there (held
commands keep their order) and confirms each once; every command put on the queue is remembered here, with an id or
not, so that a dashboard's `UnfreezeNext` is never taken for a script's. An `ApplyLR` also matches on its value: the
engine confirms a phase's LR sweep (`strategy.phase_lr = "find"`) with an `ApplyLR` of its own when nobody answers.
"""

from __future__ import annotations

import collections
import json
import threading
from dataclasses import dataclass
from typing import Any

from tuitune.engine.commands import ApplyLR, Command
from tuitune.engine.events import Event, to_dict

REPLY = "Reply"
MAX_PENDING = 1000  # commands awaiting the engine (a run that stops leaves its queue unapplied): the oldest go first
MAX_ID = 64  # characters of an id's text
# event type -> whether it says the command was applied (True) or refused (False). A `CommandRefused` answers a
# queued command when `queued` says the engine refused it at the step boundary (a layer group the run lacks); one
# refused at the socket's edge never reached the queue.
VERDICTS = {"CommandApplied": True, "CommandRefused": False}


class BadId(ValueError):
    """A request id that is not a short string or an integer."""


def take_id(data: dict[str, Any]) -> str | int | None:
    """Pop a command line's optional `id` (the rest is the command). Raises BadId for one that is not a string of
    at most MAX_ID characters or an integer (bools are not)."""
    request_id = data.pop("id", None)
    if request_id is None:
        return None
    if isinstance(request_id, bool) or not isinstance(request_id, (str, int)) or len(str(request_id)) > MAX_ID:
        raise BadId(f"'id' must be a string of at most {MAX_ID} characters or an integer, got {request_id!r}")
    return request_id


def take_sender(data: dict[str, Any]) -> str:
    """Pop a command line's optional `sender` tag ("agent"): who the run's log names as the command's sender,
    beside the socket client's number. Raises BadId for one that is not a short printable string."""
    tag = data.pop("sender", "")
    if not isinstance(tag, str) or len(tag) > MAX_ID or not tag.isprintable():
        raise BadId(f"'sender' must be a printable string of at most {MAX_ID} characters, got {tag!r}")
    return tag


def reply_line(request_id: str | int, ok: bool, event: dict[str, Any] | None = None, reason: str = "") -> bytes:
    body: dict[str, Any] = {"type": REPLY, "id": request_id, "ok": ok}
    if event is not None:
        body["event"] = event
    if reason:
        body["reason"] = reason
    return (json.dumps(body, separators=(",", ":")) + "\n").encode()


@dataclass
class _Sent:
    name: str  # the command's type
    lr: float | None  # ApplyLR's value
    sender: object  # whoever is told (the server's client), when `request_id` is set
    request_id: str | int | None


class Pending:
    """The commands on the engine's queue, in order, until the event that answers each passes by."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sent: collections.deque[_Sent] = collections.deque(maxlen=MAX_PENDING)

    def add(self, command: Command, sender: object, request_id: str | int | None) -> None:
        lr = command.lr if isinstance(command, ApplyLR) else None
        with self._lock:
            self._sent.append(_Sent(type(command).__name__, lr, sender, request_id))

    def answer(self, event: Event) -> tuple[object, bytes] | None:
        """For an engine event: (the sender to tell, its `Reply` line) when it answers a command sent with an id;
        None otherwise. Called for every event: one dict lookup for the others."""
        ok = VERDICTS.get(type(event).__name__)
        if ok is None or (not ok and not getattr(event, "queued", False)):  # refused at the edge: never queued
            return None  # (its sender had its `Refused` line then)
        name = getattr(event, "command", "")
        with self._lock:
            for i, sent in enumerate(self._sent):
                if sent.name == name and (sent.lr is None or sent.lr == getattr(event, "value", sent.lr)):
                    del self._sent[i]
                    break
            else:
                return None
        if sent.request_id is None:
            return None
        reason = "" if ok else str(getattr(event, "reason", ""))
        return sent.sender, reply_line(sent.request_id, ok, to_dict(event), reason)
