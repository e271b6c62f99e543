"""A plot series of bounded size that folds in amortised constant time, for histories of any length.

Appending to a tuple copies it, so a series kept as a tuple makes folding a long history quadratic. `Downsampled`
keeps the points whose index (the reading's number) is a multiple of `stride_for(count)` (a power of two that
doubles each time the series would pass `CAPACITY`), plus the newest point: deterministic, so a snapshot or a
condensed history (`tuitune.engine.record.history`) gives the same points as folding every event.

It is a value: `append` returns a new series and leaves the old one as it was. The points live in lists shared
between versions, appended in place while the appending version is the longest one (the reducer's case), copied
when an older version is appended to; `reduce` stays a pure function.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, overload

from tuitune.engine.record.history import stride_for

Point = tuple[float, float]  # (x in epochs, y)


class Downsampled(Sequence[Point]):
    __slots__ = ("_index", "_n", "_points", "last", "last_index", "stride")

    def __init__(
        self,
        points: list[Point] | None = None,
        index: list[int] | None = None,
        n: int = 0,
        stride: int = 1,
        last: Point | None = None,
        last_index: int = -1,
    ) -> None:
        self._points = points if points is not None else []
        self._index = index if index is not None else []
        self._n = n  # this version's share of the lists
        self.stride = stride
        self.last = last  # the newest point, drawn even when its index is off the stride
        self.last_index = last_index

    def append(self, point: Point, index: int | None = None) -> Downsampled:
        """This series with `point` added as reading `index` (default: the next after the newest)."""
        index = self.last_index + 1 if index is None else index
        stride = stride_for(index + 1)
        points, idx, n = self._points, self._index, self._n
        if stride != self.stride:  # halve: keep the points on the new stride (a fresh list: O(CAPACITY), rarely)
            keep = [i for i in range(n) if idx[i] % stride == 0]
            points, idx, n = [points[i] for i in keep], [idx[i] for i in keep], len(keep)
        if index % stride == 0:
            if n != len(points) or n == 0:  # an older version, or the shared empty one: never append to those
                points, idx = points[:n], idx[:n]
            points.append(point)
            idx.append(index)
            n += 1
        return Downsampled(points, idx, n, stride, point, index)

    def _tail(self) -> bool:
        """Whether the newest point is drawn after the kept ones (its index is off the stride)."""
        return self.last is not None and not (self._n and self._index[self._n - 1] == self.last_index)

    def __len__(self) -> int:
        return self._n + self._tail()

    @overload
    def __getitem__(self, i: int) -> Point: ...
    @overload
    def __getitem__(self, i: slice) -> Sequence[Point]: ...
    def __getitem__(self, i: Any) -> Any:
        return tuple(self)[i]

    def __iter__(self) -> Iterator[Point]:
        yield from self._points[: self._n]
        if self._tail():
            assert self.last is not None
            yield self.last

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Downsampled):
            return tuple(self) == tuple(other) and self.stride == other.stride and self.last_index == other.last_index
        if isinstance(other, tuple):
            return tuple(self) == other
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # equal to a tuple but mutable inside: unhashable, as a list is

    def __repr__(self) -> str:
        return f"Downsampled({len(self)} points, stride {self.stride}, last index {self.last_index})"


EMPTY = Downsampled()
