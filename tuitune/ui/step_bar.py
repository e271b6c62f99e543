"""The header's third line: where a step's time goes (`MetricsUpdated.step_split`), as a bar and its shares, and a
hint when the run waits for its data.

`▕██████████▓▓▓▓▓▒▏ data 63% · fwd+bwd 30% · optim 5% · rest 2% · 41.2 ms/step`; data-bound:
`▕██████████▓▓▓▓▓▒▏ ⚠ data loading is 63% of each step: raise data.num_workers (now 0) · fwd+bwd 30% · ...`.
Plain arithmetic over the event's numbers: no clock.
"""

from __future__ import annotations

from rich.text import Text

from tuitune.engine.events import SystemSampled

PARTS = (  # (key in step_split, label, bar style, bar glyph: the parts stay apart without colours too)
    ("data", "data", "bold #e5c07b", "█"),
    ("compute", "fwd+bwd", "#4ec96f", "▓"),
    ("optimizer", "optim", "#61afef", "▒"),
    ("rest", "rest", "#a0a0a0", "░"),
)
WIDTH = 16  # cells of the bar
DATA_BOUND = 0.3  # the data's share of a step from which the hint shows


def shares(split: dict[str, float]) -> dict[str, float]:
    """Each part's share of the step (they sum to 1; all 0 for an empty split)."""
    total = sum(max(split.get(key, 0.0), 0.0) for key, *_ in PARTS)
    return {key: (max(split.get(key, 0.0), 0.0) / total if total > 0 else 0.0) for key, *_ in PARTS}


def cells(share: dict[str, float], width: int = WIDTH) -> dict[str, int]:
    """Cells of the bar per part: largest remainders, so they fill exactly `width` (none for an empty split)."""
    if not any(share.values()):
        return dict.fromkeys(share, 0)
    exact = {k: v * width for k, v in share.items()}
    out = {k: int(v) for k, v in exact.items()}
    for k in sorted(exact, key=lambda k: exact[k] - out[k], reverse=True)[: width - sum(out.values())]:
        out[k] += 1
    return out


def data_hint(share: float, system: SystemSampled | None, workers: int = 0) -> str:
    """What to do about a data-bound run, "" when it is not. `workers`: the training loader's (what
    `data.num_workers` resolved to; the system sample counts the validation loader's too, alive between epochs).
    With the system panel's newest sample, the cores are known: with as many workers as cores, more cannot help."""
    if share < DATA_BOUND:
        return ""
    text = f"data loading is {share:.0%} of each step"
    if system is not None and system.processes:
        if workers >= max(system.cpus - 1, 1):
            return f"{text}: the {workers} workers use every core: lighter augmentation, or data.cache_images"
        return f"{text}: raise data.num_workers (now {workers})"
    return f"{text}: raise data.num_workers"


def step_line(split: dict[str, float] | None, system: SystemSampled | None = None, workers: int = 0) -> Text | None:
    if not split:
        return None
    share = shares(split)
    n = cells(share)
    line = Text("▕", "dim")
    for key, _, style, glyph in PARTS:
        line.append(glyph * n[key], style)
    line.append("▏ ", "dim")
    hint = data_hint(share["data"], system, workers)
    parts = []
    for key, label, style, _ in PARTS:
        if key == "data" and hint:
            parts.append(Text(f"⚠ {hint}", "bold #e5c07b"))
        else:
            parts.append(Text.assemble((label, style), f" {share[key]:.0%}"))
    parts.append(Text(step_time(sum(split.values())), "dim"))
    return line + Text(" · ").join(parts)


def step_time(ms: float) -> str:
    """`41.2 ms/step`; from a second up in seconds (`19.1 s/step`: a language model on a CPU), so the line's end
    stays short enough for an 80-column terminal."""
    return f"{ms:.1f} ms/step" if ms < 1000 else f"{ms / 1000:.1f} s/step"
