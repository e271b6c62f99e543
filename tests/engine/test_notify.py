"""`[notify] webhook`: the run's end, a failure and a person's question POSTed to a real HTTP server on 127.0.0.1
(started here, ended by its fixture), in the bodies Slack, Discord and plain JSON take; retries, timeouts, and a
hook that never answers well costing one warning and nothing else."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.engine.conftest import of_type, tiny_profile
from tests.engine.webhook_server import Hook
from tuitune.config import ProfileError, profile_from_dict
from tuitune.config.outputs import NotifyConfig
from tuitune.engine.commands import Control
from tuitune.engine.events import LRFound, RunFailed, RunFinished, UnfreezeSuggested, Warned
from tuitune.engine.record.runlog import read_events
from tuitune.engine.report import webhook
from tuitune.engine.report.webhook import DeliveryFailed, Webhook, post
from tuitune.engine.session import run_training


@pytest.fixture
def hook(monkeypatch: pytest.MonkeyPatch) -> Iterator[Hook]:
    monkeypatch.setattr(webhook, "BACKOFF_S", 0.01)  # the retries' waits, short (1 s, 2 s in a real run)
    h = Hook()
    try:
        yield h
    finally:
        h.close()


def short_run(url: str, **notify: Any) -> Any:
    return tiny_profile(
        train={"epochs": 1, "max_steps_per_epoch": 2, "log_every": 1},
        notify={"webhook": url, "format": "json", **notify},
    )


# ------------------------------------------------------------------------------------------------ real runs


def test_a_finished_run_is_posted_after_two_failed_tries(tmp_path: Path, hook: Hook) -> None:
    hook.script = [500, 503]  # then 200
    events: list = []
    final = run_training(short_run(hook.url), tmp_path, events.append, Control(), interactive=False)
    assert isinstance(final, RunFinished) and final.status == "finished"
    assert len(hook.bodies) == 3 and hook.bodies[0] == hook.bodies[2]  # the same notification, tried three times
    body = hook.bodies[-1]
    assert (body["type"], body["status"], body["run"], body["run_dir"]) == (
        "RunFinished",
        "finished",
        "tiny",
        str(tmp_path),
    )
    assert body["text"].startswith("tuitune: tiny: run finished after 1 epochs") and "misclassified" not in body
    assert not of_type(events, Warned)


def test_a_hook_that_always_fails_is_one_warning_and_the_run_finishes(tmp_path: Path, hook: Hook) -> None:
    hook.script = [500] * 10
    final = run_training(short_run(hook.url), tmp_path, lambda e: None, Control(), interactive=False)
    assert isinstance(final, RunFinished) and final.status == "finished"
    assert len(hook.bodies) == 3  # notify.tries
    recorded = read_events(tmp_path)
    warned = [e for e in recorded if isinstance(e, Warned)]
    assert len(warned) == 1 and warned[0].kind == "report"
    assert "127.0.0.1: HTTP 500 (try 3 of 3)" in warned[0].message and "SECRET" not in warned[0].message
    assert recorded.index(warned[0]) == len(recorded) - 2 and isinstance(recorded[-1], RunFinished)


def test_a_failed_run_is_posted(tmp_path: Path, hook: Hook) -> None:
    profile = tiny_profile(
        data={"kind": "image_folder", "path": str(tmp_path / "no-such-folder")}, notify={"webhook": hook.url}
    )
    final = run_training(profile, tmp_path / "run", lambda e: None, Control(), interactive=False)
    assert isinstance(final, RunFailed) and final.bad_input
    assert len(hook.bodies) == 1 and hook.bodies[0]["type"] == "RunFailed"  # auto: plain JSON for this host
    assert (
        hook.bodies[0]["text"].startswith("tuitune: tiny: run failed: ") and "no-such-folder" in hook.bodies[0]["text"]
    )


# ------------------------------------------------------------------------------------------ bodies, delivery


QUESTION = UnfreezeSuggested(metric="val_score", epochs=2, next_groups=("layer4",), epoch=3, waiting=True)


def lr_found(wait_s: float) -> LRFound:
    return LRFound(
        lrs=(1e-4, 1e-3), losses=(1.0, 0.5), suggestion=3e-4, steep=3e-4, valley=2e-4, current_lr=1e-3, path="",
        epoch=1, global_step=5, phase=1, wait_s=wait_s,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("fmt", "key"), [("slack", "text"), ("discord", "content"), ("json", "text")], ids=["slack", "discord", "json"]
)
def test_questions_in_each_format(tmp_path: Path, hook: Hook, fmt: str, key: str) -> None:
    sink = Webhook(NotifyConfig(webhook=hook.url, format=fmt), "tiny", tmp_path)
    for event in (
        QUESTION,
        QUESTION,
        lr_found(wait_s=0),
        lr_found(wait_s=60),
    ):  # asked once; a sweep applied at once asks nothing
        sink.handle(event)
    assert len(hook.bodies) == 2
    plateau, lr = (body[key] for body in hook.bodies)
    assert plateau.startswith("tuitune: tiny: asks: val_score has not improved for 2 epochs; unfreeze layer4?")
    assert "the run waits for your answer" in plateau
    assert lr.startswith("tuitune: tiny: asks: apply LR 0.0003 for phase 2? (it applies by itself in 60 s")
    if fmt == "json":
        assert hook.bodies[0]["type"] == "UnfreezeSuggested" and hook.bodies[0]["next_groups"] == ["layer4"]
        assert "lrs" not in hook.bodies[1] and hook.bodies[1]["suggestion"] == 3e-4
    else:
        assert list(hook.bodies[0]) == [key]


def test_auto_format_follows_the_host() -> None:
    assert webhook.resolve_format("auto", "https://hooks.slack.com/services/T/B/X") == "slack"
    assert webhook.resolve_format("auto", "https://discord.com/api/webhooks/1/x") == "discord"
    assert webhook.resolve_format("auto", "https://example.org/hook") == "json"


def test_a_hook_that_hangs_times_out_and_a_4xx_is_not_tried_again(hook: Hook) -> None:
    hook.script = [0, 0]
    with pytest.raises(DeliveryFailed, match=r"127.0.0.1: .*timed out.* \(try 2 of 2\)"):
        post(hook.url, {"text": "x"}, tries=2, timeout=0.2)
    hook.script = [404]
    with pytest.raises(DeliveryFailed, match=r"HTTP 404 \(try 1 of 3\)"):
        post(hook.url, {"text": "x"}, tries=3, timeout=5)
    assert len(hook.bodies) == 3


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://example.org/hooks/SECRET", "expected an http:// or https:// URL, got ftp:"),
        ("hooks.slack.com/services/SECRET", "expected an http:// or https:// URL, got no scheme"),
        ("https:///SECRET", "the URL has no host"),
        ("https://example.org/SECRET here", "a URL has no spaces or control characters"),
    ],
)
def test_the_webhook_url_is_checked_when_the_profile_is_read(url: str, message: str) -> None:
    with pytest.raises(ProfileError) as info:
        profile_from_dict({"model": {"name": "resnet18"}, "notify": {"webhook": url}}, "p.toml")
    assert str(info.value) == f"p.toml: notify.webhook: {message}"  # one line, and never the URL's secret path
