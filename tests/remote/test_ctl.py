"""`tuitune ctl` and `tuitune watch` against runs in this process: a real tiny training run behind a real socket
(`serve_run` in a thread), and the scripted engine behind a real server for the questions. No process is spawned."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.remote.conftest import tiny_profile, wait_for
from tests.ui import scripted
from tuitune.cli import main
from tuitune.engine.commands import (
    AdaptBatchNorm,
    ApplyLR,
    Command,
    Control,
    FindLR,
    GenerateSamples,
    Pause,
    Resume,
    RollBackPhase,
    SaveCheckpoint,
    ScaleGroupLR,
    SetGroupTrainable,
    StopEarly,
    UnfreezeNext,
)
from tuitune.engine.events import event_from_json
from tuitune.remote import ctl
from tuitune.remote.ctl import APPLIED, Outcome, Questions
from tuitune.runs.status import run_status

# ------------------------------------------------------------------------------------ each verb, its command

VERB_COMMANDS: list[tuple[list[str], list[Command]]] = [
    (["unfreeze"], [UnfreezeNext()]),
    (["unfreeze", "layer3"], [SetGroupTrainable(group="layer3", trainable=True)]),
    (["freeze", "layer4"], [SetGroupTrainable(group="layer4", trainable=False)]),
    (["lr", "layer4", "1.5"], [ScaleGroupLR(group="layer4", factor=1.5)]),
    (["lr", "all", "0.5"], [ScaleGroupLR(group=None, factor=0.5)]),
    (["pause"], [Pause()]),
    (["resume"], [Resume()]),
    (["save"], [SaveCheckpoint()]),
    (["stop"], [StopEarly()]),
    (["adabn"], [AdaptBatchNorm()]),
    (["generate"], [GenerateSamples()]),
    (["rollback"], [RollBackPhase()]),
    (["lr-find"], [FindLR()]),
]


class FakeSession:
    """What a verb's action sends, each answered as applied; `questions` as the history left them."""

    def __init__(self, questions: Questions | None = None) -> None:
        self.questions = questions or Questions()
        self.sent: list[Command] = []

    def send(self, command: Command) -> Outcome:
        self.sent.append(command)
        return Outcome(APPLIED, f"applied: {type(command).__name__}")


@pytest.mark.parametrize(
    ("words", "commands"), VERB_COMMANDS, ids=lambda w: " ".join(w) if w and isinstance(w[0], str) else ""
)
def test_each_verb_sends_its_command(words: list[str], commands: list[Command]) -> None:
    session = FakeSession()
    assert ctl.plan(words[0], words[1:])(session).status == APPLIED  # type: ignore[arg-type]
    assert session.sent == commands


def test_every_dashboard_command_has_a_verb() -> None:
    from tuitune.ui.keys import DASHBOARD_KEYS

    sent_by_verbs = {type(c).__name__ for _, commands in VERB_COMMANDS for c in commands} | {"ApplyLR"}
    sent_by_keys = {name for k in DASHBOARD_KEYS for name, _ in k.sends}
    assert sent_by_keys <= sent_by_verbs


PLATEAU = {"type": "UnfreezeSuggested", "metric": "val_loss", "epochs": 2, "next_groups": ["layer4"], "epoch": 3}
PHASE_LR = {"type": "LRFound", "suggestion": 3.2e-3, "current_lr": 1e-3, "valley": 3.2e-3, "steep": 1e-2, "wait_s": 60}


@pytest.mark.parametrize(
    ("history", "answer", "commands"),
    [
        ([{**PLATEAU, "waiting": True}], "yes", [UnfreezeNext(), Resume()]),
        ([{**PLATEAU, "waiting": True}], "no", [Resume()]),
        ([PLATEAU], "yes", [UnfreezeNext()]),
        ([PLATEAU], "no", []),
        ([PHASE_LR], "yes", [ApplyLR(lr=3.2e-3)]),
        ([PHASE_LR], "no", [ApplyLR(lr=1e-3)]),
        ([{**PLATEAU, "waiting": True}, {"type": "CommandApplied", "command": "Resume"}], "yes", None),
        ([PLATEAU, {"type": "PhaseChanged"}], "yes", None),
        ([PHASE_LR, {"type": "CommandApplied", "command": "ApplyLR"}], "yes", None),
    ],
    ids=["wait-yes", "wait-no", "yes", "no", "lr-yes", "lr-no", "resumed", "phase-changed", "lr-applied"],
)
def test_answer_follows_the_open_question(history: list[dict], answer: str, commands: list | None) -> None:
    """None: no question is open any more (answered elsewhere, or the engine moved on): refused, nothing sent."""
    questions = Questions()
    for data in history:
        questions.fold(data)
    session = FakeSession(questions)
    outcome = ctl.plan("answer", [answer])(session)  # type: ignore[arg-type]
    assert session.sent == (commands or [])
    assert outcome.status == (APPLIED if commands is not None else ctl.REFUSED)


@pytest.mark.parametrize(
    "words", [["lr", "layer4", "nan"], ["lr", "layer4", "-2"], ["freeze"], ["answer", "maybe"], ["pause", "x"]]
)
def test_bad_arguments_are_refused_before_anything_is_sent(words: list[str], tmp_path: Path, capsys) -> None:
    assert main(["ctl", str(tmp_path), *words]) == 2
    assert capsys.readouterr().err.startswith("tuitune: error: ctl: ")


def test_pending_answers_in_queue_order_and_by_value() -> None:
    """The server's match of the engine's events to the commands it queued (tuitune/remote/confirm.py)."""
    from dataclasses import dataclass

    from tuitune.engine.events import CommandApplied
    from tuitune.remote.confirm import Pending

    @dataclass(frozen=True)
    class CommandRefused:  # the engine's refusal (branch cmdedge): matched by its type's name
        command: str
        reason: str
        sender: str = ""
        queued: bool = False

    pending, a, b = Pending(), object(), object()
    pending.add(Pause(), a, None)  # a dashboard's, no id: answered, told nothing
    pending.add(Pause(), b, "b1")
    pending.add(ApplyLR(lr=0.1), b, "b2")
    pending.add(ScaleGroupLR(group="nope", factor=2.0), b, "b3")
    assert pending.answer(CommandApplied("Pause", 1, 5)) is None
    sender, line = pending.answer(CommandApplied("Pause", 1, 6))  # type: ignore[misc]
    assert sender is b and json.loads(line)["id"] == "b1"
    assert pending.answer(CommandApplied("ApplyLR", 1, 7, value=0.3)) is None  # the engine's own phase LR
    assert json.loads(pending.answer(CommandApplied("ApplyLR", 1, 8, value=0.1))[1])["id"] == "b2"  # type: ignore[index]
    assert (
        pending.answer(CommandRefused("ScaleGroupLR", "bad", sender="socket client 2")) is None
    )  # refused at the edge
    engine_refusal = CommandRefused("ScaleGroupLR", "no group 'nope'", sender="socket client 1", queued=True)
    reply = json.loads(pending.answer(engine_refusal)[1])  # type: ignore[index]
    assert reply["id"] == "b3" and reply["ok"] is False and reply["reason"] == "no group 'nope'"


# ------------------------------------------------------------------------------------ unreachable runs


def test_an_unreachable_run_is_one_line_and_exit_2(tmp_path: Path, capsys) -> None:
    from tuitune.runs.process import write_process_record

    assert main(["ctl", str(tmp_path / "none"), "pause"]) == 2
    assert "not a tuitune run directory" in capsys.readouterr().err
    dead = tmp_path / "dead"
    dead.mkdir()
    (dead / "events.jsonl").write_text("")
    (dead / "process.json").write_text(json.dumps({"pid": 2**22 + 7, "socket": str(dead / "control.sock")}))
    assert main(["ctl", str(dead), "pause"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the run is not live (dead)" in err
    no_socket = tmp_path / "no-socket"  # owned by this (live) process, but nobody listens
    no_socket.mkdir()
    write_process_record(no_socket, no_socket / "control.sock", "test")
    assert main(["ctl", str(no_socket), "pause"]) == 2
    assert "cannot connect to the control socket" in capsys.readouterr().err
    (no_socket / "summary.json").write_text(json.dumps({"status": "finished"}))  # ended; its process still exiting
    assert main(["ctl", str(no_socket), "pause"]) == 2
    assert "the run is not live (finished; its process is exiting)" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ a scripted run's socket


@pytest.fixture
def scripted_run(tmp_path: Path) -> Iterator[tuple[Path, scripted.ScriptedEngine, Any]]:
    """The scripted engine (waiting at the plateau question) behind a real recorder, server and process record."""
    from tuitune.engine.record.runlog import RunRecorder, tee
    from tuitune.remote.server import RunServer
    from tuitune.runs.process import mark_ended, write_process_record

    run_dir = tmp_path / "run"
    recorder = RunRecorder(run_dir)
    control = Control()
    server = RunServer(run_dir, control)
    write_process_record(run_dir, server.path, "test")
    engine = scripted.ScriptedEngine(scripted.plateau_events(waiting=True))
    thread = threading.Thread(target=engine, args=(None, run_dir, tee(recorder, server), control), daemon=True)
    thread.start()
    try:
        wait_for(engine.started.is_set, 30, "the scripted engine started")
        yield run_dir, engine, server
    finally:
        control.request_stop()
        thread.join(timeout=10)
        mark_ended(run_dir)
        server.close(drain_s=0.5)
        recorder.close()


def test_ctl_answers_the_plateau_question_and_prints_the_confirmations(scripted_run, capsys) -> None:
    run_dir, engine, _ = scripted_run
    assert main(["ctl", str(run_dir), "answer", "yes"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert engine.received == [UnfreezeNext(), Resume()]
    assert out[0].startswith("applied: UnfreezeNext at epoch 3, step 50") and out[1].startswith("applied: Resume")
    assert main(["ctl", str(run_dir), "answer", "yes"]) == 1  # answered: nothing open any more
    assert "the run asks no question now" in capsys.readouterr().err
    assert engine.received == [UnfreezeNext(), Resume()]


def test_ctl_json_prints_the_confirming_event(scripted_run, capsys) -> None:
    run_dir, _, _ = scripted_run
    assert main(["ctl", str(run_dir), "save", "--json"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    event = event_from_json(line)
    assert type(event).__name__ == "CommandApplied" and event.command == "SaveCheckpoint"  # type: ignore[union-attr]


def test_the_confirmation_is_the_one_for_this_command(scripted_run, capsys) -> None:
    """Another client's command of the same type, queued first, is confirmed first: ctl waits for its own."""
    from tuitune.remote.confirm import Pending

    run_dir, engine, server = scripted_run
    engine.gate.clear()  # the engine receives, and answers once the gate opens
    server.pending.add(Pause(), object(), None)  # a dashboard's Pause, put before ours
    server.control.put(Pause())
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(main(["ctl", str(run_dir), "pause", "--json"])))
    thread.start()
    wait_for(lambda: len(engine.received) == 2, 30, "both pauses reached the engine")
    engine.gate.set()
    thread.join(timeout=30)
    assert result == [0]
    assert isinstance(server.pending, Pending) and not server.pending._sent  # both answered, nothing left over
    assert len(capsys.readouterr().out.splitlines()) == 1


def test_a_refusal_from_the_server_is_exit_1_with_its_reason(scripted_run, capsys, monkeypatch) -> None:
    """The server refuses a command it cannot take (its checks: a `Refused` line with the command's id, or one
    without an id as a server under load may send): ctl prints the reason and exits 1; the engine never sees the
    command."""
    from tuitune.remote import protocol

    run_dir, engine, server = scripted_run
    assert main(["ctl", str(run_dir), "lr", "layer4", "1000"]) == 1  # a positive number, past the factor's range
    assert "'factor' must be in (0, 100], got 1000" in capsys.readouterr().err

    def refused_line(raw: bytes, client: Any) -> bool:
        client.offer(server_out(None, protocol.message(protocol.REFUSED, command="Pause", reason="too many refusals")))
        return True

    from tuitune.remote.attached import Outgoing as server_out

    monkeypatch.setattr(server, "handle", refused_line)
    assert main(["ctl", str(run_dir), "pause"]) == 1
    assert "refused: Pause: too many refusals" in capsys.readouterr().err
    assert engine.received == []


def test_watch_streams_the_history_then_live_events(scripted_run, capsys) -> None:
    run_dir, _, _ = scripted_run
    lines: list[dict] = []
    done: list[int] = []

    def run_watch() -> None:
        from tuitune.remote.watch import watch

        done.append(watch(run_dir, lines.append, since=0)[0])

    thread = threading.Thread(target=run_watch, daemon=True)
    thread.start()
    wait_for(lambda: any(d["type"] == "UnfreezeSuggested" for d in lines), 30, "the history")
    assert lines[0]["type"] == "RunStarted"
    assert main(["ctl", str(run_dir), "stop"]) == 0
    thread.join(timeout=30)
    assert done == [0] and lines[-1]["type"] == "RunFinished"
    assert [d["command"] for d in lines if d["type"] == "CommandApplied"] == ["StopEarly"]
    recorded = [json.loads(x) for x in (run_dir / "events.jsonl").read_text().splitlines()]
    assert lines == recorded  # no gap, no repeat
    capsys.readouterr()
    assert main(["watch", str(run_dir), "--json", "--since", "40"]) == 0  # finished now: its record, then exit 0
    out = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    first = next(i for i, d in enumerate(recorded) if isinstance(d.get("global_step"), int) and d["global_step"] >= 40)
    assert out == recorded[first:]
    assert main(["watch", str(run_dir)]) == 0  # the console's lines
    assert "epoch   3/6  phase 1/6" in capsys.readouterr().out


# ------------------------------------------------------------------------------------ a real training run


@pytest.fixture
def real_run(tmp_path: Path) -> Iterator[Path]:
    """A tiny progressive run (manual trigger, hundreds of sub-second epochs) training in a thread of this process
    with its control socket open, as `train --headless` runs it."""
    from tuitune.remote.host import serve_run

    run_dir = tmp_path / "real"
    control = Control()
    ended: list[Any] = []
    thread = threading.Thread(
        target=lambda: ended.append(
            serve_run(tiny_profile(), run_dir, lambda e: None, control, interactive=True, mode="test")
        ),
        daemon=True,
    )
    thread.start()
    try:
        wait_for(lambda: _steps(run_dir) >= 2, 120, "the run trains")
        yield run_dir
    finally:
        control.request_stop()
        thread.join(timeout=60)


def _steps(run_dir: Path) -> int:
    try:
        text = (run_dir / "events.jsonl").read_text()
    except OSError:
        return 0
    return text.count('"type":"MetricsUpdated"')


def test_ctl_steers_a_real_run(real_run: Path, capsys) -> None:
    """Every verb against the real engine: each printed confirmation names its command, in order; then stop."""
    started = json.loads((real_run / "events.jsonl").read_text().splitlines()[0])
    frozen = next(layer["name"] for layer in started["layers"] if not layer["trainable"])
    steps = [
        (["pause"], "Pause"),
        (["resume"], "Resume"),
        (["unfreeze"], "UnfreezeNext"),
        (["unfreeze", frozen], "SetGroupTrainable"),
        (["freeze", frozen], "SetGroupTrainable"),
        (["lr", frozen, "2"], "ScaleGroupLR"),
        (["lr", "all", "0.5"], "ScaleGroupLR"),
        (["save"], "SaveCheckpoint"),
        (["adabn"], "AdaptBatchNorm"),
        (["lr-find", "--apply"], "FindLR"),
        (["stop"], "StopEarly"),
    ]
    for words, name in steps:
        assert main(["ctl", str(real_run), *words]) == 0, words
        out = capsys.readouterr().out
        assert out.startswith(f"applied: {name}"), (words, out)
        if words[0] == "lr-find":
            assert out.splitlines()[1].startswith("applied: ApplyLR"), out
    wait_for(lambda: (real_run / "summary.json").exists(), 60, "the run stopped")
    assert json.loads((real_run / "summary.json").read_text())["status"] == "stopped_early"
    wait_for(lambda: run_status(real_run) != "live", 60, "the run ended")  # its record says so after the summary
    assert main(["ctl", str(real_run), "pause"]) == 2  # it ended: out of reach
    assert "the run is not live" in capsys.readouterr().err


def test_a_refusal_names_its_command_once() -> None:
    from tuitune.remote.ctl import refusal

    assert refusal("ScaleGroupLR", "ScaleGroupLR: 'factor' must be in (0, 100], got 1000") == (
        "refused: ScaleGroupLR: 'factor' must be in (0, 100], got 1000"
    )
    assert refusal("Pause", "too many refusals") == "refused: Pause: too many refusals"
    assert refusal("Pause", None) == "refused: Pause: no reason given"
