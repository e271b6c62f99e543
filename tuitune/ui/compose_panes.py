"""The composing screen's two read-outs, each following the profile being composed: the data (what it holds: for a
Hugging Face dataset its splits and columns, fetched with progress) and the backbone's layer groups with the phase
each starts to train in.

Both read in a worker thread (torch, timm, `datasets` load there, never on the screen's thread), for the profile as
it stands: a change of backbone or data is read again after a short pause in the typing (`SETTLE_S`), so a name typed
letter by letter is not built at every letter; a change of strategy only re-plans the groups already read. A reply
for a profile that has changed since is dropped (the workers are exclusive).

The memory plan hooks in here: `GROUP_EXTRAS` are functions run in the groups' worker after the backbone is read,
each given the `GroupsRead` and the profile, each returning a Rich renderable (or None) shown under the groups.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from textual.containers import VerticalScroll
from textual.message import Message
from textual.widgets import Static
from textual.worker import get_current_worker

from tuitune.config import DataConfig, RunProfile
from tuitune.errors import UserError

SETTLE_S = 0.4  # a pause in typing this long before a changed backbone or data is read
# Run in the groups' worker after the backbone is read: (GroupsRead, RunProfile) -> a renderable shown under the groups
# (the memory plan: what each phase would hold, from the groups and the batch). Empty: nothing more is shown.
GROUP_EXTRAS: tuple[Callable[[Any, RunProfile], RenderableType | None], ...] = ()


def one_line(e: BaseException) -> str:
    text = str(e) if isinstance(e, UserError) else f"{type(e).__name__}: {e}"
    return " ".join(text.split())


def data_key(profile: RunProfile) -> tuple:
    """What the data's read-out and the classes depend on: the data section but the batch size (on the form)."""
    return (dataclasses.replace(profile.data, batch_size=DataConfig.batch_size), profile.loss.kind)


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


@dataclasses.dataclass(frozen=True)
class PaneHooks:
    """What a `Following` pane reads and how it shows it (the pane subclass's own methods)."""

    key_of: Callable[[RunProfile, bool], Any]  # what the read-out depends on; True: asked in the worker, after a read
    read: Callable[[RunProfile, Callable[[Any], None]], Any]  # in the worker thread (a UserError shows as its line)
    render: Callable[[], None]  # show what is read (or that it is being read, or its error)


class Following(VerticalScroll):
    """A pane that reads something for the profile in a worker, and again when `hooks.key_of(profile)` changes."""

    class Read(Message):
        """From the worker: what was read (or the one-line error), for read number `token`, under `key`."""

        def __init__(self, pane: Following, token: int, key: Any, value: Any, error: str) -> None:
            super().__init__()
            self.pane, self.token, self.key, self.value, self.error = pane, token, key, value, error

    class Changed(Message):
        """A new read-out is shown (the screen re-checks what depends on it)."""

        def __init__(self, pane: Following) -> None:
            super().__init__()
            self.pane = pane

    def __init__(self, hooks: PaneHooks, *, id: str) -> None:
        super().__init__(id=id)
        self.hooks = hooks
        self.profile: RunProfile | None = None
        self.key: Any = None  # what `value` / `error` were read for (None: nothing read yet)
        self.value: Any = None
        self.error = ""
        self.reading: Any = None  # the key being read
        self.token = 0  # the number of the latest read started: a reply to an older one is dropped
        self._timer: Any = None

    def show_progress(self, event: Any) -> None:
        """A download's or a preparation's progress while reading (`SetupProgressed`)."""

    def follow(self, profile: RunProfile, settle: bool = True) -> None:
        """The profile changed: render what is read, or read it (at once, or once the typing settles)."""
        self.profile = profile
        key = self.hooks.key_of(profile, False)
        if key != self.key and key != self.reading:
            self.reading, self.token = key, self.token + 1
            if self._timer is not None:
                self._timer.stop()
            self._timer = self.set_timer(SETTLE_S, self._start) if settle else None
            if not settle:
                self._start()
        self.hooks.render()

    def _start(self) -> None:
        self._timer = None
        profile, token = self.profile, self.token
        assert profile is not None
        self.run_worker(
            lambda: self._thread(profile, token), thread=True, exclusive=True, group=self.id or "", exit_on_error=False
        )

    def _thread(self, profile: RunProfile, token: int) -> None:
        worker = get_current_worker()

        def progress(event: Any) -> None:
            if not worker.is_cancelled:
                self.app.call_from_thread(self.show_progress, event)

        value, error = None, ""
        try:
            value = self.hooks.read(profile, progress)
        except Exception as e:  # a model or data that is not there, a wrong name: its own line; the picker goes on
            error = one_line(e)
        answer = self.Read(self, token, self.hooks.key_of(profile, True), value, error)
        if not worker.is_cancelled:
            self.post_message(answer)

    def on_following_read(self, message: Following.Read) -> None:
        if message.pane is not self:
            return
        message.stop()
        if message.token != self.token:
            return
        self.key, self.value, self.error, self.reading = message.key, message.value, message.error, None
        self.hooks.render()
        self.post_message(self.Changed(self))

    @property
    def stale(self) -> bool:
        return self.profile is None or self.key is None or self.key != self.hooks.key_of(self.profile, False)


class DataPane(Following):
    """What the data holds (`describe_data`): a dataset's splits and columns, as they are read."""

    def __init__(self) -> None:
        super().__init__(PaneHooks(self.key_of, self.read, self.render_now), id="data-pane")
        self.progress_line = ""

    def compose(self) -> Any:
        yield Static(id="data")

    def key_of(self, profile: RunProfile, read: bool = False) -> Any:
        return data_key(profile)

    def read(self, profile: RunProfile, progress: Callable[[Any], None]) -> Any:
        from tuitune.engine.data.kinds import describe_data

        return describe_data(profile.data, progress)

    def show_progress(self, event: Any) -> None:
        from tuitune.engine.record.progress import progress_text

        self.progress_line = progress_text(event)
        self.render_now()

    def render_now(self) -> None:
        out = self.query_one("#data", Static)
        if self.stale:
            out.update(Text(self.progress_line or "reading the data…", "italic dim"))
            return
        self.progress_line = ""
        if self.error:
            out.update(Text(f"cannot read the data: {self.error}", "red"))
            return
        out.update(Group(*(Text(line) for line in self.value)))


class GroupsPane(Following):
    """The backbone's layer groups (built with random weights: nothing downloaded), each marked with the phase it
    starts to train in under the strategy as it stands; `GROUP_EXTRAS` under them."""

    def __init__(self) -> None:
        super().__init__(PaneHooks(self.key_of, self.read, self.render_now), id="groups-pane")
        self.plan_error = ""  # the strategy does not fit the groups read (an unknown `strategy.groups` name)

    def compose(self) -> Any:
        yield Static(id="groups")

    def key_of(self, profile: RunProfile, read: bool = False) -> Any:
        """The backbone (as read: random weights), the data (its classes size the head) and the grouping (LoRA's
        adapters included: `groups_key`, which loads torch, so only asked once a read has, or in the worker)."""
        model = dataclasses.replace(profile.model, pretrained=False, weights="")
        return (model, data_key(profile), self._grouping(profile) if read or self.key is not None else None)

    @staticmethod
    def _grouping(profile: RunProfile) -> Any:
        try:
            from tuitune.engine.tools.layers import groups_key

            return groups_key(profile.strategy)
        except Exception:  # the engine cannot load: the read says why
            return None

    def read(self, profile: RunProfile, progress: Callable[[Any], None]) -> Any:
        from tuitune.engine.tools.layers import read_groups

        read = read_groups(profile, emit=progress)
        return read, tuple(view for extra in GROUP_EXTRAS if (view := extra(read, profile)) is not None)

    def render_now(self) -> None:
        pane = self.query_one("#groups", Static)
        self.plan_error = ""
        if self.stale:
            pane.update(Text("reading layer groups…", "italic dim"))
            return
        if self.error:
            pane.update(Text(f"cannot read the layer groups: {self.error}", "red"))
            return
        from tuitune.engine.tools.layers import first_phase_rows

        assert self.profile is not None
        read, extras = self.value
        try:
            rows, plan = first_phase_rows(read, self.profile.strategy)
        except UserError as e:  # an unknown name in strategy.groups: invalid, like a bad value
            self.plan_error = " ".join(str(e).split())
            return
        trigger = self.profile.strategy.trigger
        then = (
            f"{len(plan.phases)} phases; each next one on trigger = {trigger}"
            if len(plan.phases) > 1
            else "1 phase: these groups train throughout"
        )
        scales = [f"LR x {s:g} from phase {i + 1}" for i, s in enumerate(plan.lr_scales) if s != 1.0]
        pane.update(
            Group(
                Text(read.description, "bold"),
                *(Text(n, "yellow") for n in read.notes),
                Text(),
                groups_table(rows, plan.phases),
                Text(),
                Text("; ".join([then, *scales]), "dim"),
                *extras,
            )
        )
