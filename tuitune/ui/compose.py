"""The composing screen: from a picked profile, choose the backbone and the data, the strategy, the LR, epochs and
batch size; see what the data holds and which layer groups train in the first phase; then start the run or save it
as a new profile.

Every edit rebuilds the profile through the profile parser itself (`profile_from_dict`, with its cross-checks), so
a bad value shows the very one-line error (file and key) a profile file would get, and start and save are refused
until it is fixed. The choices and bounds come from the declarations in `tuitune.config`. The backbone input
completes timm's names (with source timm) or the models in the Hugging Face cache (hf), a path on disk (a local
folder), or takes any hub id; the data inputs complete paths and the datasets in the cache. A path typed here is
taken from the working folder (what the completion lists), not from the profile's. Choosing another backbone drops
the base profile's `model.kwargs` and weights file (they were the old backbone's); another data kind drops the old
kind's keys (its classes, its columns, its path).

What follows the profile lives in `compose_panes`: the data's read-out (a dataset's splits and columns) and the layer
groups with the first phase marked, each read in a worker thread. Completions are made in threads too
(`completion`). Imports stay light: torch loads in the workers, never when this module is imported.
"""

from __future__ import annotations

import dataclasses
import operator
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Input, Label, Select, Static
from textual.widgets._input import InputType  # Input's `type` values (not re-exported)

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
from tuitune.ui.completion import CACHED, CANDIDATES, PATHS, ListSuggester
from tuitune.ui.compose_panes import DataPane, Following, GroupsPane
from tuitune.ui.memory_view import MemoryLine

# The keys this screen edits, in the order shown: (dotted key, label). Selects for keys declared with choices.
FIELDS = (
    ("model.source", "model from"),
    ("model.name", "backbone"),
    ("model.weights", "weights"),
    ("data.kind", "data"),
    ("data.path", "data path"),
    ("data.name", "hub dataset"),
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
# Which completions an input offers: a list of `completion.CANDIDATES` (model.name's follows the backbone's source).
COMPLETES = {"model.weights": PATHS, "data.path": PATHS, "data.name": "dataset"}
BACKBONE = ("model.source", "model.name")
# The data keys every kind reads; a change of `data.kind` resets the others (they were the old kind's).
DATA_COMMON = (
    "kind", "val_fraction", "test_fraction", "batch_size", "batch_scope", "num_workers", "group_by_length",
    "pad_to_max_length", "cache_images",
)  # fmt: skip


def declared(dotted: str) -> dataclasses.Field:
    """The `opt(...)` declaration of a dotted profile key (its choices and bounds)."""
    section, _, key = dotted.rpartition(".")
    cls = SECTIONS[section] if section else RunProfile
    return next(f for f in dataclasses.fields(cls) if f.name == key)


def shown(value: Any) -> str:
    """A profile value as the text of its input: `0.002`, `12`, `layer3, layer4`."""
    return ", ".join(str(v) for v in value) if isinstance(value, (list, tuple)) else str(value)


def _is_text(key: str) -> bool:
    return key != "strategy.groups" and type(declared(key).default) is str


def compose_profile(base: RunProfile, raw: dict[str, str], file: str) -> RunProfile:
    """`base` with the inputs' texts applied, parsed and validated as a profile file would be (ProfileError: one
    line naming `file` and the key). Numbers are read as TOML values, as `--set` reads them; text keys as typed."""
    table = profile_to_dict(base)
    _reset_on_change(table, base, raw)
    table = apply_overrides(
        table, [f"{k}={v}" for k, v in raw.items() if k not in ("strategy.groups", "name") and not _is_text(k)]
    )
    for key, value in raw.items():
        if key == "name" or not _is_text(key):
            continue
        section, _, name = key.partition(".")
        if not declared(key).metadata["path"]:
            table[section][name] = value
        else:  # as shown: the base's own path; typed: from the working folder
            table[section][name] = operator.attrgetter(key)(base) if value == _was(base, key) else _from_here(value)
    if "strategy.groups" in raw:
        table["strategy"]["groups"] = [g.strip() for g in raw["strategy.groups"].split(",") if g.strip()]
    if "name" in raw:
        if not NAME_OK.fullmatch(raw["name"]):
            raise ProfileError(
                f"{file}: name: letters, digits, '.', '_' and '-' only (it names the saved file), got {raw['name']!r}"
            )
        table["name"] = raw["name"]
    return profile_from_dict(table, file, Path(file).parent)


def _was(base: RunProfile, key: str) -> str:
    """The base profile's value of `key` as its input shows it (a path as the profile file would write it)."""
    value = shown(operator.attrgetter(key)(base))
    return _short(value, Path(base.source_path).resolve().parent) if declared(key).metadata["path"] else value


def _short(path: str, folder: Path) -> str:
    """A path from the profile's folder when it is under it (as the file writes it), else from the working folder
    when under that, else as it is."""
    for root in (folder, Path.cwd()):
        try:
            return str(Path(path).relative_to(root.absolute())) if path else path
        except ValueError:
            continue
    return path


def _from_here(value: str) -> str:
    """A path typed on the screen, from the working folder (where the completion found it)."""
    return str(Path(value).expanduser().absolute()) if value and not Path(value).expanduser().is_absolute() else value


def _reset_on_change(table: dict[str, Any], base: RunProfile, raw: dict[str, str]) -> None:
    """Another backbone: the base's `model.kwargs` were for its own. Another data kind: the base kind's keys go back
    to their defaults (the demo's digit classes mean nothing to a text file)."""
    if any(key in raw and raw[key] != _was(base, key) for key in BACKBONE):
        table["model"]["kwargs"] = {}
        table["model"]["keep_head"] = False
    if raw.get("data.kind", base.data.kind) != base.data.kind:
        defaults = profile_to_dict(RunProfile())["data"]
        table["data"] = {k: (v if k in DATA_COMMON else defaults[k]) for k, v in table["data"].items()}


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
        self.valid = base  # the last valid one: what the data and the layer groups are read for
        self.error = ""  # the one-line error of the inputs, or of the plan (an unknown group)
        self.hint = ""  # the completions of the focused input, when it has any
        self.saved: Path | None = None
        self.overwrite: Path | None = None  # the existing file a second ctrl+s replaces
        self.settle = False  # the first read starts at once; later ones once the typing settles
        self.source = base.model.source  # the backbone's source as chosen: what the backbone input completes

    def compose(self) -> ComposeResult:
        yield Static(f"tuitune · compose a run from {self.base.name}", id="title")
        with Horizontal(id="body"):
            with VerticalScroll(id="form"):
                for key, label in FIELDS:
                    with Horizontal(classes="row"):
                        yield Label(label)
                        yield self._field(key)
            with Vertical(id="read-outs"):
                yield DataPane()
                yield GroupsPane()
                yield MemoryLine(id="memory")
        yield Static(id="message")
        yield Footer()

    def _field(self, key: str) -> Input | Select:
        wid = "f-" + key.replace(".", "-")
        choices = declared(key).metadata.get("choices", ()) if key != "name" else ()
        now = operator.attrgetter(key)(self.base)  # the base profile's value of the dotted key
        if choices:
            return Select([(c, c) for c in choices], value=now, allow_blank=False, compact=True, id=wid)
        value = f"{self.base.name}-composed" if key == "name" else _was(self.base, key)
        default = declared(key).default
        kind: InputType = "integer" if type(default) is int else "number" if type(default) is float else "text"
        kind = "text" if declared(key).metadata.get("words") else kind  # `batch_size = "auto"` is typed too
        placeholder = {"strategy.groups": "names, comma-separated", "data.name": "org/name"}.get(key, "")
        suggester = ListSuggester(CANDIDATES, self._completes(key)) if key in (*COMPLETES, "model.name") else None
        return Input(value, placeholder=placeholder, type=kind, compact=True, id=wid, suggester=suggester)

    def _completes(self, key: str) -> Callable[[], str]:
        """Which list completes the input: model.name's follows the backbone's source (timm names, hf ids)."""
        if key == "model.name":
            return lambda: self.source
        return lambda: COMPLETES[key]

    def on_mount(self) -> None:
        CANDIDATES.forget(*CACHED)  # what was downloaded since the last screen is offered too
        self.query_one("#form").border_title = "run"
        self.query_one(DataPane).border_title = "data"
        self.query_one(GroupsPane).border_title = "layer groups"
        self.revalidate()
        self.settle = True
        self.query_one("#f-model-source", Select).focus()

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
    def revalidate(self, event: Input.Changed | Select.Changed | None = None) -> None:
        """Every edit: the whole profile again through the profile parser; the read-outs follow it."""
        if event is not None and event.control.id in ("f-model-source", "f-model-name"):
            self._drop_base_weights()
        raw = self.raw()
        self.source = raw["model.source"]
        try:
            self.profile, self.error = compose_profile(self.base, raw, self.file), ""
            self.valid = self.profile
        except UserError as e:
            self.profile, self.error = None, " ".join(str(e).split())
        self.overwrite = None
        for pane in (self.query_one(DataPane), self.query_one(GroupsPane)):
            pane.follow(self.valid, settle=self.settle)
        self.check_plan()
        if isinstance(event, Input.Changed):
            self._hint(event.input)

    def _drop_base_weights(self) -> None:
        """Another backbone than the base's: its weights file was the old backbone's."""
        weights, raw = self.query_one("#f-model-weights", Input), self.raw()
        changed = any(raw[key] != _was(self.base, key) for key in BACKBONE)
        if changed and weights.value and weights.value == _was(self.base, "model.weights"):
            weights.value = ""

    def on_following_changed(self, message: Following.Changed) -> None:
        if isinstance(message.pane, DataPane):  # reading a hub dataset may have put it in the cache: offer it
            CANDIDATES.forget(*CACHED)
        self.check_plan()

    def check_plan(self) -> None:
        """The strategy must fit the groups read (an unknown name in `strategy.groups` is invalid, like a bad
        value); then the message line."""
        plan_error = self.query_one(GroupsPane).plan_error
        if plan_error and not self.error:
            self.profile, self.error = None, f"{self.file}: {plan_error}"
        self.show_message()
        if self.profile is not None:
            self.query_one(MemoryLine).plan_for(self.profile)

    @on(Input.Submitted)
    def next_field(self) -> None:
        self.focus_next()

    def _hint(self, field: Input) -> None:
        """The first completions of the focused input's text, under the form (made in a thread)."""
        key = next((k for k, _ in FIELDS if "f-" + k.replace(".", "-") == field.id), "")
        if field.suggester is None or not field.value or not field.has_focus:
            self.hint = ""
            return
        which, value = self._completes(key)(), field.value

        async def find() -> None:
            found = await CANDIDATES.matches(which, value, 6)
            self.hint = ("→ completes · " + " · ".join(found)) if found and found != [value] else ""
            self.show_message()

        self.run_worker(find(), exclusive=True, group="hint", exit_on_error=False)

    # ------------------------------------------------------------------------------------------ read-outs

    @property
    def read(self) -> Any:
        """The layer groups read (`layers.GroupsRead`), None until then."""
        value = self.query_one(GroupsPane).value
        return None if value is None else value[0]

    @property
    def read_error(self) -> str:
        return self.query_one(GroupsPane).error

    # --------------------------------------------------------------------------------------- start and save

    def show_message(self) -> None:
        message = self.query_one("#message", Static)
        if self.error:
            message.update(Text(self.error, "bold red"))
        elif self.overwrite is not None:
            message.update(Text(f"{self.overwrite} exists: ctrl+s again overwrites it", "bold yellow"))
        elif self.saved is not None:
            message.update(Text(f"saved {self.saved}", "green"))
        elif self.hint:
            message.update(Text(self.hint, "dim"))
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
