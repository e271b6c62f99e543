"""The composing screen chooses the backbone and the data: another timm backbone (its groups read again, the old
backbone's kwargs and weights file dropped), completions of timm names, cached hub ids and paths, a hub dataset from
a stand-in hub (its splits and columns shown, the head sized by its classes), the memory plan's hook."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from rich.text import Text
from textual.widgets import Input, Select, Static

from tests.engine.dataset_hub import IMAGE_REPO, DatasetHub, image_repo, point_at
from tests.ui.test_compose import demo_copy, marks, open_compose, picker_app
from tests.ui.test_pilot import text_of, until
from tuitune.engine.data import hfload
from tuitune.ui import compose_panes
from tuitune.ui.completion import CANDIDATES, Candidates, ListSuggester, path_matches
from tuitune.ui.compose import compose_profile
from tuitune.ui.compose_panes import DataPane, GroupsPane


def pane_text(screen, pane: type) -> str:
    return " ".join(text_of(screen.query_one(pane).query_one(Static)).split())


async def test_another_backbone_is_read_with_its_groups_and_the_old_ones_keys_dropped(tmp_path: Path) -> None:
    started: list = []
    app = picker_app(demo_copy(tmp_path / "profiles"), started)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await open_compose(app, pilot)
        assert screen.query_one("#f-model-weights", Input).value == "demo_backbone.safetensors"
        screen.query_one("#f-model-name", Input).value = "test_resnet"
        await until(pilot, lambda: "timm test_resnet" in pane_text(screen, GroupsPane))
        assert screen.query_one("#f-model-weights", Input).value == ""  # the demo's weights were resnet18's
        assert screen.profile is not None and screen.profile.model.kwargs == {}  # ... and so were its kwargs
        assert list(marks(screen)) == [g.name for g in screen.read.groups] and marks(screen)["head"] == "● phase 1"
        await pilot.press("ctrl+r")
        await until(pilot, lambda: bool(started))
    assert (started[0].model.name, started[0].model.weights, started[0].model.kwargs) == ("test_resnet", "", {})


async def test_the_backbone_completes_timm_names_as_typed(tmp_path: Path) -> None:
    app = picker_app(demo_copy(tmp_path / "profiles"), [])
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await open_compose(app, pilot)
        name = screen.query_one("#f-model-name", Input)
        name.focus()
        await pilot.press("ctrl+u", *"test_vi")
        await until(pilot, lambda: "→ completes · test_vit · test_vit2" in text_of(screen.query_one("#message")))
        await until(pilot, lambda: name._suggestion == "test_vit")  # shown inline, after the cursor
        await pilot.press("right")  # takes it
        assert name.value == "test_vit"
        await until(pilot, lambda: "timm test_vit" in pane_text(screen, GroupsPane))


def test_completions_offer_paths_cached_hub_ids_and_follow_the_backbones_source(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data.csv").write_text("text,label\n")
    (tmp_path / ".hidden").write_text("")
    assert path_matches(f"{tmp_path}/da") == [f"{tmp_path}/data/", f"{tmp_path}/data.csv"]
    lists = Candidates({"timm": lambda: ["resnet18", "resnet50"], "hf": lambda: ["BAAI/bge-small", "bert-base"]})
    source = ["timm"]
    suggest = ListSuggester(lists, lambda: source[0])
    assert asyncio.run(suggest.get_suggestion("resn")) == "resnet18"
    source[0] = "hf"
    assert asyncio.run(suggest.get_suggestion("baai/")) == "BAAI/bge-small"  # case aside, given in its own case
    assert asyncio.run(suggest.get_suggestion(f"{tmp_path}/data.")) == f"{tmp_path}/data.csv"  # a path in any list
    assert asyncio.run(lists.matches("hf", "x")) == []


def test_choosing_other_data_or_backbone_drops_what_belonged_to_the_old_ones(tmp_path: Path, monkeypatch) -> None:
    from tests.ui.test_compose import DEMO
    from tuitune.config import load_profile

    base = load_profile(DEMO)
    monkeypatch.chdir(tmp_path)
    p = compose_profile(base, {"data.kind": "text", "data.path": "reviews.csv"}, str(DEMO))
    assert (p.data.kind, p.data.classes, p.data.source_classes) == ("text", (), ())  # the digits' classes are gone
    assert p.data.path == str(tmp_path / "reviews.csv")  # typed: from the working folder
    assert p.model == base.model  # the backbone untouched
    q = compose_profile(base, {"model.name": "resnet34", "model.weights": ""}, str(DEMO))
    assert (q.model.kwargs, q.model.weights, q.data) == ({}, "", base.data)


@pytest.fixture
def stand_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    hfload.forget()
    with DatasetHub({IMAGE_REPO: image_repo()}) as hub:
        point_at(hub, tmp_path / "cache", monkeypatch.setattr)
        yield hub
    hfload.forget()
    CANDIDATES.forget("dataset")


async def test_a_hub_dataset_shows_its_splits_and_columns_and_sizes_the_head(tmp_path: Path, stand_in) -> None:
    started: list = []
    app = picker_app(demo_copy(tmp_path / "profiles"), started)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await open_compose(app, pilot)
        assert marks(screen)["head"] == "● phase 1" and "645" in text_of(screen.query_one("#groups"))  # 5 digits
        screen.query_one("#f-data-kind", Select).value = "hf"
        screen.query_one("#f-data-name", Input).value = IMAGE_REPO
        await until(pilot, lambda: "splits:" in pane_text(screen, DataPane))
        assert pane_text(screen, DataPane) == (
            "splits: train 24 columns: image (Image), label (ClassLabel) reads image: image → label "
            "(2 classes: light, dark)"
        )
        await until(pilot, lambda: not screen.query_one(GroupsPane).stale)
        groups = text_of(screen.query_one("#groups"))
        head = next((line for line in groups.splitlines() if line.split()[:1] == ["head"]), groups)
        assert head.split()[1] == "258"  # 128 features x 2 classes + 2
        name = screen.query_one("#f-data-name", Input)  # the dataset is in the cache now: offered as typed
        name.focus()
        await pilot.press("ctrl+u", *"tuitune-tests/tiny-s")
        await until(pilot, lambda: name._suggestion == IMAGE_REPO)
        await pilot.press("right", "ctrl+r")
        await until(pilot, lambda: bool(started))
    data = started[0].data
    assert (data.kind, data.name, data.classes, data.source_classes) == ("hf", IMAGE_REPO, (), ())


async def test_the_memory_plan_hooks_in_under_the_groups(tmp_path: Path, monkeypatch) -> None:
    seen = []

    def plan(read, profile):
        seen.append(profile.data.batch_size)
        return Text(f"memory plan: {len(read.groups)} groups at batch {profile.data.batch_size}")

    monkeypatch.setattr(compose_panes, "GROUP_EXTRAS", (plan,))
    app = picker_app(demo_copy(tmp_path / "profiles"), [])
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await open_compose(app, pilot)
        assert "memory plan: 6 groups at batch 32" in pane_text(screen, GroupsPane)
    assert seen == [32]  # computed in the worker, once per read
