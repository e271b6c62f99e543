"""The `attached` mode's viewer: the real dashboard (`tuitune attach RUN_DIR`'s app, Textual headless, 120x40) in
a process of its own, attached to the benchmark's run over its control socket until the run ends.

Prints `VIEWER {json}` at the end: the events and global step the dashboard saw, and its CPU seconds."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tuitune.ui.app import TuituneApp  # noqa: E402


async def watch(run_dir: Path, timeout: float) -> dict:
    app = TuituneApp("attach", run_dir=run_dir)
    async with app.run_test(size=(120, 40)) as pilot:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            d = app.dashboard
            if d is not None and d.state.events_seen and not d.in_history and not d.state.live:
                break
            await asyncio.sleep(0.1)
        await pilot.pause()
        d = app.dashboard
        seen = {
            "events_seen": d.state.events_seen if d else 0,
            "global_step": d.state.global_step if d else 0,
            "status": d.state.status if d else "",
            "cpu_s": time.process_time(),
        }
        app.exit()
    return seen


if __name__ == "__main__":
    print("VIEWER " + json.dumps(asyncio.run(watch(Path(sys.argv[1]), float(sys.argv[2])))), flush=True)
