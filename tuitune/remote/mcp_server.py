"""`tuitune mcp [FOLDER]`: the runs under a folder for an agent, over the Model Context Protocol (stdio).

Five tools: `list_runs`, `run_status`, `run_metrics` (per-epoch figures and the step readings, downsampled),
`layer_table`, and `send_command` (a `tuitune ctl` verb, through `tuitune.remote.ctl.steer`: the same checks, the
same confirmation by request id, and the run's log names the sender "agent (socket client N)"). A run is named by
its folder's name under FOLDER; a name that leaves FOLDER is refused. Every bad input is an error result in one
line (`AgentError`), never the server's end. The reading functions are plain Python (the `mcp` SDK is imported by
`serve` only, so they are tested without it too).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tuitune import __version__
from tuitune.engine.events import EpochEnded, LayersChanged, LayersMeasured, MetricsUpdated, RunStarted
from tuitune.engine.record.history import read_history
from tuitune.errors import UserError
from tuitune.remote import ctl
from tuitune.runs.status import is_run_dir, list_runs, run_info

SENDER = "agent"  # the tag every command from here carries: the run's log says "agent (socket client N)"
MAX_POINTS = 2000  # step readings a `run_metrics` answer holds at most, whatever is asked


class AgentError(ValueError):
    """A request the tools refuse, in one line (the agent sees it as the tool's error result)."""


class Runs:
    """The run directories under one folder, read for an agent."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder).resolve()

    def run_dir(self, run: str) -> Path:
        """The run folder named `run` directly under the folder; AgentError for a name that is not one."""
        if not isinstance(run, str) or not run or run in (".", "..") or "/" in run or "\\" in run or "\0" in run:
            raise AgentError(f"run: a run's folder name under {self.folder} is expected, got {run!r}")
        path = self.folder / run
        if path.parent != self.folder or not path.is_dir() or not is_run_dir(path):
            raise AgentError(f"run: no run {run!r} under {self.folder} (list_runs names them)")
        return path

    def list_runs(self) -> list[dict[str, Any]]:
        """The runs under the folder, oldest first: name, status (live, finished, ...), phase, epoch, best."""
        return [info.as_dict() for info in list_runs(self.folder)]

    def run_status(self, run: str) -> dict[str, Any]:
        """One run's row: status, phase, epoch, best score, what it waits for (paused, a question)."""
        return run_info(self.run_dir(run)).as_dict()

    def run_metrics(self, run: str, max_points: int = 200) -> dict[str, Any]:
        """Every epoch's figures, and the step readings (train loss, score, LRs) cut to `max_points` evenly spaced
        ones, the newest always among them."""
        if isinstance(max_points, bool) or not isinstance(max_points, int) or not 1 <= max_points <= MAX_POINTS:
            raise AgentError(f"max_points: an integer from 1 to {MAX_POINTS} is expected, got {max_points!r}")
        events = self._history(run)
        epochs = [_plain(e) for e in events if isinstance(e, EpochEnded)]
        steps = [e for e in events if isinstance(e, MetricsUpdated)]
        keep = _even(len(steps), max_points)
        readings = [
            {"epoch": s.epoch, "global_step": s.global_step, "train_loss": s.train_loss, "train_score": s.train_score}
            | {"lrs": list(s.lrs)}
            for i, s in enumerate(steps)
            if i in keep
        ]
        return {"run": run, "epochs": epochs, "steps": readings, "readings_in_history": len(steps)}

    def layer_table(self, run: str) -> dict[str, Any]:
        """The layer table as the dashboard shows it: the latest rows (the run's start lists them first), with the
        LRs and gradient norms measured since."""
        rows: list[dict[str, Any]] = []
        step = 0
        for event in self._history(run):
            if isinstance(event, RunStarted):
                rows, step = [dataclasses.asdict(layer) for layer in event.layers], event.start_step
            elif isinstance(event, LayersChanged):
                rows, step = [dataclasses.asdict(layer) for layer in event.layers], event.global_step
            elif isinstance(event, LayersMeasured) and len(event.lrs) == len(rows):
                for row, lr, grad in zip(rows, event.lrs, event.grad_norms, strict=False):
                    row["lr"], row["grad_norm"] = lr, grad
                step = event.global_step
        return {"run": run, "global_step": step, "layers": rows}

    def send_command(self, run: str, verb: str, args: list[str] | None = None) -> dict[str, Any]:
        """A `tuitune ctl` verb sent to a live run, and the engine's answer: applied or refused (the run
        unchanged), or unreachable; with the answering events."""
        words = args or []
        if not isinstance(verb, str) or not isinstance(words, list) or not all(isinstance(a, str) for a in words):
            raise AgentError("send_command: verb is a string and args a list of strings")
        try:
            outcome = ctl.steer(self.run_dir(run), verb, words, sender=SENDER)
        except UserError as e:  # bad verb or arguments: nothing sent
            raise AgentError(str(e)) from None
        return {"status": outcome.status, "message": outcome.message, "events": list(outcome.events)}

    def _history(self, run: str) -> list[Any]:
        try:
            return list(read_history(self.run_dir(run)))
        except (OSError, UserError) as e:
            raise AgentError(f"run {run!r}: its events cannot be read: {e}") from None


def _even(count: int, points: int) -> set[int]:
    """`points` indexes spread evenly over `count` (all of them when there are no more), the last included."""
    if count <= points:
        return set(range(count))
    return {round(i * (count - 1) / (points - 1)) for i in range(points)} if points > 1 else {count - 1}


def _plain(event: Any) -> dict[str, Any]:
    return {"type": type(event).__name__, **dataclasses.asdict(event)}


TOOLS = ("list_runs", "run_status", "run_metrics", "layer_table", "send_command")


def serve(folder: Path) -> None:
    """Serve the tools over stdio until the client closes the connection. A tool's result is its JSON; an
    AgentError is the call's error result with its line (any other exception too, its text kept on the server);
    the server goes on."""
    from mcp.server.mcpserver import MCPServer

    runs = Runs(folder)
    server = MCPServer(
        name="tuitune",
        version=__version__,
        instructions=f"tuitune fine-tuning runs under {runs.folder}",
        log_level="ERROR",
    )
    for name in TOOLS:
        method = getattr(runs, name)
        server.tool(name=name, description=" ".join((method.__doc__ or name).split()))(_tool(method))
    server.run("stdio")


def _tool(method: Callable[..., Any]) -> Callable[..., Any]:
    """`method` with an AgentError raised as the SDK's ToolError (its message reaches the agent); the same
    signature, which the SDK reads for the tool's input schema."""
    from mcp.server.mcpserver.exceptions import ToolError

    @functools.wraps(method)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except AgentError as e:
            raise ToolError(str(e)) from None

    return call
