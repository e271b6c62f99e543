"""Which questions a run asks a person now, from its events: the plateau trigger's (`UnfreezeSuggested`) and a
phase's LR sweep (`LRFound` with `wait_s` > 0). One rule for everyone who follows a run: the dashboard's reducer
folds typed events, `tuitune ctl` (and the agents that steer through it) the same events as JSON objects.

A question stays open until the engine moves on: a phase change ends the plateau's, an applied LR the phase's LR
question, a Resume a plateau question the run waits on (whoever sent it), the run's end both. Plain Python."""

from __future__ import annotations

from typing import Any

__all__ = ["ENDS", "questions_after"]

ENDS = ("RunFinished", "RunFailed")  # the events a run ends with


def _get(event: Any, name: str, default: Any = None) -> Any:
    return event.get(name, default) if isinstance(event, dict) else getattr(event, name, default)


def _kind(event: Any) -> str:
    return str(event.get("type")) if isinstance(event, dict) else type(event).__name__


def questions_after(plateau: Any, lr: Any, event: Any) -> tuple[Any, Any]:
    """(the plateau question, the phase's LR question) open after `event`, given those open before it; each is
    the event that asked it (typed, or its JSON object, as `event` is), or None."""
    kind = _kind(event)
    if kind == "UnfreezeSuggested":
        return event, lr
    if kind == "PhaseChanged":
        return None, lr
    if kind == "LRFound":
        return plateau, (event if float(_get(event, "wait_s") or 0) > 0 else lr)
    if kind == "CommandApplied" and _get(event, "command") == "ApplyLR":
        return plateau, None
    if kind == "CommandApplied" and _get(event, "command") == "Resume" and plateau and _get(plateau, "waiting"):
        return None, lr
    if kind in ENDS:
        return None, None
    return plateau, lr
