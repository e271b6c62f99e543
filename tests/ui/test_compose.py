"""The picker's composing screen: edits go through the profile parser, the first phase is the strategy's own plan
over the demo backbone's real groups (read in a worker), start hands the composed profile to the run, save writes a
profile that loads back equal."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
from textual.widgets import Input, Select, Static

from tests.ui.test_pilot import text_of, until
from tuitune.config import ProfileError, load_profile
from tuitune.ui.app import TuituneApp
from tuitune.ui.compose import ComposeScreen, compose_profile
from tuitune.ui.compose_panes import DataPane, GroupsPane
from tuitune.ui.picker import PickerScreen

FIXTURES = Path(__file__).parent / "fixtures"
DEMO = Path(__file__).resolve().parents[2] / "tuitune" / "profiles" / "demo.toml"


def demo_copy(folder: Path) -> Path:
    """The demo profile in a folder of its own (saving writes next to it)."""
    folder.mkdir(exist_ok=True)
    shutil.copy(DEMO, folder / "demo.toml")
    return folder


def picker_app(folder: Path, started: list) -> TuituneApp:
    def runner(profile, run_dir, emit, control, **kwargs):
        started.append(profile)

    return TuituneApp("picker", profile_dirs=[folder], runner=runner, make_run_dir=lambda p, out: Path("unused"))


def all_read(screen: ComposeScreen) -> bool:
    """Both read-outs show what they read for the profile as it stands (the data, the layer groups)."""
    return not screen.query_one(DataPane).stale and not screen.query_one(GroupsPane).stale


async def open_compose(app: TuituneApp, pilot) -> ComposeScreen:
    """`e` in the picker, then wait until the workers have read the data and the layer groups."""
    assert isinstance(app.screen, PickerScreen)
    await pilot.press("e")
    await until(pilot, lambda: isinstance(app.screen, ComposeScreen) and all_read(app.screen))
    screen = app.screen
    assert isinstance(screen, ComposeScreen)
    return screen


def marks(screen: ComposeScreen) -> dict[str, str]:
    """group -> its mark, from the layer-groups pane as shown."""
    lines = text_of(screen.query_one("#groups", Static)).splitlines()
    names = [g.name for g in screen.read.groups]
    return {
        line.split()[0]: line.split(maxsplit=2)[2].strip()
        for line in lines
        if line.split()[:1] and line.split()[0] in names
    }


def test_an_invalid_edit_is_the_profile_files_own_error() -> None:
    base = load_profile(DEMO)
    with pytest.raises(ProfileError) as composed:
        compose_profile(base, {"train.lr": "0"}, str(DEMO))
    with pytest.raises(ProfileError) as loaded:
        load_profile(DEMO, ["train.lr=0"])
    assert str(composed.value) == str(loaded.value) == f"{DEMO}: train.lr: must be > 0, got 0.0"
    with pytest.raises(ProfileError, match=r"demo.toml: strategy.groups: required for strategy.kind = 'groups'"):
        compose_profile(base, {"strategy.kind": "groups", "strategy.groups": " "}, str(DEMO))
    edited = compose_profile(base, {"train.epochs": "3", "strategy.groups": "layer4, head"}, str(DEMO))
    base = compose_profile(base, {}, str(DEMO))  # every key given: default lists read back as tuples, as edited's
    assert edited == dataclasses.replace(
        base,
        train=dataclasses.replace(base.train, epochs=3),
        strategy=dataclasses.replace(base.strategy, groups=("layer4", "head")),
    )


async def test_edit_validate_replan_and_start(tmp_path: Path) -> None:
    started: list = []
    app = picker_app(demo_copy(tmp_path / "profiles"), started)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_compose(app, pilot)
        assert marks(screen) == {
            "stem": "· phase 4",
            "layer1": "· phase 3",
            "layer2": "· phase 3",
            "layer3": "· phase 2",
            "layer4": "· phase 2",
            "head": "● phase 1",
        }
        screen.query_one("#f-strategy-groups_per_phase", Input).value = "5"
        await until(pilot, lambda: marks(screen)["stem"] == "· phase 2")
        screen.query_one("#f-strategy-kind", Select).value = "full"
        await until(pilot, lambda: set(marks(screen).values()) == {"● phase 1"})
        lr = screen.query_one("#f-train-lr", Input)
        lr.focus()
        await pilot.press("ctrl+u", "0")  # typed, as a person would
        await until(pilot, lambda: screen.profile is None)
        message = text_of(screen.query_one("#message", Static))
        assert message.strip() == f"{tmp_path / 'profiles' / 'demo.toml'}: train.lr: must be > 0, got 0.0"
        await pilot.press("ctrl+r", "ctrl+s")  # both refused while invalid
        assert not started and not (tmp_path / "profiles" / "demo-composed.toml").exists()
        await pilot.press(".", "0", "1")
        screen.query_one("#f-train-epochs", Input).value = "3"
        screen.query_one("#f-data-batch_size", Input).value = "16"
        await until(pilot, lambda: screen.profile is not None and screen.profile.data.batch_size == 16)
        await pilot.press("ctrl+r")
        await until(pilot, lambda: bool(started))
    p = started[0]
    assert (p.name, p.train.lr, p.train.epochs, p.data.batch_size, p.strategy.kind, p.strategy.groups_per_phase) == (
        "demo-composed",
        0.01,
        3,
        16,
        "full",
        5,
    )
    assert p.model == load_profile(tmp_path / "profiles" / "demo.toml").model  # the rest as it was


async def test_unknown_group_refused_and_save_writes_a_loadable_profile(tmp_path: Path) -> None:
    folder = demo_copy(tmp_path / "profiles")
    (folder / "mine.toml").write_text("# someone's profile\n")
    app = picker_app(folder, [])
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_compose(app, pilot)
        screen.query_one("#f-strategy-kind", Select).value = "groups"
        screen.query_one("#f-strategy-groups", Input).value = "layer4, nope"
        await until(pilot, lambda: "unknown layer group 'nope'" in text_of(screen.query_one("#message", Static)))
        await pilot.press("ctrl+s")
        assert not (folder / "demo-composed.toml").exists()
        screen.query_one("#f-strategy-groups", Input).value = "layer4, head"
        await until(pilot, lambda: marks(screen).get("layer4") == "● phase 1")
        assert marks(screen)["layer3"] == "· never"
        screen.query_one("#f-name", Input).value = "mine"
        await pilot.pause()
        await pilot.press("ctrl+s")  # an existing file: said, not overwritten
        assert "mine.toml exists: ctrl+s again overwrites it" in text_of(screen.query_one("#message", Static))
        assert (folder / "mine.toml").read_text() == "# someone's profile\n"
        await pilot.press("ctrl+s")
        await until(pilot, lambda: screen.saved == folder / "mine.toml")
        composed = screen.profile
        await pilot.press("escape")  # back in the picker, which lists the new profile
        await until(pilot, lambda: isinstance(app.screen, PickerScreen) and all(e.ok for e in app.screen.entries))
    assert composed is not None and composed.strategy.groups == ("layer4", "head")
    assert 'weights = "demo_backbone.safetensors"' in (folder / "mine.toml").read_text()  # relative, as written
    loaded = load_profile(folder / "mine.toml")
    assert loaded == dataclasses.replace(composed, source_path=str(folder / "mine.toml"))


async def test_a_backbone_that_cannot_be_built_is_said_in_the_pane(tmp_path: Path) -> None:
    (tmp_path / "p.toml").write_text('[model]\nname = "no_such_net"\npretrained = false\n[data]\nkind = "synthetic"\n')
    app = picker_app(tmp_path, [])
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("e")
        await until(pilot, lambda: isinstance(app.screen, ComposeScreen) and bool(app.screen.read_error))
        pane = text_of(app.screen.query_one("#groups", Static))
    assert "cannot read the layer groups: model.name: unknown timm model 'no_such_net'" in " ".join(pane.split())


async def test_lora_without_targets_is_said_and_another_kind_reads_again(tmp_path: Path) -> None:
    app = picker_app(demo_copy(tmp_path / "profiles"), [])
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await open_compose(app, pilot)
        screen.query_one("#f-strategy-kind", Select).value = "lora"  # a ResNet has no attention / MLP to adapt
        await until(pilot, lambda: "strategy.lora_targets: no layer of ResNet" in screen.read_error)
        screen.query_one("#f-strategy-kind", Select).value = "head_only"
        await until(pilot, lambda: screen.read is not None and not screen.read_error and bool(marks(screen)))
        assert [g for g, m in marks(screen).items() if m == "● phase 1"] == ["head"]


@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=["80x24", "120x40"])
def test_compose_snapshot(snap_compare, monkeypatch: pytest.MonkeyPatch, size: tuple[int, int]) -> None:
    from tests.ui.test_memory_view import fixed_ram
    from tuitune.ui.memory_view import MemoryLine

    monkeypatch.chdir(FIXTURES)  # the save path on screen is relative to the working folder
    fixed_ram(monkeypatch)  # the memory line says what the machine has

    async def read(pilot) -> None:
        await pilot.press("e")
        await until(pilot, lambda: isinstance(pilot.app.screen, ComposeScreen) and all_read(pilot.app.screen))
        await until(pilot, lambda: pilot.app.screen.query_one(MemoryLine).plan is not None)
        await pilot.pause()

    app = TuituneApp("picker", profile_dirs=[Path("compose")])
    assert snap_compare(app, terminal_size=size, run_before=read)


def test_a_packaged_profile_is_saved_to_the_working_folders_profiles(tmp_path: Path, monkeypatch) -> None:
    """The demo ships inside the package: what a person composes from it goes to ./profiles, never into the
    installed package."""
    from tuitune.profiles import PACKAGE_PROFILES
    from tuitune.profiles.save import save_folder

    monkeypatch.chdir(tmp_path)
    assert save_folder(PACKAGE_PROFILES / "demo.toml") == tmp_path / "profiles"
    assert save_folder(tmp_path / "mine" / "a.toml") == tmp_path / "mine"


async def test_the_palette_on_the_composing_screen_names_its_own_start_and_save(tmp_path: Path) -> None:
    folder = demo_copy(tmp_path / "profiles")
    started: list = []
    app = picker_app(folder, started)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await open_compose(app, pilot)
        commands = {c.title: c.callback for c in app.get_system_commands(screen)}
        assert "Start profile" not in commands  # the picker's: "the highlighted profile (enter)"
        commands["Save as profile"]()
        await until(pilot, lambda: screen.saved == folder / "demo-composed.toml")
        commands["Start the composed run"]()
        await until(pilot, lambda: len(started) == 1)
    assert started[0].name == "demo-composed"
