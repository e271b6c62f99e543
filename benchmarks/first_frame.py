"""Child process of overhead.py: run `tuitune` with no arguments (`tuitune.cli.main([])`, the console script's
path) with Textual headless, and print `FIRST_FRAME <checks>` as soon as the picker's first frame is drawn: the
PickerScreen is the active screen, its profile list is populated, and the app has processed the refresh that
follows (`pilot.pause()`). The parent times spawn -> that line, so interpreter start-up and every import count.
Then the app exits. Nothing else is changed: the same app, screens and imports as a real `tuitune`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def patch_app_run() -> None:
    """Make `App.run` headless with an auto-pilot that reports the first frame; imports Textual's app module
    only (the real path imports it anyway, a moment later, in tuitune.ui.launch)."""
    from textual.app import App

    original = App.run

    async def report_first_frame(pilot: Any) -> None:
        from textual.widgets import OptionList

        from tuitune.ui.picker import PickerScreen

        while not isinstance(pilot.app.screen, PickerScreen):
            await pilot.pause()
        await pilot.pause()  # the refresh after mount: the first frame is composed
        options = pilot.app.screen.query_one(OptionList).option_count
        print(f"FIRST_FRAME profiles={options}", flush=True)
        pilot.app.exit(return_code=0)

    def run(self: Any, **kwargs: Any) -> Any:
        kwargs.update(headless=True, auto_pilot=report_first_frame)
        return original(self, **kwargs)

    App.run = run  # type: ignore[method-assign]


if __name__ == "__main__":
    patch_app_run()
    from tuitune.cli import main

    raise SystemExit(main([]))
