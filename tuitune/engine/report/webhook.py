"""`[notify] webhook`: a POST when the run finishes, fails, or asks a person a question (the plateau trigger's
unfreeze, a phase's LR: `engine/questions.py` says when one opens), for the person who is not watching the terminal.

The body is what the service expects (`FORMATS`): Slack `{"text": ...}`, Discord `{"content": ...}`, or plain JSON
(the event's fields, the run's name and directory, and the same text). Delivery is urllib's, on the relay's thread
(`relay.py`): `tries` tries, 1 s, 2 s, 4 s ... apart, each waiting at most `timeout_s` for an answer. A 4xx answer
(a wrong URL, a revoked hook) is not tried again, except 429 (too many requests). A notification that still fails
is one warning for the run (`Unsent`: later ones are still tried, without another warning); the run goes on.
"""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tuitune.config.outputs import NotifyConfig
from tuitune.engine.events import (
    CommandApplied,
    Event,
    LRFound,
    PhaseChanged,
    RunFailed,
    RunFinished,
    RunStarted,
    UnfreezeSuggested,
    to_dict,
)
from tuitune.engine.questions import questions_after
from tuitune.engine.report.relay import SinkWarning
from tuitune.errors import first_line

__all__ = ["BACKOFF_S", "FORMATS", "DeliveryFailed", "Unsent", "Webhook", "post", "resolve_format"]

BACKOFF_S = 1.0  # the wait before the second try; doubled before each next
BULKY = ("misclassified", "confusion", "lrs", "losses", "per_class_report")  # left out of the JSON body

FORMATS: dict[str, Callable[[str, dict[str, Any]], dict[str, Any]]] = {
    "slack": lambda text, fields: {"text": text},
    "discord": lambda text, fields: {"content": text[:2000]},  # Discord's limit for a message
    "json": lambda text, fields: {**fields, "text": text},
}


class DeliveryFailed(Exception):
    """A notification that every try failed to deliver; the message names the host, never the URL's path."""


class Unsent(SinkWarning):
    """A notification not delivered: the relay's one warning for the webhook; later notifications are still tried."""


def resolve_format(fmt: str, url: str) -> str:
    """`auto`: Slack's or Discord's body for their hosts, plain JSON for any other."""
    if fmt != "auto":
        return fmt
    host = (urlsplit(url).hostname or "").lower()
    if host == "hooks.slack.com":
        return "slack"
    if host in ("discord.com", "discordapp.com") or host.endswith((".discord.com", ".discordapp.com")):
        return "discord"
    return "json"


def post(url: str, body: dict[str, Any], *, tries: int, timeout: float, backoff: float | None = None) -> int:
    """POST `body` as JSON; the number of tries it took. Raises `DeliveryFailed` when no try got a 2xx answer."""
    backoff = BACKOFF_S if backoff is None else backoff
    data = json.dumps(body).encode("utf-8")
    headers = {"Content-Type": "application/json", "User-Agent": "tuitune"}
    host = urlsplit(url).hostname
    for attempt in range(1, tries + 1):
        again = True
        try:
            request = urllib.request.Request(url, data=data, headers=headers, method="POST")
            with urllib.request.urlopen(request, timeout=timeout) as answer:
                answer.read()
            return attempt
        except urllib.error.HTTPError as e:  # an answer, not 2xx (3xx that urllib did not follow included)
            error, again = f"HTTP {e.code}", e.code >= 500 or e.code == 429
        except (OSError, http.client.HTTPException) as e:  # refused, reset, unreachable, timed out, garbled
            reason = getattr(e, "reason", e)
            error = (
                f"{type(reason).__name__}: {first_line(reason, 120)}"
                if isinstance(reason, BaseException)
                else str(reason)
            )
        if not again or attempt == tries:
            raise DeliveryFailed(f"{host}: {error} (try {attempt} of {tries})")
        time.sleep(backoff * 2 ** (attempt - 1))
    raise AssertionError("unreachable")


class Webhook:
    """The relay's sink for `[notify] webhook` (see the module docstring)."""

    name = "webhook"
    wants = frozenset({RunStarted, UnfreezeSuggested, LRFound, PhaseChanged, CommandApplied, RunFinished, RunFailed})

    def __init__(self, config: NotifyConfig, run_name: str, run_dir: Path) -> None:
        self.config = config
        self.format = resolve_format(config.format, config.webhook)
        self.run_name, self.run_dir = run_name, run_dir
        self.questions: tuple[Any, Any] = (None, None)  # the plateau question and the LR question now open

    def handle(self, event: Event) -> None:
        if isinstance(event, RunStarted):
            self.run_name = event.run_name
        before = self.questions
        self.questions = questions_after(*before, event)
        asked = [q for q, old in zip(self.questions, before) if q is not None and q is not old]
        for question in asked:
            self.send(question, _TEXTS[type(question)](question))
        if isinstance(event, (RunFinished, RunFailed)):
            self.send(event, _TEXTS[type(event)](event))

    def send(self, event: Event, what: str) -> None:
        text = f"tuitune: {self.run_name}: {what} ({self.run_dir})"
        fields = {k: v for k, v in to_dict(event).items() if k not in BULKY}
        body = FORMATS[self.format](text, {**fields, "run": self.run_name, "run_dir": str(self.run_dir)})
        try:
            post(self.config.webhook, body, tries=self.config.tries, timeout=self.config.timeout_s)
        except DeliveryFailed as e:
            raise Unsent(f"notify.webhook: could not notify {e}; later notifications are still tried, unwarned") from e

    def start(self) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def _finished(e: RunFinished) -> str:
    status = e.status.replace("_", " ")
    best = e.best or {}
    value = best.get("value")
    score = f"; best {best.get('metric')} {value:.4g} at epoch {best.get('epoch')}" if isinstance(value, float) else ""
    return f"run {status} after {e.epochs} epochs, {e.wall_s / 60:.1f} min{score}"


def _failed(e: RunFailed) -> str:
    return f"run failed: {e.message}"


def _plateau(e: UnfreezeSuggested) -> str:
    waits = "the run waits for your answer" if e.waiting else "the run goes on meanwhile"
    return (
        f"asks: {e.metric} has not improved for {e.epochs} epochs; unfreeze {', '.join(e.next_groups)}? "
        f"({waits}: tuitune attach)"
    )


def _lr(e: LRFound) -> str:
    return (
        f"asks: apply LR {e.suggestion:.3g} for phase {e.phase + 1}? (it applies by itself in {e.wait_s:.0f} s "
        f"unless you answer: tuitune attach)"
    )


_TEXTS: dict[type, Callable[[Any], str]] = {
    RunFinished: _finished,
    RunFailed: _failed,
    UnfreezeSuggested: _plateau,
    LRFound: _lr,
}
