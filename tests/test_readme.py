"""The README's `## Use` block, run in order as a new user would, so the next drift between it and the code fails.

The test reads the first ```bash block under `## Use` in README.md and, in a temporary folder holding
`profiles/demo.toml` (a link to the packaged demo, as in a clone), takes its lines in order:

- Every line, and every `or: tuitune ...` / `also: tuitune ...` alternative in its comment, goes through the real
  parser (`tuitune.cli.build_parser`): a subcommand or flag that does not exist fails here.
- Lines that finish by themselves run in this process through `tuitune.cli.main` and must exit 0: the headless
  training (short: `--set train.epochs=2 --set train.max_steps_per_epoch=3` appended, which win over the line's own
  `train.epochs=6`), `--resume` (which trains on to 3 short epochs the same way, in place of the line's 8),
  `tuitune runs`, `tuitune layers`.
- Lines that open a screen run through `main` too, with the app driven headless (Textual's `run_test`) instead of on
  the terminal, then closed: `tuitune` (the picker, which must list the demo), `tuitune runs --compare` (the run list
  must show the run) and `tuitune replay` (the summary of the resumed 3-epoch run must be on top).
- Skipped after parsing, each for a reason that is not the README's: `tuitune train PROFILE` without `--headless`
  starts a detached run process and trains the whole demo (the headless line trains the same engine), and
  `tuitune attach` needs a live run, and nothing is live once the headless run has ended (with none it exits 2, as
  documented).

One short run and four in-process commands: about 10 s on an idle 2-core CPU. A SIGALRM ceiling ends it if it hangs.
"""

from __future__ import annotations

import asyncio
import html
import re
import shlex
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tuitune.cli import build_parser, main
from tuitune.profiles import PACKAGE_PROFILES

README = Path(__file__).resolve().parents[1] / "README.md"
SHORT = ["--set", "train.epochs=2", "--set", "train.max_steps_per_epoch=3"]
RESUME_SHORT = ["--set", "train.epochs=3", "--set", "train.max_steps_per_epoch=3"]  # trains on one more epoch
CEILING_S = 240  # generous: the machine may be shared; an idle one takes ~10 s


def use_block(text: str) -> list[tuple[list[str], str]]:
    """(argv after `tuitune`, comment) for each line of the first ```bash block under `## Use`."""
    section = text.split("\n## Use\n", 1)[1]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    lines = []
    for raw in block.splitlines():
        command, _, comment = raw.partition("  #")
        if command.strip():
            argv = shlex.split(command)
            assert argv[0] == "tuitune", f"README Use block: not a tuitune command: {raw!r}"
            lines.append((argv[1:], comment.strip()))
    return lines


def export_block(text: str) -> list[list[str]]:
    """argv after `tuitune` for each line of the ```bash block under `## Export, compress, LR finder`."""
    section = text.split("\n## Export, compress, LR finder\n", 1)[1]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    commands = [shlex.split(raw.partition("  #")[0]) for raw in block.splitlines() if raw.partition("  #")[0].strip()]
    assert all(argv[0] == "tuitune" for argv in commands), commands
    return [argv[1:] for argv in commands]


def test_the_export_block_parses_and_shows_onnx_and_the_hub() -> None:
    """Parsed only (each needs a finished run; tests/engine/test_export_ship.py runs them for real)."""
    lines = export_block(README.read_text(encoding="utf-8"))
    for argv in lines:
        assert_parses(argv)
    exports = [argv for argv in lines if argv[0] == "export"]
    assert any("--onnx" in argv for argv in exports), "the README's export block has no --onnx line"
    assert any("--push-to-hub" in argv for argv in exports), "the README's export block has no --push-to-hub line"


def alternatives(comment: str) -> list[list[str]]:
    """The `tuitune ...` commands a comment offers after `or:` / `also:` (optional flags in [] unwrapped)."""
    found = re.findall(r"(?:or|also): (tuitune [^;)]*)", comment)
    return [shlex.split(cmd.replace("[", "").replace("]", ""))[1:] for cmd in found]


def assert_parses(argv: list[str]) -> None:
    try:
        build_parser().parse_args(argv)
    except SystemExit as e:  # argparse refuses an unknown subcommand or flag with exit 2
        pytest.fail(f"README Use block: `tuitune {' '.join(argv)}` is refused by the parser (exit {e.code})")


@contextmanager
def ceiling(seconds: int) -> Iterator[None]:
    def expire(signum: int, frame: object) -> None:
        raise TimeoutError(f"the README's Use block took over {seconds} s")

    before = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, before)


class HeadlessScreens:
    """Stands in for `tuitune.ui.launch._run`: the app runs under Textual's `run_test` (no terminal), `look` checks
    what it shows, and the app closes; the command's exit code is then what `_run` would have returned."""

    def __init__(self) -> None:
        self.look: Callable[[object], None] = lambda app: None
        self.shown: list[str] = []

    def __call__(self, app) -> int:
        async def drive() -> None:
            async with app.run_test(size=(140, 45)) as pilot:
                await pilot.pause(0.3)
                self.shown.append(type(app.screen).__name__)
                self.look(app)
                app.exit()

        asyncio.run(drive())
        return 0 if app.return_code is None else int(app.return_code)


def texts(app) -> str:
    """What the screen shows, as text: the SVG screenshot's characters (the same one the snapshot tests compare)."""
    svg = app.export_screenshot()
    svg = re.sub(r"<style>.*?</style>", "", svg, flags=re.S)
    return html.unescape(re.sub(r"<[^>]+>", "", svg)).replace("\xa0", " ")


def test_the_readme_use_block_runs_in_order(tmp_path: Path, monkeypatch, capsys) -> None:
    lines = use_block(README.read_text(encoding="utf-8"))
    assert len(lines) >= 5, "the README's Use block was not found"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "demo.toml").symlink_to(PACKAGE_PROFILES / "demo.toml")
    screens = HeadlessScreens()
    monkeypatch.setattr("tuitune.ui.launch._run", screens)
    ran, skipped = [], []
    with ceiling(CEILING_S):
        for argv, comment in lines:
            assert_parses(argv)
            for alt in alternatives(comment):
                assert_parses(alt)
            line = " ".join(["tuitune", *argv])
            why = SKIP.get(kind(argv))
            if why:
                skipped.append(f"{line}: {why}")
                continue
            screens.look = LOOKS.get(kind(argv), lambda app: None)
            code = main([*argv, *SHORTER.get(kind(argv), [])])
            out = capsys.readouterr()
            assert code == 0, f"`{line}` exited {code}: {out.err[-1500:]}"
            check_output(argv, out.out)
            ran.append(line)
    assert len(ran) >= 5 and skipped, (ran, skipped)


def kind(argv: list[str]) -> str | None:
    """Which way the test takes a line: the subcommand, refined where one subcommand is run two ways."""
    command = argv[0] if argv else None
    if command == "train":
        return "train resume" if "--resume" in argv else "train headless" if "--headless" in argv else "train"
    if command == "runs" and "--compare" in argv:
        return "runs compare"
    return command


SHORTER = {"train headless": SHORT, "train resume": RESUME_SHORT}  # what each training line gets appended

SKIP = {
    "train": "the dashboard starts a detached run process that trains the whole demo (the headless line runs it)",
    "attach": "needs a live run, and none is live once the headless run has ended",
}


def _picker(app) -> None:
    assert "demo" in texts(app), "the picker does not list the demo profile"


def _compare(app) -> None:
    assert "demo" in texts(app), "tuitune runs --compare does not list runs/demo"


def _replay(app) -> None:
    shown = texts(app)  # an ended run replays to its summary, the dashboard beneath it
    assert "Run finished" in shown and "completed 3 epochs" in shown, (
        f"the replay does not show the resumed 3-epoch run:\n{shown}"
    )


LOOKS: dict[str | None, Callable[[object], None]] = {None: _picker, "runs compare": _compare, "replay": _replay}


def check_output(argv: list[str], out: str) -> None:
    """What the text commands must print for the run the block made."""
    if argv[:1] == ["runs"] and "--compare" not in argv:
        assert re.search(r"^demo\s+finished\b", out, re.M), f"tuitune runs does not list runs/demo as finished:\n{out}"
    if argv[:1] == ["layers"]:
        assert "layer4" in out and "head" in out, out
