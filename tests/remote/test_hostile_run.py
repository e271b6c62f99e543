"""A real headless run process gets bad commands over its socket (NaN and negative factors, an unknown group,
garbage, a line past the limit) and trains on unchanged; a proper client then unfreezes and stops it. The one
process this suite of hostile-input tests starts (the rest run in this process)."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

from tests.remote.conftest import run_pid, wait_for, write_profile
from tests.remote.viewer import Viewer
from tuitune.engine.commands import ScaleGroupLR, UnfreezeNext
from tuitune.exits import ExitCode
from tuitune.remote import attached
from tuitune.remote.client import connect


def test_a_live_run_refuses_bad_commands_trains_on_and_obeys_a_proper_client(tmp_path: Path, reaper) -> None:
    run_dir = reaper.watch(tmp_path / "run")
    proc = reaper.tuitune(
        "train",
        str(write_profile(tmp_path)),
        "--headless",
        "--out",
        str(run_dir),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    wait_for(lambda: run_pid(run_dir) == proc.pid, 120, "the run process owns the run")
    v = Viewer(connect(run_dir))
    wait_for(lambda: "EpochEnded" in v.types(), 120, "an epoch")
    bad = [
        b'{"type":"ScaleGroupLR","group":"head","factor":NaN}',
        b'{"type":"ScaleGroupLR","group":"head","factor":-5}',
        b"\xde\xad\xbe\xef",
    ]
    for line in bad:
        v.client.send_raw(line + b"\n")
    v.client.send(ScaleGroupLR("nope", 2.0))  # well formed: refused by the engine, which knows the groups
    wait_for(lambda: len([m for m in v.live() if m["type"] == "CommandRefused"]) == 4, 60, "four refusals logged")
    refused = [m for m in v.messages if m["type"] == "Refused"]
    assert [m["reason"] for m in refused][:2] == [
        "ScaleGroupLR: 'factor' must be a finite number, got NaN",
        "ScaleGroupLR: 'factor' must be in (0, 100], got -5",
    ]
    assert len(refused) == 3 and refused[2]["reason"].startswith("command: not JSON: ")
    step = max(m.get("global_step", 0) for m in v.live())
    wait_for(lambda: max(m.get("global_step", 0) for m in v.live()) >= step + 5, 60, "training on")
    try:
        v.client.send_raw(b"[" * (attached.MAX_LINE + 1))  # past the limit: refused, and this client dropped
    except OSError:
        pass  # the run may stop reading before the last byte: the refusal still comes
    wait_for(lambda: not v.thread.is_alive(), 30, "the client dropped")
    assert v.messages[-1]["reason"] == f"a line longer than {attached.MAX_LINE} bytes"
    proper = Viewer(connect(run_dir))
    proper.client.send(UnfreezeNext())
    wait_for(lambda: "UnfreezeNext" in proper.applied(), 60, "a proper client's command")
    proper.client.stop_run()
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == ExitCode.INTERRUPTED
    assert out.count("command refused from socket client 1: ") == 4  # the engine's refusal names its sender too
    assert "from socket client 1: ScaleGroupLR: 'group' 'nope' is not a layer group" in out
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    assert [e["command"] for e in events if e["type"] == "CommandApplied"] == ["UnfreezeNext"]
    assert [e["type"] for e in events].count("CommandRefused") == 4
    lrs = [lr for e in events if e["type"] == "MetricsUpdated" for lr in e["lrs"]]
    assert lrs and all(math.isfinite(lr) and 0 < lr <= 0.01 for lr in lrs)
    assert events[-1]["type"] == "RunFinished" and events[-1]["status"] == "interrupted"
    proper.client.close()
