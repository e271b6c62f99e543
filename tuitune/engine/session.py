"""One call that runs a whole fine-tuning run, for the CLI and the UI worker alike.

It records the run directory, turns every failure into a `RunFailed` event with a one-line message (the full
traceback goes to `error.log` in the run directory, not over the screen), and returns the terminal event:

- bad input (`UserError`: profile, data, model, checkpoint): `bad_input=True`, exit 2, no traceback;
- a run that cannot go on (`guards.RunAborted`: a non-finite loss) and out of memory: one line of advice, exit 1;
- a record that cannot be written (`WriteFailed`: a full disk, a file-size limit, an I/O error): one line naming
  the file and the error, and the checkpoint the run can go on from, exit 1;
- any other exception: its type and first line, exit 1, traceback in `error.log`.

With several ranks (`dist`), rank 0 does all of this; another rank records nothing, and writes only its own
`error.rank<N>.log` when it fails. A failure that says another rank is gone (`PeerLost`) raises `RankGone` under
tuitune's own launcher, which knows which rank died and records the run's end naming it.

Torch-free at import (the CLI and the picker import it); the engine loads inside `run_training`.
"""

from __future__ import annotations

import re
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypedDict

from tuitune.config import SECTIONS, RunProfile
from tuitune.engine.commands import Control
from tuitune.engine.events import Event, RunFailed
from tuitune.engine.record.files import WriteFailed
from tuitune.engine.record.runlog import RunRecorder, new_run_dir, tee
from tuitune.engine.report import open_relay, relayed
from tuitune.errors import UserError, first_line

__all__ = ["RankGone", "new_run_dir", "run_training", "user_message"]


class RankGone(Exception):
    """This rank lost a peer; the launcher records the failure (the rank exits with `ExitCode.RANK_LOST`)."""


_KEY_FIRST = re.compile(r"^(?:{})\.\w+:".format("|".join(SECTIONS)))
_WORKER_LAST_LINE = re.compile(r"^[\w.]+: (.*)$")


def run_training(
    profile: RunProfile,
    run_dir: Path,
    emit: Callable[[Event], None],
    control: Control,
    *,
    interactive: bool = True,
    resume: Path | None = None,
    dist: Any = None,
    launched: bool = False,
) -> Event:
    """Build and train; block until the run ends. Never raises for bad input or a failing run (only
    `KeyboardInterrupt`, the second Ctrl+C, gets through: checkpoint writes are atomic, so that loses nothing;
    and `RankGone` when `launched` by tuitune's launcher and a peer rank died). `dist`: this process's
    `distributed.DistContext` (None: one process)."""
    main = dist is None or dist.is_main
    sink = tee(RunRecorder(run_dir, append=resume is not None), emit) if main else emit
    relay = open_relay(profile, run_dir) if main else None  # [report] trackers, [notify] webhook: fed off this thread
    if relay is not None:
        sink = relayed(sink, relay)
    trainer: Any = None
    try:
        from tuitune.engine.tools.after_run import export_and_compress  # torch, timm, transformers load here,
        from tuitune.engine.train.distributed import LOCAL
        from tuitune.engine.train.loop import Trainer  # in the worker

        if relay is not None:
            relay.begin()  # the trackers import their libraries now, torch being in place
        trainer = Trainer(
            profile,
            run_dir,
            sink,
            control,
            interactive=interactive,
            resume=resume,
            after_run=export_and_compress,
            dist=dist if dist is not None else LOCAL,
        )
        return trainer.run()
    except UserError as e:
        failed = RunFailed(
            message=user_message(e, profile),
            run_dir=str(run_dir),
            bad_input=True,
            kind="bad_input",
            **_position(trainer),
        )
    except Exception as e:
        peer = dist is not None and dist.active and _peer_failure(e)
        if peer and (launched or not main):
            raise RankGone(str(e)) from e
        if not main:  # the run's record is rank 0's; this rank leaves its own traceback only
            return _rank_failure(e, run_dir, dist.rank)
        failed = _peer_lost(e, run_dir, trainer) if peer else _failure(e, profile, run_dir, trainer)
    if failed.kind == "oom":  # give the memory back now that nothing holds the run (the dashboard stays alive)
        trainer = None
        sys.modules["tuitune.engine.train.guards"].free_memory()
    sink(failed)
    return failed


def user_message(error: UserError, profile: RunProfile | None = None) -> str:
    """One line naming the file and the key. An error raised in a DataLoader worker comes back wrapped in a
    traceback (torch re-raises it with the worker's traceback as the message): its last line is the real one. An
    engine message that starts with a key (`model.name: ...`) gets the profile's file in front."""
    text = str(error).strip()
    if "Original Traceback" in text:
        last = text.splitlines()[-1]
        match = _WORKER_LAST_LINE.match(last)
        text = match.group(1) if match else last
    text = " ".join(text.split())
    if profile is not None and profile.source_path and _KEY_FIRST.match(text):
        text = f"{profile.source_path}: {text}"
    return text


def _peer_failure(error: Exception) -> bool:
    from tuitune.engine.train.distributed import is_peer_failure  # already loaded: the run had several ranks

    return is_peer_failure(error)


def _rank_failure(error: Exception, run_dir: Path, rank: int) -> RunFailed:
    """A rank other than 0 failed: its traceback in its own `error.rank<N>.log`, and nothing in the run's record."""
    log = run_dir / f"error.rank{rank}.log"
    log.write_text(traceback.format_exc(), encoding="utf-8")
    return RunFailed(
        message=f"rank {rank}: {type(error).__name__}: {first_line(error, 200)}",
        run_dir=str(run_dir),
        log_path=str(log),
        kind="error",
    )


def _peer_lost(error: Exception, run_dir: Path, trainer: Any) -> RunFailed:
    """Rank 0 lost a peer (not under tuitune's launcher, which names the rank that died itself)."""
    checkpoints = getattr(trainer, "checkpoints", None)
    return RunFailed(
        message=f"another rank stopped answering ({first_line(error, 200)}); "
        f"{checkpoints.note() if checkpoints is not None else 'no checkpoint was saved'}",
        run_dir=str(run_dir),
        kind="rank_lost",
        **_position(trainer),
    )


class _Position(TypedDict, total=False):
    epoch: int
    global_step: int


def _position(trainer: Any) -> _Position:
    st = getattr(trainer, "st", None)
    return {"epoch": st.epoch, "global_step": st.global_step} if st is not None else {}


def _failure(error: Exception, profile: RunProfile, run_dir: Path, trainer: Any) -> RunFailed:
    """A run that failed: `RunAborted` says why itself; out of memory gets advice; anything else its first line.
    All but a non-finite stop leave their traceback in `error.log`."""
    guards = sys.modules.get("tuitune.engine.train.guards")  # loaded with the loop; absent if the failure came first
    if isinstance(error, WriteFailed):  # a full disk, a file-size limit: no traceback to keep (nor room for one)
        checkpoints = getattr(trainer, "checkpoints", None)
        note = checkpoints.note() if checkpoints is not None else "no checkpoint was saved yet"
        return RunFailed(message=f"{error}; {note}", run_dir=str(run_dir), kind="write", **_position(trainer))
    if guards is not None and isinstance(error, guards.RunAborted):
        return RunFailed(
            message=error.message,
            run_dir=str(run_dir),
            epoch=error.epoch,
            global_step=error.global_step,
            kind=error.kind,
        )
    log = run_dir / "error.log"
    log.write_text(traceback.format_exc(), encoding="utf-8")
    if guards is not None and guards.is_oom(error):
        st, checkpoints = getattr(trainer, "st", None), getattr(trainer, "checkpoints", None)
        position = (
            f"at epoch {st.epoch + 1}, step {st.step_in_epoch + 1}" if st is not None else "while building the run"
        )
        note = checkpoints.note() if checkpoints is not None else "no checkpoint was saved yet"
        resumable = checkpoints is not None and checkpoints.saved_at.get("last", (0, 1))[1] == 0
        message = guards.oom_message(profile, run_dir, position, note, resumable)
        return RunFailed(message=message, run_dir=str(run_dir), log_path=str(log), kind="oom", **_position(trainer))
    first = (str(error).strip().splitlines() or [""])[0]
    return RunFailed(
        message=f"{type(error).__name__}: {first}"[:300],
        run_dir=str(run_dir),
        log_path=str(log),
        kind="error",
        **_position(trainer),
    )
