"""The composing screen: from a picked profile, choose the strategy, edit the LR, epochs and batch size, see which
layer groups train in the first phase, then start the run or save it as a new profile.

Every edit rebuilds the profile through the profile parser itself (`profile_from_dict`, with its cross-checks), so
a bad value shows the very one-line error (file and key) a profile file would get, and start and save are refused
until it is fixed. The choices and bounds come from the declarations in `tuitune.config`. The backbone is built
once in a worker thread (`tuitune.engine.tools.layers`); the first-phase marks are the strategy's own plan.
Imports stay light: torch loads in the worker, never when this module is imported.
"""

from __future__ import annotations

import dataclasses
import operator
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.table import Table
from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Input, Label, Select, Static
from textual.widgets._input import InputType  # Input's `type` values (not re-exported)
from textual.worker import get_current_worker

from tuitune.config import (
    SECTIONS,
    ProfileError,
    RunProfile,
    apply_overrides,
    profile_from_dict,
    profile_to_dict,
)
from tuitune.errors import UserError
from tuitune.profiles.save import save_folder, write_profile
from tuitune.ui.memory_view import MemoryLine

# The keys this screen edits, in the order shown: (dotted key, label). Selects for keys declared with choices.
FIELDS = (
    ("strategy.kind", "strategy"),
    ("strategy.trigger", "trigger"),
    ("strategy.groups_per_phase", "groups/phase"),
    ("strategy.groups", "groups"),
    ("train.lr", "lr"),
    ("train.epochs", "epochs"),
    ("data.batch_size", "batch size"),
    ("name", "save as"),
)
NAME_OK = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def declared(dotted: str) -> dataclasses.Field:
    """The `opt(...)` declaration of a dotted profile key (its choices and bounds)."""
    section, _, key = dotted.rpartition(".")
    cls = SECTIONS[section] if section else RunProfile
    return next(f for f in dataclasses.fields(cls) if f.name == key)


def shown(value: Any) -> str:
    """A profile value as the text of its input: `0.002`, `12`, `layer3, layer4`."""
    return ", ".join(str(v) for v in value) if isinstance(value, (list, tuple)) else str(value)


def compose_profile(base: RunProfile, raw: dict[str, str], file: str) -> RunProfile:
    """`base` with the inputs' texts applied, parsed and validated as a profile file would be (ProfileError: one
    line naming `file` and the key). Numbers are read as TOML values, as `--set` reads them."""
    table = apply_overrides(
        profile_to_dict(base), [f"{k}={v}" for k, v in raw.items() if k not in ("strategy.groups", "name")]
    )
    if "strategy.groups" in raw:
        table["strategy"]["groups"] = [g.strip() for g in raw["strategy.groups"].split(",") if g.strip()]
    if "name" in raw:
        if not NAME_OK.fullmatch(raw["name"]):
            raise ProfileError(
                f"{file}: name: letters, digits, '.', '_' and '-' only (it names the saved file), got {raw['name']!r}"
            )
        table["name"] = raw["name"]
    return profile_from_dict(table, file, Path(file).parent)


def group_marks(rows: list[dict], phases: tuple[tuple[str, ...], ...]) -> list[Text]:
    """The phase each group starts to train in: the first (marked), a later one, or never."""
    marks = []
    for r in rows:
        joins = next((i for i, names in enumerate(phases) if r["name"] in names), None)
        if r["trainable"]:
            marks.append(Text("● phase 1", "bold green"))
        elif joins is None or r.get("adapters") == 0:  # not in the plan; under LoRA, nothing to train here
            marks.append(Text("· never", "dim"))
        else:
            marks.append(Text(f"· phase {joins + 1}", "yellow"))
    return marks


def groups_table(rows: list[dict], phases: tuple[tuple[str, ...], ...]) -> Table:
    """The layer groups, input to head, each marked with the phase it starts to train in."""
    table = Table(box=None, padding=(0, 1), expand=False, show_edge=False)
    table.add_column("group", no_wrap=True, overflow="ellipsis", max_width=18)
    table.add_column("params", justify="right", no_wrap=True)
    lora = any("adapters" in r for r in rows)
    if lora:
        table.add_column("LoRA", justify="right", no_wrap=True)
    table.add_column("trains in", no_wrap=True)
    for r, mark in zip(rows, group_marks(rows, phases)):
        table.add_row(r["name"], f"{r['params']:,}", *([f"{r.get('adapters', 0):,}"] if lora else []), mark)
    return table


class LayerGroupsRead(Message):
    """From the worker: the backbone's groups (`read`), or why not (`error`, one line), and the `groups_key` they
    were read for (None when even that failed)."""

    def __init__(self, read: Any, error: str, key: tuple | None) -> None:
        super().__init__()
        self.read = read
        self.error = error
        self.key = key


class ComposeScreen(Screen[None]):
    """Compose a run from `base` (a loaded profile); `start` is the picker's own start callback. `folder` names the
    profile's folder as the picker shows it (where the new profile is saved)."""

    CSS_PATH = "compose.tcss"
    BINDINGS = [
        Binding("ctrl+r", "start", "Start"),
        Binding("ctrl+s", "save", "Save as profile"),
        Binding("escape", "back", "Back"),
    ]

    def __init__(self, base: RunProfile, start: Callable[[RunProfile], None], folder: str = "") -> None:
        super().__init__()
        self.base = base
        self.file = base.source_path or "<profile>"
        moved = save_folder(Path(self.file)) != Path(self.file).parent  # a shipped profile: saved to ./profiles
        self.folder = "./profiles" if moved else folder or str(Path(self.file).parent)
        self.start = start
        self.profile: RunProfile | None = None  # the composed profile; None while an input is invalid
        self.valid = base  # the last valid one: what the layer groups are read for
        self.error = ""  # the one-line error of the inputs, or of the plan (an unknown group)
        self.read: Any = None  # the worker's GroupsRead (tuitune.engine.tools.layers)
        self.read_error = ""
        self.read_key: tuple | None = None
        self.reading = False
        self.saved: Path | None = None
        self.overwrite: Path | None = None  # the existing file a second ctrl+s replaces

    def compose(self) -> ComposeResult:
        yield Static(f"tuitune · compose a run from {self.base.name}", id="title")
        with Horizontal(id="body"):
            with VerticalScroll(id="form"):
                for key, label in FIELDS:
                    with Horizontal(classes="row"):
                        yield Label(label)
                        yield self._field(key)
            with VerticalScroll(id="groups-pane"):
                yield Static(id="groups")
                yield MemoryLine(id="memory")
        yield Static(id="message")
        yield Footer()

    def _field(self, key: str) -> Input | Select:
        wid = "f-" + key.replace(".", "-")
        choices = declared(key).metadata.get("choices", ()) if key != "name" else ()
        now = operator.attrgetter(key)(self.base)  # the base profile's value of the dotted key
        if choices:
            return Select([(c, c) for c in choices], value=now, allow_blank=False, compact=True, id=wid)
        value = f"{self.base.name}-composed" if key == "name" else shown(now)
        default = declared(key).default
        kind: InputType = "integer" if type(default) is int else "number" if type(default) is float else "text"
        kind = "text" if declared(key).metadata.get("words") else kind  # `batch_size = "auto"` is typed too
        placeholder = "names, comma-separated" if key == "strategy.groups" else ""
        return Input(value, placeholder=placeholder, type=kind, compact=True, id=wid)

    def on_mount(self) -> None:
        self.query_one("#form").border_title = "run"
        self.query_one("#groups-pane").border_title = "layer groups"
        self.revalidate()
        self.query_one("#f-strategy-kind", Select).focus()

    def raw(self) -> dict[str, str]:
        """The text of every input (a select's value as its text)."""
        out = {}
        for key, _ in FIELDS:
            widget = self.query_one("#f-" + key.replace(".", "-"))
            assert isinstance(widget, (Input, Select)), key  # what `_field` makes
            out[key] = str(widget.value)
        return out

    @on(Input.Changed)
    @on(Select.Changed)
    def revalidate(self) -> None:
        """Every edit: the whole profile again through the profile parser, then the first-phase marks."""
        try:
            self.profile, self.error = compose_profile(self.base, self.raw(), self.file), ""
            self.valid = self.profile
        except UserError as e:
            self.profile, self.error = None, " ".join(str(e).split())
        self.overwrite = None
        self.show_groups()
        self.show_message()
        if self.profile is not None:
            self.query_one(MemoryLine).plan_for(self.profile)

    @on(Input.Submitted)
    def next_field(self) -> None:
        self.focus_next()

    # ------------------------------------------------------------------------------------------ layer groups

    def read_groups(self) -> None:
        self.reading = True
        profile = self.valid
        self.run_worker(
            lambda: self._read_thread(profile), thread=True, exclusive=True, group="layers", exit_on_error=False
        )

    def _read_thread(self, profile: RunProfile) -> None:
        """In the worker thread: build the model (torch loads here), reply by message, unless a newer read
        replaced this one (the workers are exclusive: its answer would be stale)."""
        key = None
        try:
            from tuitune.engine.tools.layers import groups_key, read_groups

            key = groups_key(profile.strategy)
            answer = LayerGroupsRead(read_groups(profile), "", key)
        except UserError as e:  # a model that is not there (not cached, offline), a wrong name: its own line
            answer = LayerGroupsRead(None, " ".join(str(e).split()), key)
        except Exception as e:  # anything else is shown too: the picker goes on
            answer = LayerGroupsRead(None, " ".join(f"{type(e).__name__}: {e}".split()), key)
        if not get_current_worker().is_cancelled:
            self.post_message(answer)

    def on_layer_groups_read(self, message: LayerGroupsRead) -> None:
        self.reading = False
        self.read, self.read_error, self.read_key = message.read, message.error, message.key
        self.show_groups()
        self.show_message()

    def _stale(self) -> bool:
        """Nothing read yet, or read for other groups than the strategy now asks for (LoRA on / off, its rank)."""
        if self.read is None and not self.read_error:
            return True
        from tuitune.engine.tools.layers import groups_key  # the worker imported it (and torch) already

        return self.read_key is not None and groups_key(self.valid.strategy) != self.read_key

    def show_groups(self) -> None:
        """The groups with the first phase marked (the strategy's own plan), or why they are not shown yet."""
        pane = self.query_one("#groups", Static)
        if self.reading or self._stale():
            pane.update(Text("reading layer groups…", "italic dim"))
            if not self.reading:
                self.read_groups()
            return
        if self.read_error:
            pane.update(Text(f"cannot read the layer groups: {self.read_error}", "red"))
            return
        from tuitune.engine.tools.layers import first_phase_rows

        try:
            rows, plan = first_phase_rows(self.read, self.valid.strategy)
        except UserError as e:  # an unknown name in strategy.groups: invalid, like a bad value
            self.error = self.error or f"{self.file}: {' '.join(str(e).split())}"
            self.profile = None
            return
        pane.update(self._groups_view(rows, plan))

    def _groups_view(self, rows: list[dict], plan: Any) -> Any:
        from rich.console import Group

        trigger = self.valid.strategy.trigger
        then = (
            f"{len(plan.phases)} phases; each next one on trigger = {trigger}"
            if len(plan.phases) > 1
            else "1 phase: these groups train throughout"
        )
        scales = [f"LR x {s:g} from phase {i + 1}" for i, s in enumerate(plan.lr_scales) if s != 1.0]
        return Group(
            Text(self.read.description, "bold"),
            *(Text(n, "yellow") for n in self.read.notes),
            Text(),
            groups_table(rows, plan.phases),
            Text(),
            Text("; ".join([then, *scales]), "dim"),
        )

    # --------------------------------------------------------------------------------------- start and save

    def show_message(self) -> None:
        message = self.query_one("#message", Static)
        if self.error:
            message.update(Text(self.error, "bold red"))
        elif self.overwrite is not None:
            message.update(Text(f"{self.overwrite} exists: ctrl+s again overwrites it", "bold yellow"))
        elif self.saved is not None:
            message.update(Text(f"saved {self.saved}", "green"))
        else:
            name = self.profile.name if self.profile else ""
            message.update(Text(f"ctrl+r starts this run · ctrl+s saves it as {self.folder}/{name}.toml", "dim"))

    def refused(self, what: str) -> bool:
        if self.profile is None or self.error:
            self.notify(self.error, title=f"Cannot {what}", severity="error")
            return True
        return False

    def action_start(self) -> None:
        if not self.refused("start") and self.profile is not None:
            self.start(self.profile)

    def action_save(self) -> None:
        """A new file next to the source profile; an existing one only on a second ctrl+s, after saying so."""
        if self.refused("save") or self.profile is None:
            return
        path = save_folder(Path(self.file)) / f"{self.profile.name}.toml"
        if path.exists() and self.overwrite != path:
            self.overwrite = path
            self.show_message()
            return
        try:
            write_profile(self.profile, path)
        except OSError as e:
            self.notify(f"{path}: cannot write: {e}", title="Not saved", severity="error")
            return
        self.overwrite, self.saved = None, path
        self.show_message()

    def action_back(self) -> None:
        self.dismiss(None)
