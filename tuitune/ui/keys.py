"""The dashboard's commands, listed once: each key's binding (and footer label), its command-palette entry, and
the log labels of the engine commands it sends. The dashboard's `BINDINGS`, the app's palette and the reducer's
`COMMAND_LABELS` are all read off `DASHBOARD_KEYS`, so a new key is one entry here (and its `action_*` method).
Plain Python (no Textual): the reducer imports it."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["COMMAND_LABELS", "DASHBOARD_KEYS", "DashboardKey"]


@dataclass(frozen=True)
class DashboardKey:
    key: str  # the key on the dashboard
    action: str  # DashboardScreen.action_<action>
    footer: str  # the binding's short label in the footer
    title: str  # the command palette's entry
    help: str  # the palette's help line (the key is appended)
    sends: tuple[tuple[str, str], ...] = ()  # (engine command class name, its label in the log and on the plots)
    display: str = ""  # how the footer and the palette write the key ("+" for "plus"); the key itself when ""
    show: bool = True  # in the footer (every key is in the palette; the layer table's keys are on its border)

    @property
    def shown_key(self) -> str:
        return self.display or self.key

    @property
    def palette_help(self) -> str:
        return f"{self.help} ({self.shown_key})"


DASHBOARD_KEYS: tuple[DashboardKey, ...] = (
    DashboardKey("u", "unfreeze", "Unfreeze", "Unfreeze next phase", "Make the next layer group(s) trainable now",
                 (("UnfreezeNext", "unfreeze next phase"),)),
    DashboardKey("s", "stop_early", "Stop", "Stop early", "Save a checkpoint, evaluate and show the summary",
                 (("StopEarly", "stop early"),)),
    DashboardKey("p", "pause", "Pause", "Pause / resume", "Pause or resume training at the next step",
                 (("Pause", "pause"), ("Resume", "resume"))),
    DashboardKey("c", "checkpoint", "Save", "Save checkpoint", "Save a checkpoint now",
                 (("SaveCheckpoint", "save checkpoint"),)),
    DashboardKey("f", "find_lr", "Find LR", "Find LR",
                 "Sweep the learning rate from the current weights, then offer the suggestion",
                 (("FindLR", "find LR"), ("ApplyLR", "apply LR"))),  # ApplyLR: the `a` key of the curve's window
    DashboardKey("space", "toggle_group", "Freeze", "Freeze / unfreeze group",
                 "Freeze or unfreeze the layer group selected in the table (select with up/down)",
                 (("SetGroupTrainable", "freeze/unfreeze group"),), display="space", show=False),
    DashboardKey("plus", "lr_up", "LR×1.5", "Raise LR ×1.5",
                 "Multiply the selected group's LR by 1.5 (every group's when none is selected)",
                 (("ScaleGroupLR", "scale LR"),), display="+", show=False),
    DashboardKey("minus", "lr_down", "LR÷1.5", "Lower LR ÷1.5",
                 "Divide the selected group's LR by 1.5 (every group's when none is selected)", display="-", show=False),
    DashboardKey("escape", "clear_selection", "Unselect", "Clear group selection",
                 "Hide the layer table's cursor: + and - then act on every group", display="esc", show=False),
    DashboardKey("b", "adapt_bn", "AdaBN", "Adapt BatchNorm (AdaBN)",
                 "Re-estimate every BatchNorm layer's running statistics on target batches, then measure the shift",
                 (("AdaptBatchNorm", "AdaBN"),), show=False),
    DashboardKey("l", "log_scale", "Log y", "Toggle log scale", "Log scale for the loss plot"),
    DashboardKey("x", "x_span", "Span", "Toggle x span",
                 "The plots' x axis: follow the run, or show every planned epoch"),
    DashboardKey("q", "quit_run", "Quit", "Quit", "Leave the dashboard: detach (the run goes on) or stop the run (asks first)"),
)

COMMAND_LABELS: dict[str, str] = {name: label for k in DASHBOARD_KEYS for name, label in k.sends}
