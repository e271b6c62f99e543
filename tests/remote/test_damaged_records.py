"""Run directories with damaged records, and one writer per run directory: `runs`, `attach`, `replay`, `compare`
and `train --resume` say what they found in one line each and go on with what is intact; `train --out` or
`--resume` into a folder a live process owns is refused in one line naming its pid, and nothing there changes.
In this process: the CLI's `main`, stored runs, and one real tiny run to resume."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
from pathlib import Path

import pytest

from tests.remote.conftest import write_profile
from tests.remote.stored_runs import profile, two_runs, write_run
from tuitune.cli import main
from tuitune.engine.events import RunStarted
from tuitune.engine.record.runlog import read_events
from tuitune.exits import ExitCode
from tuitune.runs.damage import torn_tail
from tuitune.runs.process import proc_start_ticks
from tuitune.runs.status import run_status
from tuitune.ui import launch

ME = {"pid": os.getpid(), "proc_start": proc_start_ticks(os.getpid()), "host": socket.gethostname()}


def process_json(run_dir: Path, **fields) -> None:
    record = {**ME, "socket": str(run_dir / "control.sock"), "started": 1_700_000_000.0, "mode": "headless"}
    (run_dir / "process.json").write_text(json.dumps({**record, **fields}))


def tear(run_dir: Path) -> None:
    """A power cut mid-write: half of a last line."""
    with open(run_dir / "events.jsonl", "a", encoding="utf-8") as f:
        f.write('{"type":"EpochEnded","epoch":9,"val_lo')


def snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()
    }


def notes(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("tuitune: note: ")]


@pytest.fixture
def replays(monkeypatch) -> list[tuple[Path, int]]:
    """What `open_replay` would put on screen: the run and how many events it read (the screen has its own tests)."""
    shown: list[tuple[Path, int]] = []

    def fake(run_dir: Path, speed: float = 0.0) -> int:
        shown.append((Path(run_dir), len(read_events(Path(run_dir)))))
        return 0

    monkeypatch.setattr(launch, "open_replay", fake)
    return shown


def test_runs_lists_damaged_runs_with_one_note_each(tmp_path: Path, capsys) -> None:
    torn = write_run(tmp_path / "torn", profile(1e-3), [1.0, 0.9], [0.5, 0.6])
    tear(torn)
    nosummary = write_run(tmp_path / "nosummary", profile(1e-3), [1.0], [0.5])
    (nosummary / "summary.json").unlink()
    elsewhere = write_run(tmp_path / "elsewhere", profile(1e-3), [1.0], [0.5], status="dead")
    process_json(elsewhere, host="gpu-node-7", pid=4242)
    reused = write_run(tmp_path / "reused", profile(1e-3), [1.0], [0.5], status="dead")
    process_json(reused, proc_start=ME["proc_start"] + 1)  # this pid, another start: not the run's process
    assert main(["runs", str(tmp_path), "--json"]) == 0
    out, err = capsys.readouterr()
    status = {r["name"]: r["status"] for r in json.loads(out)}
    assert status == {"torn": "finished", "nosummary": "dead", "elsewhere": "on host gpu-node-7", "reused": "dead"}
    said = notes(err)
    assert len([n for n in said if "events.jsonl: the last line is torn (38 bytes" in n]) == 1
    assert not [n for n in said if "no summary.json" in n]  # the status says it: dead
    assert len([n for n in said if "run process 4242 on host gpu-node-7" in n]) == 1
    assert len([n for n in said if f"reused: pid {os.getpid()} now belongs to another process" in n]) == 1


def test_replay_attach_and_compare_go_on_with_what_is_intact(tmp_path: Path, capsys, replays) -> None:
    a, b = two_runs(tmp_path)
    tear(a)
    (a / "summary.json").write_text("{not json")
    assert main(["replay", str(a)]) == 0
    assert replays == [(a, 6)]  # RunStarted, 4 epochs, RunFinished: the torn line skipped
    said = notes(capsys.readouterr().err)
    assert len(said) == 2 and "torn" in said[0] and "summary.json: unreadable" in said[1]
    assert main(["compare", str(a), str(b), "--json"]) == 0
    out, err = capsys.readouterr()
    assert [len(r["curve"]) for r in json.loads(out)["runs"]] == [4, 4] and len(notes(err)) == 2
    process_json(b, host="gpu-node-7", pid=4242)
    (b / "summary.json").unlink()
    assert run_status(b) == "on host gpu-node-7"
    assert main(["attach", str(b)]) == 0  # not reachable from here: its record, with one line saying why
    assert replays[-1] == (b, 6) and notes(capsys.readouterr().err) == [
        f"tuitune: note: {b}: process.json names run process 4242 on host gpu-node-7: its state is not known here"
    ]
    dead = write_run(tmp_path / "dead", profile(1e-3), [1.0], [0.5], status="dead")
    tear(dead)
    assert main(["replay", str(dead)]) == 0 and replays[-1] == (dead, 2)  # RunStarted, one epoch
    said = notes(capsys.readouterr().err)
    assert len(said) == 2 and "torn" in said[0] and "no summary.json (the run ended without writing one)" in said[1]
    assert main(["attach", str(dead)]) == ExitCode.BAD_INPUT
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and "torn" in err[0] and "(dead; last event" in err[1]


def test_torn_tail_counts_what_follows_the_last_newline(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    assert torn_tail(path) == 0
    path.write_bytes(b'{"a":1}\n')
    assert torn_tail(path) == 0
    path.write_bytes(b'{"a":1}\n{"b"')
    assert torn_tail(path) == 4
    path.write_bytes(b"x" * 100_000)
    assert torn_tail(path) >= 65_536


@pytest.fixture(scope="module")
def real_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished one-epoch tiny run, copied by each test that resumes it."""
    tmp = tmp_path_factory.mktemp("real")
    assert main(["train", str(write_profile(tmp, epochs=1)), "--headless", "--out", str(tmp / "run")]) == 0
    return tmp / "run"


def test_one_writer_per_run_directory(real_run: Path, tmp_path: Path, capsys) -> None:
    """A folder whose process.json names a live process (this one, standing in for a run process): `--out`, with or
    without `--force`, and `--resume` are refused in one line naming the pid; not a byte there changes."""
    run = Path(shutil.copytree(real_run, tmp_path / "run"))
    process_json(run)
    before = snapshot(run)
    profile_path = write_profile(tmp_path, epochs=1)
    capsys.readouterr()
    for argv in (["--out", str(run)], ["--out", str(run), "--force"], ["--resume", str(run)]):
        assert main(["train", str(profile_path), "--headless", *argv]) == ExitCode.BAD_INPUT
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1 and f"run process {os.getpid()} is live and writes here" in err[0], argv
        assert err[0].startswith(f"tuitune: error: {run}: {argv[0]}:")
    assert snapshot(run) == before
    fresh = tmp_path / "fresh"  # a folder being started (process.json only) is owned as well
    fresh.mkdir()
    process_json(fresh)
    assert main(["train", str(profile_path), "--headless", "--out", str(fresh)]) == ExitCode.BAD_INPUT
    assert sorted(os.listdir(fresh)) == ["process.json"]


def test_resume_says_what_it_found_and_continues(real_run: Path, tmp_path: Path, capsys) -> None:
    """A torn last line and a process.json from another host: refused without --force (that host may still write
    there); with it, one note per finding, the torn line cut off, and the run continues from its checkpoint."""
    run = Path(shutil.copytree(real_run, tmp_path / "run"))
    tear(run)
    process_json(run, host="gpu-node-7", pid=4242)
    (run / "summary.json").unlink()
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--headless"]) == ExitCode.BAD_INPUT
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "names run process 4242 on host gpu-node-7" in err[0] and "--force" in err[0]
    assert main(["train", "--resume", str(run), "--headless", "--force", "--set", "train.epochs=2"]) == 0
    said = notes(capsys.readouterr().err)
    assert len(said) == 2 and "torn" in said[0] and "on host gpu-node-7" in said[1]
    events = read_events(run)
    assert torn_tail(run / "events.jsonl") == 0 and len([e for e in events if isinstance(e, RunStarted)]) == 2
    assert json.loads((run / "summary.json").read_text())["epochs"] == 2
    assert json.loads((run / "process.json").read_text())["host"] == socket.gethostname()
