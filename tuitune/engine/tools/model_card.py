"""The model card (`README.md`) of an export pushed to the hub, written from the run's own records.

What a reader of the repository needs and the run already knows: the base model, the data, the strategy and its
phases (when each began and why), every command a person or an agent applied while it trained (from the run's
`CommandApplied` events: unfreezing, LR changes, pauses, with the step, the epoch and the sender), and the metrics
(the best epoch's, the final ones, the test split's). The YAML metadata (base model, library, tags, datasets, the
pipeline) is huggingface_hub's `ModelCardData`, so the hub reads it as it reads its own.

Reading the events costs time in the number of events that are not metric readings (`event_lines`), not in the
run's length. Plain Python and huggingface_hub: no torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuitune.config import RunProfile, load_profile
from tuitune.engine.events import CommandApplied, PhaseChanged, RunFinished, RunStarted, event_from_json
from tuitune.engine.record.history import event_lines
from tuitune.fmt import METRIC_TITLES, fmt_value, score_label

__all__ = ["RunStory", "build_card", "read_story"]

_WANTED = tuple(f'{{"type":"{t}"'.encode() for t in ("RunStarted", "PhaseChanged", "CommandApplied", "RunFinished"))
MAX_ROWS = 500  # interventions listed in the card; an agent that sent thousands leaves them in events.jsonl
PIPELINES = {"image": "image-classification", "text": "text-classification"}
LIBRARIES = {"timm": "timm", "hf": "transformers"}
STRATEGY_TAGS = {
    "progressive": "gradual-unfreezing",
    "lp_ft": "linear-probe-then-fine-tune",
    "lora": "lora",
    "head_only": "linear-probe",
    "full": "full-fine-tuning",
}


@dataclass
class RunStory:
    """What the card tells, read from a run directory: its resolved profile and the events that are not readings."""

    profile: RunProfile
    started: RunStarted | None = None
    phase_changes: list[PhaseChanged] = field(default_factory=list)
    commands: list[CommandApplied] = field(default_factory=list)
    finished: RunFinished | None = None


def read_story(run_dir: Path) -> RunStory:
    story = RunStory(load_profile(Path(run_dir) / "profile.toml"))
    for line in event_lines(Path(run_dir)):
        if not line.startswith(_WANTED):
            continue
        try:
            event = event_from_json(line.decode("utf-8"))
        except (ValueError, KeyError, TypeError):  # a torn last line of a run killed mid-write
            continue
        if isinstance(event, RunStarted):
            story.started = event  # a resumed run starts again: the last one holds the full phase plan
        elif isinstance(event, PhaseChanged):
            story.phase_changes.append(event)
        elif isinstance(event, CommandApplied):
            story.commands.append(event)
        elif isinstance(event, RunFinished):
            story.finished = event
    return story


def build_card(story: RunStory, manifest: dict[str, Any], repo_id: str) -> Any:
    """huggingface_hub's ModelCard: the metadata block, then the sections (see the module doc)."""
    from huggingface_hub import ModelCard, ModelCardData

    p = story.profile
    task = manifest.get("task", "image")
    tags = ["tuitune", PIPELINES[task], STRATEGY_TAGS.get(p.strategy.kind, p.strategy.kind)]
    tags += ["onnx"] * bool((manifest.get("onnx") or {}).get("written")) + ["safetensors"]
    data = ModelCardData(
        base_model=base_model_id(p),
        library_name=LIBRARIES.get(p.model.source, p.model.source),
        pipeline_tag=PIPELINES[task],
        tags=tags,
        datasets=hub_dataset(p),
    )
    sections = [
        _intro(story, repo_id),
        _phases(story),
        _interventions(story),
        _metrics(story),
        _usage(manifest, repo_id),
    ]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n\n".join(sections) + "\n")


def base_model_id(p: RunProfile) -> str | None:
    """The pretrained model the run started from, as a hub id, where it has one: an `hf` model named `org/name`, a
    timm `hf-hub:org/name`, a timm name whose pretrained weights timm fetches from the hub (`timm/resnet18.a1_in1k`).
    None for a local folder or weights file and for random initialization."""
    m = p.model
    if m.weights or not m.pretrained:
        return None
    for prefix in ("hf-hub:", "hf_hub:"):
        if m.name.startswith(prefix):
            return m.name[len(prefix) :]
    if m.source == "timm":
        return _timm_hub_id(m.name)
    local = m.name.startswith((".", "/", "~")) or Path(m.name).expanduser().exists()
    return m.name if m.name.count("/") == 1 and not local else None


def _timm_hub_id(name: str) -> str | None:
    """timm's own answer (its pretrained config's `hf_hub_id`); timm is loaded already by the export."""
    try:
        from timm.models import get_pretrained_cfg

        cfg = get_pretrained_cfg(name)
    except Exception:  # not a timm name with pretrained weights, or timm's API moved
        return None
    hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    return str(hub_id) if hub_id else None


def hub_dataset(p: RunProfile) -> list[str] | None:
    """The data as a hub dataset id, where it is one (`data.kind = "hf"` with a hub `data.name`)."""
    name = str(getattr(p.data, "name", "") or "")
    if p.data.kind != "hf" or name.count("/") != 1 or Path(name).expanduser().exists():
        return None
    return [name]


def _data_text(p: RunProfile, started: RunStarted | None) -> str:
    d = p.data
    where = {"digits": "scikit-learn's handwritten digits", "synthetic": "synthetic data"}.get(d.kind)
    if where is None:
        where = f"`{getattr(d, 'name', '') or Path(d.path).name}` ({d.kind})"
    if started is None:
        return where
    classes = ", ".join(started.classes[:20]) + (", ..." if len(started.classes) > 20 else "")
    return (
        f"{where}: {started.train_size:,} train / {started.val_size:,} val examples, "
        f"{len(started.classes)} classes ({classes})"
    )


def _intro(story: RunStory, repo_id: str) -> str:
    p, t, ended = story.profile, story.profile.train, story.finished
    base = f"`{p.model.name}` ({LIBRARIES.get(p.model.source, p.model.source)})"
    if p.model.weights:
        base += f", from the weights file `{Path(p.model.weights).name}`"
    elif not p.model.pretrained:
        base += ", from random initialization"
    rows = [
        ("Base model", base),
        ("Data", _data_text(p, story.started)),
        ("Strategy", _strategy_text(p)),
        ("Training", f"{t.epochs} epochs, {t.optimizer} lr {t.lr:g}, batch size {p.data.batch_size}, seed {t.seed}"),
        ("Run", f"`{p.name}`: {ended.status} ({ended.reason})" if ended else f"`{p.name}`: no end recorded"),
    ]
    table = "\n".join(["| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)])
    return f"# {repo_id.split('/')[-1]}\n\nFine-tuned with tuitune from {base}.\n\n{table}"


def _strategy_text(p: RunProfile) -> str:
    st = p.strategy
    if st.kind != "progressive":
        return f"`{st.kind}`"
    fallback = f" (fallback `{st.fallback}`)" if st.trigger == "plateau" and st.fallback else ""
    return (
        f"`progressive`: {st.groups_per_phase} layer group(s) unfrozen per phase, trigger `{st.trigger}`{fallback}, "
        f"every {st.every_epochs} epochs; each deeper group's LR x{st.lr_decay:g}"
    )


def _phases(story: RunStory) -> str:
    """One row per phase the run entered: its groups, when and why it began, its epochs and best score."""
    metric = story.started.metric if story.started else "acc"
    began = {0: "start"} | {c.phase: f"epoch {c.epoch}, step {c.global_step} ({c.reason})" for c in story.phase_changes}
    ran = {int(ph["index"]): ph for ph in (story.finished.phases if story.finished else ())}
    plan = story.started.phases if story.started else ()
    rows = []
    for i, groups in enumerate(plan):
        if i not in ran and i not in began:
            continue
        ph = ran.get(i, {})
        best = fmt_value("val_score", ph.get("best_val_score"), metric)
        rows.append(f"| {i + 1} | {', '.join(groups)} | {began.get(i, '-')} | {ph.get('epochs', '-')} | {best} |")
    planned = f"{len(plan)} phases planned, {len(rows)} entered." if plan else "No phases recorded."
    header = f"| phase | trainable groups | began | epochs | best {score_label('val_score', metric)} |"
    return "\n".join(["## Phases", "", planned, "", header, "|---|---|---|---|---|", *rows])


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell: no column breaks, one line."""
    return " ".join(text.replace("|", "\\|").split()) or "-"


def _interventions(story: RunStory) -> str:
    """Every command applied while the run trained, in order, with who sent it (the first MAX_ROWS of them)."""
    if not story.commands:
        return "## Interventions\n\nNone: the run followed its profile, no command was applied while it trained."
    rows = [
        f"| {c.global_step} | {c.epoch} | {_cell(c.command)} | {_cell(c.detail)} | {_cell(c.sender or 'unknown')} |"
        for c in story.commands[:MAX_ROWS]
    ]
    more = len(story.commands) - len(rows)
    intro = f"{len(story.commands)} command(s) applied while the run trained, from its event log"
    intro += f" (the first {MAX_ROWS} below; all are in its events.jsonl):" if more > 0 else ":"
    return "\n".join(
        [
            "## Interventions",
            "",
            intro,
            "",
            "| step | epoch | command | detail | sender |",
            "|---|---|---|---|---|",
            *rows,
        ]
    )


def _metrics(story: RunStory) -> str:
    """The best epoch's score, then the final and the test metrics, each key with its raw value."""
    ended = story.finished
    if ended is None:
        return "## Metrics\n\nThe run recorded no end, so no final metrics."
    metric = story.started.metric if story.started else "acc"
    title = METRIC_TITLES.get(metric, metric)
    best = ended.best or {}
    key = str(best.get("metric", "val_score"))  # the checkpoint metric: exact match for a language model
    lines = [
        "## Metrics",
        "",
        f"Score: {title}. Best `{key}` {fmt_value(key, best.get('value'), metric)} (`{best.get('value')}`) at epoch "
        f"{best.get('epoch')}.",
        "",
        "| split | metric | value | raw |",
        "|---|---|---|---|",
    ]
    for split, values in (("final", ended.final), ("test", ended.test)):
        for label, shown, raw in _rows(values or {}, metric):
            lines.append(f"| {split} | {label} | {shown} | {raw} |")
    return "\n".join(lines)


def _rows(values: dict[str, Any], metric: str) -> list[tuple[str, str, Any]]:
    """A split's metrics as (label, value as shown, raw value): each class's score a row of its own (`acc: spam`);
    the epoch and phase none."""
    rows: list[tuple[str, str, Any]] = []
    for key, value in values.items():
        if isinstance(value, dict):  # per_class
            label = score_label("score", metric)
            rows += [(f"{label}: {name}", fmt_value("score", v, metric), v) for name, v in value.items()]
        elif key not in ("epoch", "phase"):
            rows.append((score_label(key, metric), fmt_value(key, value, metric), value))
    return rows


def _usage(manifest: dict[str, Any], repo_id: str) -> str:
    """How to load what was pushed, with the libraries alone (no tuitune)."""
    if manifest.get("source") == "timm":
        load = f'import timm\nmodel = timm.create_model("hf-hub:{repo_id}", pretrained=True).eval()'
    elif manifest.get("pooling") == "mean":
        load = (
            f'from transformers import AutoModel\nbase = AutoModel.from_pretrained("{repo_id}")\n'
            "# + head.safetensors (weight, bias) over the attention-masked mean of last_hidden_state"
        )
    else:
        cls = (
            "AutoModelForSequenceClassification"
            if manifest.get("task") == "text"
            else "AutoModelForImageClassification"
        )
        load = f'from transformers import {cls}\nmodel = {cls}.from_pretrained("{repo_id}")'
    text = (
        f"## Use\n\n```python\n{load}\n```\n\nClass names: `classes.json`; the run's resolved profile: `profile.toml`."
    )
    onnx = manifest.get("onnx") or {}
    if onnx.get("written"):
        inputs = ", ".join(f"`{n}`" for n in onnx["inputs"])
        text += (
            f"\n\n`model.onnx` takes {inputs} (dynamic axes: "
            f"{json.dumps(onnx['dynamic_axes'])}) and gives `logits`; checked against PyTorch with onnxruntime on "
            f"the run's validation data at export: largest |diff| {onnx['max_abs_diff']:.2e}."
        )
    return text
