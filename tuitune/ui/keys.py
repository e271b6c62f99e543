"""The dashboard's commands, listed once: each key's binding (and footer label), its command-palette entry, and
the log labels of the engine commands it sends. The dashboard's `BINDINGS`, the app's palette and `COMMAND_LABELS`
(the names the event log and the status bar give commands) are all read off `DASHBOARD_KEYS`, and so are the
dashboard's first-run hint line and the layer table's key line (`FIRST_RUN_HINT`, `LAYER_TABLE_HINT`), so a new key
is one entry here and the method of `KeyActions` (tuitune/ui/key_actions.py) its `action` names.
Plain Python (no Textual): the reducer imports it."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["COMMAND_LABELS", "DASHBOARD_KEYS", "FIRST_RUN_HINT", "LAYER_TABLE_HINT", "DashboardKey", "key_hints"]


@dataclass(frozen=True)
class DashboardKey:
    key: str  # the key on the dashboard
    action: str  # the KeyActions method it runs (bound as DashboardScreen's `key('<action>')`)
    footer: str  # the binding's short label in the footer
    title: str  # the command palette's entry
    help: str  # the palette's help line (the key is appended)
    sends: tuple[tuple[str, str], ...] = ()  # (engine command class name, its label in the log and on the plots)
    display: str = ""  # how the footer and the palette write the key ("+" for "plus"); the key itself when ""
    show: bool = True  # in the footer (every key is in the palette; the layer table's keys are on its border)
    hint: str = ""  # its words on a hint line (`key_hints`): the first-run hint, the layer table's border

    @property
    def shown_key(self) -> str:
        return self.display or self.key

    @property
    def palette_help(self) -> str:
        return f"{self.help} ({self.shown_key})"


DASHBOARD_KEYS: tuple[DashboardKey, ...] = (
    DashboardKey(
        "u",
        "unfreeze",
        "Unfreeze",
        "Unfreeze next phase",
        "Make the next layer group(s) trainable now",
        (("UnfreezeNext", "unfreeze next phase"),),
        hint="unfreeze next phase",
    ),
    DashboardKey(
        "s",
        "stop_early",
        "Stop",
        "Stop early",
        "Save a checkpoint, evaluate and show the summary",
        (("StopEarly", "stop early"),),
        hint="stop",
    ),
    DashboardKey(
        "p",
        "pause",
        "Pause",
        "Pause / resume",
        "Pause or resume training at the next step",
        (("Pause", "pause"), ("Resume", "resume")),
        hint="pause",
    ),
    DashboardKey(
        "c", "checkpoint", "Save", "Save checkpoint", "Save a checkpoint now", (("SaveCheckpoint", "save checkpoint"),)
    ),
    DashboardKey(
        "f",
        "find_lr",
        "Find LR",
        "Find LR",
        "Sweep the learning rate from the current weights, then offer the suggestion",
        (("FindLR", "find LR"), ("ApplyLR", "apply LR")),  # ApplyLR: the `a` key of the curve's window
        hint="find LR",
    ),
    DashboardKey(
        "space",
        "toggle_group",
        "Freeze",
        "Freeze / unfreeze group",
        "Freeze or unfreeze the layer group selected in the table (select with up/down)",
        (("SetGroupTrainable", "freeze/unfreeze group"),),
        display="space",
        show=False,
        hint="freeze",
    ),
    DashboardKey(
        "plus",
        "lr_up",
        "LR×1.5",
        "Raise LR ×1.5",
        "Multiply the selected group's LR by 1.5 (every group's when none is selected)",
        (("ScaleGroupLR", "scale LR"),),
        display="+",
        show=False,
        hint="LR",
    ),
    DashboardKey(
        "minus",
        "lr_down",
        "LR÷1.5",
        "Lower LR ÷1.5",
        "Divide the selected group's LR by 1.5 (every group's when none is selected)",
        display="-",
        show=False,
        hint="LR",
    ),
    DashboardKey(
        "escape",
        "clear_selection",
        "Unselect",
        "Clear group selection",
        "Hide the layer table's cursor: + and - then act on every group",
        display="esc",
        show=False,
    ),
    DashboardKey(
        "b",
        "adapt_bn",
        "AdaBN",
        "Adapt BatchNorm (AdaBN)",
        "Re-estimate every BatchNorm layer's running statistics on target batches, then measure the shift",
        (("AdaptBatchNorm", "AdaBN"),),
        show=False,
    ),
    DashboardKey(
        "r",
        "roll_back",
        "Roll back",
        "Roll back phase",
        "Undo the current phase: the weights of the phase before's best epoch, its groups frozen again",
        (("RollBackPhase", "roll back phase"),),
        show=False,
    ),
    DashboardKey(
        "y",
        "answer_yes",
        "Yes",
        "Answer yes",
        "Answer the open question yes: unfreeze at the plateau, apply a phase's suggested LR",
        show=False,
    ),
    DashboardKey(
        "n",
        "answer_no",
        "No",
        "Answer no",
        "Answer the open question no: keep the phase at the plateau, keep a phase's starting LR",
        show=False,
    ),
    DashboardKey(
        "g",
        "generate",
        "Generate",
        "Generate samples",
        "A language model's greedy generations for the fixed validation prompts, now (the samples panel)",
        (("GenerateSamples", "generate samples"),),
        show=False,
        hint="generate",
    ),
    DashboardKey("l", "log_scale", "Log y", "Toggle log scale", "Log scale for the loss plot"),
    DashboardKey(
        "x",
        "x_span",
        "Span",
        "Toggle x span",
        "The plots' x axis: follow the run, or show every planned epoch",
        hint="span",
    ),
    DashboardKey(
        "m",
        "system_panel",
        "System",
        "Toggle system panel",
        "Show or hide the machine under the run: each GPU's utilisation, memory, temperature and power; the run's "
        "CPU, RAM and DataLoader workers (shown by default where there is a GPU)",
        show=False,
    ),
    DashboardKey(
        "q",
        "quit_run",
        "Quit",
        "Quit",
        "Leave the dashboard: detach (the run goes on) or stop the run (asks first)",
        hint="quit",
    ),
)

COMMAND_LABELS: dict[str, str] = {name: label for k in DASHBOARD_KEYS for name, label in k.sends}


def key_hints(*keys: str) -> list[str]:
    """`key hint` for each of `keys` (DashboardKey.key), in this order; keys in a row that share their hint make one
    part (`+/- LR`)."""
    by_key = {k.key: k for k in DASHBOARD_KEYS}
    parts: list[tuple[list[str], str]] = []
    for name in keys:
        k = by_key[name]
        if parts and parts[-1][1] == k.hint:
            parts[-1][0].append(k.shown_key)
        else:
            parts.append(([k.shown_key], k.hint))
    return [f"{'/'.join(shown)} {hint}" for shown, hint in parts]


# what a newcomer reads first, in that order; the layer table's arrows are the table's own keys, not the dashboard's
FIRST_RUN_HINT = " · ".join(key_hints("u", "f", "p", "s", "x", "q"))
LAYER_TABLE_HINT = " · ".join(["↑↓ select", *key_hints("space", "plus", "minus")])
