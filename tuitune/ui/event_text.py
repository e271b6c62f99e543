"""One-line texts for events the dashboard both logs and shows elsewhere (the question bar, the LR finder screen).

Plain functions of an event, shared by the reducer (its log lines) and the widgets that ask the questions, so a
question reads the same in the log and on screen. No Textual here.
"""

from __future__ import annotations

from typing import Any

from tuitune.engine.events import DomainShiftMeasured, LayerInfo, LRFound, UnfreezeSuggested
from tuitune.engine.tools.compress_report import read_report
from tuitune.fmt import fmt_sci, score_label


def shift_text(e: DomainShiftMeasured, layers: tuple[LayerInfo, ...]) -> str:
    """The most shifted groups and, at the start, what to consider: unfreezing the shifted frozen groups (lower
    layers see the data first), and for BatchNorm models AdaBN (the `b` key)."""
    measured = sorted(((v, g) for g, v in zip(e.groups, e.shifts) if v is not None), reverse=True)
    ref = "BN running stats" if e.reference == "bn" else "source data"
    top = ", ".join(f"{g} {v:.2f}" for v, g in measured[:2])
    text = f"domain shift vs {ref}: most shifted {top}"
    if e.reason == "AdaptBatchNorm":
        return f"after AdaBN, {text}"
    if e.reason != "start" or not measured or measured[0][0] < 0.1:
        return text
    frozen = {layer.name for layer in layers if not layer.trainable}
    advice = (
        [f"unfreezing {', '.join(g for _, g in measured[:2] if g in frozen)}"]
        if any(g in frozen for _, g in measured[:2])
        else []
    )
    if e.reference == "bn":
        advice.append("re-estimating BatchNorm statistics on the target data (AdaBN: b)")
    return text + (f"; consider {' or '.join(advice)}" if advice else "")


def suggestion_text(e: UnfreezeSuggested, metric: str = "acc") -> str:
    groups = ", ".join(e.next_groups) or "the next group"
    return f"{score_label(e.metric, metric)} flat for {e.epochs} epochs: unfreeze {groups}?"


def lr_found_text(e: LRFound) -> str:
    """`suggested 3.2e-03 (valley), steepest 1.1e-02, current 2.0e-03`, or why there is no suggestion."""
    if not e.found:
        return e.no_suggestion_text()
    how = " (valley)" if e.suggestion == e.valley else (" (steepest)" if e.suggestion == e.steep else "")
    return f"suggested {fmt_sci(e.suggestion)}{how}, steepest {fmt_sci(e.steep)}, current {fmt_sci(e.current_lr)}"


def compression_text(report: dict[str, Any]) -> str:
    """One event-log line: the first and last steps' compressed sizes and val accuracies."""
    steps = read_report(report).steps
    if not steps:
        return "compression: no steps reported"
    first, last = steps[0].cells(), steps[-1].cells()
    return (
        f"compression: {len(steps)} steps, zlib {first['zlib']} → {last['zlib']} ({last['step']}), "
        f"val acc {first['val acc']} → {last['val acc']}"
    )
