"""A run's history condensed for a first frame: `events.jsonl` read in time that does not grow with the run.

A day-long run writes a metric reading (`MetricsUpdated`, then the layer table's `LayersMeasured`) every
`log_every` steps: a million readings is a file of half a gigabyte, and decoding every line of it took minutes. The
dashboard keeps each plot series downsampled (`stride_for`: reading `i` stays while `i % stride == 0`, plus the
newest reading), so most readings are never drawn. `Condenser` applies the same rule to the raw lines, in order: it
keeps every other event, the readings some plot will keep, the newest reading, of a run of layer updates only
those a later one does not replace, and of the machine's samples (`SystemSampled`, every few seconds) the newest.
`read_history` decodes what is kept and says what was passed over with `LinesSkipped` markers, so folding its
output gives exactly the state folding every line gives.

The run's recorder keeps a `Condenser` too and writes its state to `history.jsonl` every `SNAPSHOT_READINGS`
readings: opening a run reads that snapshot and only the lines of `events.jsonl` after it. A directory without the
snapshot (an older run) or with one that does not match its `events.jsonl` is read from the start, the same way.
Plain Python: no torch.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tuitune.engine.events import Event, event_from_json
from tuitune.engine.record.files import atomic_write
from tuitune.errors import UserError

CAPACITY = 4096  # points a plot series keeps at most (between CAPACITY / 2 and CAPACITY once it has halved)
SNAPSHOT_READINGS = 4096  # the recorder rewrites history.jsonl after this many readings (and when the run ends)
SNAPSHOT = "history.jsonl"
FORMAT = 1
CHUNK = 1 << 22

READING, LAYERS, MEASURED, SYSTEM, OTHER = "R", "L", "M", "S", "E"
_PREFIX = b'{"type":"'
_KINDS = {b"MetricsUpdated": READING, b"LayersChanged": LAYERS, b"LayersMeasured": MEASURED, b"SystemSampled": SYSTEM}


def stride_for(count: int, capacity: int = CAPACITY) -> int:
    """The smallest power of two `s` with `ceil(count / s) <= capacity`: after `count` readings a series keeps
    the readings whose index (0-based) is a multiple of it. It never shrinks as `count` grows, so a reading
    dropped once is never needed again."""
    s = 1
    while -(-count // s) > capacity:
        s *= 2
    return s


@dataclass(frozen=True)
class LinesSkipped:
    """In a condensed history: `readings` metric readings no plot keeps were passed over here (the series count
    them, so the downsampling stays the same), and `lines` lines of events.jsonl in all (those readings and
    layer updates a later one replaced)."""

    readings: int
    lines: int


Recorded = Event | LinesSkipped  # what a history holds: events, and markers where lines were passed over


def kind_of(line: bytes) -> str:
    """A line's kind from its first bytes (`to_json` writes `type` first): no JSON decoding."""
    if line.startswith(_PREFIX):
        end = line.find(b'"', 9)
        return _KINDS.get(line[9:end], OTHER)
    return OTHER


class Condenser:
    """The raw lines of a history, fed in order, kept as the first frame needs them (see the module docstring).

    Entries are `[kind, index, line_number, raw]`; `index` is the reading's number for readings, else -1. Memory:
    at most `CAPACITY` readings plus the other events (a few per epoch)."""

    def __init__(self) -> None:
        self.entries: list[list] = []
        self.lines = 0  # lines of events.jsonl fed
        self.readings = 0  # readings fed
        self.offset = 0  # bytes of events.jsonl fed
        self._stride = 1
        self._newest: list | None = None  # the newest reading's entry (kept whatever its index)
        self._layers: dict[str, list] = {}  # the layer updates no other event has followed yet, by kind
        self._system: list | None = None  # the newest machine sample (an older one is never shown)
        self._dead = 0

    def feed(self, raw: bytes, kind: str | None = None) -> None:
        kind = kind or kind_of(raw)
        self.lines += 1
        self.offset += len(raw)
        entry = [kind, -1, self.lines, raw]
        if kind == READING:
            self._reading(entry)
            return
        if kind == SYSTEM:  # reads no rows: the layer updates before it stay as they are
            self._kill(self._system)
            self._system = entry
            self.entries.append(entry)
            self._compact()
            return
        if kind in (LAYERS, MEASURED):
            # a full table replaces earlier rows and measures; measures replace earlier measures only
            for old in (LAYERS, MEASURED) if kind == LAYERS else (MEASURED,):
                self._kill(self._layers.pop(old, None))
            self._layers[kind] = entry
        else:
            self._layers.clear()  # this event may read the rows: the updates before it stay
        self.entries.append(entry)

    def _reading(self, entry: list) -> None:
        entry[1] = self.readings
        self.readings += 1
        if self._newest is not None and self._newest[1] % self._stride:
            self._kill(self._newest)  # it was kept for being the newest only
        self._newest = entry
        self.entries.append(entry)
        stride = stride_for(self.readings)
        if stride != self._stride:
            self._stride = stride
            for e in self.entries:
                if e[0] == READING and e[1] % stride and e is not entry:
                    self._kill(e)
        self._compact()

    def _compact(self) -> None:
        if self._dead > max(CAPACITY, len(self.entries) // 2):
            self.entries, self._dead = self.kept(), 0

    def _kill(self, entry: list | None) -> None:
        if entry is not None and entry[0] != "":
            entry[0] = ""
            self._dead += 1

    def kept(self) -> list[list]:
        return [e for e in self.entries if e[0] != ""]

    # ------------------------------------------------------------------------------------------- snapshot
    def dump(self) -> bytes:
        head = {"format": FORMAT, "offset": self.offset, "lines": self.lines, "readings": self.readings}
        out = [json.dumps(head).encode() + b"\n"]
        out += [b"%s %d %d %s" % (k.encode(), i, n, raw.rstrip(b"\n") + b"\n") for k, i, n, raw in self.kept()]
        return b"".join(out)

    @classmethod
    def load(cls, data: bytes) -> Condenser:
        """The state `dump` wrote (ValueError, KeyError: not one)."""
        lines = data.split(b"\n")
        head = json.loads(lines[0])
        if head.get("format") != FORMAT:
            raise ValueError("format")
        c = cls()
        c.offset, c.lines, c.readings = int(head["offset"]), int(head["lines"]), int(head["readings"])
        c._stride = stride_for(c.readings)
        for line in lines[1:]:
            if not line:
                continue
            kind, index, number, raw = line.split(b" ", 3)
            c.entries.append([kind.decode(), int(index), int(number), raw + b"\n"])
        for entry in c.entries:
            if entry[0] == READING:
                c._newest = entry
            elif entry[0] == SYSTEM:
                c._system = entry
            elif entry[0] in (LAYERS, MEASURED):
                c._layers[entry[0]] = entry
            else:
                c._layers.clear()
        return c

    # --------------------------------------------------------------------------------------------- decode
    def pieces(self) -> Iterator[list | LinesSkipped]:
        """What is kept, in order, undecoded (its entries), with `LinesSkipped` where readings or lines were
        passed over: what `events` decodes, and what a run's control socket sends an attaching dashboard."""
        readings = lines = 0  # accounted for so far
        for entry in self.kept():
            kind, index = entry[0], entry[1]
            if kind == READING and index > readings:
                yield LinesSkipped(readings=index - readings, lines=index - readings)
                lines += index - readings
                readings = index
            yield entry
            lines += 1
            readings += kind == READING
        if self.readings > readings or self.lines > lines:
            yield LinesSkipped(readings=self.readings - readings, lines=max(self.lines - lines, 0))

    def events(self, path: Path) -> list[Recorded]:
        """What is kept, decoded, with `LinesSkipped` where readings or lines were passed over."""
        out: list[Recorded] = []
        for piece in self.pieces():
            if isinstance(piece, LinesSkipped):
                out.append(piece)
                continue
            kind, _index, number, raw = piece
            try:
                out.append(event_from_json(raw.decode("utf-8")))
            except (ValueError, KeyError, TypeError) as e:
                if number == self.lines and not raw.endswith(b"\n"):  # a torn last line (a run killed mid-write)
                    out.append(LinesSkipped(readings=int(kind == READING), lines=1))
                    continue
                raise UserError(f"{path}: line {number}: not a tuitune event ({e})") from None
        return out


def _lines(path: Path, start: int) -> Iterator[bytes]:
    """The lines of `path` from byte `start`, each with its newline (a last one without: a torn or live line)."""
    with open(path, "rb") as f:
        f.seek(start)
        rest = b""
        while chunk := f.read(CHUNK):
            chunk = rest + chunk
            cut = chunk.rfind(b"\n") + 1
            rest = chunk[cut:]
            yield from chunk[:cut].splitlines(keepends=True)
        if rest:
            yield rest


def _events_path(run_dir: Path) -> Path:
    path = Path(run_dir)
    path = path / "events.jsonl" if path.is_dir() else path
    if not path.exists():
        raise UserError(f"{path}: no events.jsonl here (is this a tuitune run directory?)")
    return path


def load_snapshot(events_path: Path) -> Condenser:
    """The recorder's snapshot beside `events_path`, when it matches that file (it ends on a line boundary
    inside it); else an empty condenser, and the whole file is read."""
    snap = events_path.with_name(SNAPSHOT)
    try:
        c = Condenser.load(snap.read_bytes())
        size = events_path.stat().st_size
        if c.offset > size:
            raise ValueError("past the end")
        if c.offset:
            with open(events_path, "rb") as f:
                f.seek(c.offset - 1)
                if f.read(1) != b"\n":
                    raise ValueError("not at a line end")
        return c
    except (OSError, ValueError, KeyError, IndexError):
        return Condenser()


def condense(run_dir: Path) -> Condenser:
    """The condensed history of a run directory (or its events.jsonl): its snapshot, then the lines after it."""
    path = _events_path(run_dir)
    c = load_snapshot(path)
    for line in _lines(path, c.offset):
        c.feed(line)
    return c


def condense_lines(run_dir: Path, lines: int) -> Condenser:
    """The condensed history of the first `lines` lines of a live run's events.jsonl (those it had written when a
    viewer attached; the recorder may be writing more): its snapshot, then the lines after it up to `lines`. A
    snapshot written since may already hold more (`c.lines > lines`): the caller counts those as history too."""
    path = _events_path(run_dir)
    c = load_snapshot(path)
    if c.lines < lines:
        for line in _lines(path, c.offset):
            if not line.endswith(b"\n"):
                break  # a line still being written: not one of the `lines`
            c.feed(line)
            if c.lines >= lines:
                break
    return c


def event_lines(run_dir: Path) -> Iterator[bytes]:
    """The raw lines a reader of the events that are not readings needs, in order, undecoded: the snapshot's kept
    lines (every such event, a bounded number of readings), then every line after it; the whole file without a
    matching snapshot. `tuitune runs` reads a run's phase, epoch and best this way in time that does not grow with
    the run (UserError: no events.jsonl)."""
    path = _events_path(run_dir)
    c = load_snapshot(path)
    for entry in c.kept():
        yield entry[3]
    with open(path, "rb") as f:  # the buffered reader's own line iteration: the fastest way through an old file
        f.seek(c.offset)
        yield from f


def read_history(run_dir: Path) -> list[Recorded]:
    """A recorded run for a first frame: `fold(read_history(d)) == fold(read_events(d))`, in time and memory
    bounded by the plots' capacity and the number of events that are not readings."""
    path = _events_path(run_dir)
    return condense(path).events(path)


def write_snapshot(run_dir: Path, c: Condenser) -> None:
    """`history.jsonl`, atomically (a reader never sees half of one; a failed write leaves the older one and no
    temp file: `WriteFailed`)."""
    data = c.dump()
    atomic_write(Path(run_dir) / SNAPSHOT, lambda tmp: tmp.write_bytes(data))
