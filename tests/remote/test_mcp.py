"""`tuitune mcp FOLDER` through the SDK's own client over stdio (one spawned server process, ended with the
client's context, pass or fail), against a real tiny training run served in a thread of this test process."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from tests.remote.conftest import env
from tests.remote.test_ctl import real_run  # noqa: F401  (the fixture: a tiny run behind a real socket)
from tuitune import __version__


def _events(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines() if line.strip()]


async def _session(folder: Path, errlog: Any, script: Any) -> Any:
    from mcp import ClientSession, StdioServerParameters
    from mcp.client.stdio import stdio_client

    params = StdioServerParameters(command=sys.executable, args=["-m", "tuitune", "mcp", str(folder)], env=env())
    async with stdio_client(params, errlog=errlog) as (read, write), ClientSession(read, write) as session:
        hello = await session.initialize()
        assert (hello.server_info.name, hello.server_info.version) == ("tuitune", __version__)
        return await script(session)


def _result(result: Any) -> Any:
    assert not result.is_error, result.content
    data = result.structured_content
    return data["result"] if set(data) == {"result"} else data


def test_an_agent_lists_reads_and_steers_a_live_run(real_run: Path, tmp_path: Path) -> None:  # noqa: F811
    run = real_run.name
    transcript: list[str] = []

    async def script(s: Any) -> dict[str, Any]:
        out: dict[str, Any] = {"tools": [t.name for t in (await s.list_tools()).tools]}
        transcript.append(f"tools: {out['tools']}")
        for name, args in [
            ("list_runs", {}),
            ("run_status", {"run": run}),
            ("run_metrics", {"run": run, "max_points": 3}),
            ("layer_table", {"run": run}),
        ]:
            out[name] = _result(await s.call_tool(name, args))
        steps = [
            ("pause", ["pause"]),
            ("resume", ["resume"]),
            ("big", ["lr", "all", "1000"]),
            ("nope", ["lr", "nope", "2"]),
        ]
        for key, words in steps:
            out[key] = _result(await s.call_tool("send_command", {"run": run, "verb": words[0], "args": words[1:]}))
            transcript.append(
                f"send_command {words} -> {out[key]['message']}; events: {json.dumps(out[key]['events'])}"
            )
        for key, tool, args in [
            ("nan", "send_command", {"run": run, "verb": "lr", "args": ["all", "nan"]}),
            ("escape", "send_command", {"run": "..", "verb": "pause"}),
            ("missing", "run_status", {"run": "nope"}),
        ]:
            result = await s.call_tool(tool, args)
            assert result.is_error, key
            out[key] = result.content[0].text
            transcript.append(f"{key}: {out[key]}")
        return out

    with (tmp_path / "mcp.err").open("w") as errlog:
        out = asyncio.run(asyncio.wait_for(_session(real_run.parent, errlog, script), 90))
    print("\n".join(transcript))

    assert out["tools"] == ["list_runs", "run_status", "run_metrics", "layer_table", "send_command"]
    assert [r["name"] for r in out["list_runs"]] == [run] and out["run_status"]["status"] == "live"
    assert 1 <= len(out["run_metrics"]["steps"]) <= 3 <= out["run_metrics"]["readings_in_history"]
    layers = out["layer_table"]["layers"]
    assert layers and any(row["trainable"] for row in layers) and any(not row["trainable"] for row in layers)
    assert all(row["grad_norm"] is not None for row in layers if row["trainable"])  # measured since the rows came

    for key, name in (("pause", "Pause"), ("resume", "Resume")):
        assert out[key]["status"] == "applied" and out[key]["message"].startswith(f"applied: {name}")
        assert out[key]["events"][0]["type"] == "CommandApplied" and out[key]["events"][0]["command"] == name
    assert out["big"]["status"] == "refused" and "factor" in out["big"]["message"]
    assert out["nope"]["status"] == "refused" and "'nope' is not a layer group" in out["nope"]["message"]
    assert "FACTOR must be a positive number" in out["nan"]
    assert "a run's folder name" in out["escape"] and "no run 'nope'" in out["missing"]

    log = _events(real_run)
    applied = [e for e in log if e["type"] == "CommandApplied" and e["command"] in ("Pause", "Resume")]
    assert [e["command"] for e in applied] == ["Pause", "Resume"]
    assert all(e["sender"].startswith("agent (socket client ") for e in applied), applied
    refused = [e for e in log if e["type"] == "CommandRefused"]
    assert [(e["command"], e["queued"]) for e in refused] == [("ScaleGroupLR", False), ("ScaleGroupLR", True)]
    assert "factor" in refused[0]["reason"] and "'nope' is not a layer group" in refused[1]["reason"]
    assert all(e["sender"].startswith("agent (socket client ") for e in refused), refused  # the engine's too
    assert not [e for e in log if e["type"] == "CommandApplied" and e["command"] == "ScaleGroupLR"]


def test_the_layer_table_is_the_latest_rows_with_the_measures_since(tmp_path) -> None:
    """What an agent reads as the layer table is what the dashboard shows: the last full rows (`RunStarted`'s
    until the first `LayersChanged`), their LRs and gradient norms replaced by each `LayersMeasured` written after
    them (a long run writes rows only on change)."""
    from tests.ui import scripted
    from tuitune.engine.events import LayerInfo, LayersChanged, LayersMeasured, to_json
    from tuitune.remote.mcp_server import Runs

    run = tmp_path / "r"
    run.mkdir()
    rows = (LayerInfo("body", 10, False, lr=None), LayerInfo("head", 5, True, lr=1e-3, grad_norm=0.5))
    events = [
        LayersChanged(layers=rows, global_step=2),
        LayersMeasured(lrs=(None, 2e-3), grad_norms=(None, 0.25), global_step=4),
        LayersMeasured(lrs=(None, 3e-3), grad_norms=(None, 0.125), global_step=6),
    ]
    (run / "events.jsonl").write_text(to_json(scripted.run_started()) + "\n")  # a run still in its setup
    started = Runs(tmp_path).layer_table("r")
    assert [row["name"] for row in started["layers"]] == [layer.name for layer in scripted.run_started().layers]
    assert started["global_step"] == 0 and started["layers"][-1]["trainable"]
    (run / "events.jsonl").write_text("".join(to_json(e) + "\n" for e in (scripted.run_started(), *events)))
    table = Runs(tmp_path).layer_table("r")
    assert table["global_step"] == 6
    assert [(r["name"], r["trainable"], r["lr"], r["grad_norm"]) for r in table["layers"]] == [
        ("body", False, None, None),
        ("head", True, 3e-3, 0.125),
    ]
