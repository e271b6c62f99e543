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

    @property
    def palette_help(self) -> str:
        return f"{self.help} ({self.key})"


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
    DashboardKey("l", "log_scale", "Log y", "Toggle log scale", "Log scale for the loss plot"),
    DashboardKey("q", "quit_run", "Quit", "Quit", "Leave the dashboard: detach (the run goes on) or stop the run (asks first)"),
)

COMMAND_LABELS: dict[str, str] = {name: label for k in DASHBOARD_KEYS for name, label in k.sends}
