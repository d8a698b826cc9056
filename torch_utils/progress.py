"""The one progress display of the tools: a tqdm bar on a terminal, plain lines in a log.

On a terminal `progress(...)` is a tqdm bar. Written anywhere else (a cluster log, `> log.txt`, a pipe) a bar is a
carriage-return update for every step, thousands of them per bar; there it is a `PlainProgress` that prints one line
when a new 10% step is reached (at most one per MIN_GAP_S) or `interval_s` has passed since the last line, and one at
the end, so a loop of a second or two is one line:
    rendering scenes: 800/8000 img (10%), 412.3 img/s, ETA 17s
Every loop that shows progress goes through `progress` (tests/torch_utils/test_progress.py checks that no other
module imports tqdm).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TextIO

import tqdm

from torch_utils.misc import format_time

INTERVAL_S = 60.0  # a plain line at least this often while a step of 10% takes longer
MIN_GAP_S = 2.0  # 10% steps closer than this to the previous line are not printed (the end always is)


def is_terminal(stream: Any) -> bool:
    """True when stream is an interactive terminal (where a redrawn bar is readable)."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class PlainProgress:
    """tqdm's interface (iterate, update, set_postfix, set_description, close, `with`) writing plain lines.

    A line when a new 10% step of `total` is reached and MIN_GAP_S has passed since the last line, when `interval_s`
    has passed, and when the count reaches total (or at `close`, if the count moved): at most 11 lines plus one per
    interval, never a carriage return. Without a total (an iterable of unknown length) only the interval and the end
    print. `clock` is injectable for tests.
    """

    def __init__(self, iterable: Iterable | None = None, total: float | None = None, desc: str = "",
                 unit: str = "it", unit_scale: bool = False, leave: bool = True, file: TextIO | None = None,
                 interval_s: float = INTERVAL_S, clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.iterable, self.total, self.desc, self.unit, self.unit_scale = iterable, total, desc, unit, unit_scale
        self.leave, self.file, self.interval_s, self.clock = leave, file, interval_s, clock
        self.n, self.postfix, self.closed = 0, "", False
        self._start = self._last_time = clock()
        self._last_n, self._last_step = 0, 0

    def __iter__(self) -> Iterator:
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __len__(self) -> int:
        return int(self.total or 0)

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, n: float = 1) -> None:
        """Count n more units; a line at a new 10% step (MIN_GAP_S after the last), after interval_s, at the end."""
        self.n += n
        now = self.clock()
        since = now - self._last_time
        step = int(10 * self.n // self.total) if self.total else -1
        finished = bool(self.total) and self.n >= self.total and self.n != self._last_n
        if finished or since >= self.interval_s or (step > self._last_step and since >= MIN_GAP_S):
            self._last_step = max(step, self._last_step)
            self._print(self.line(now - self._start))

    def set_postfix(self, ordered_dict: dict | None = None, refresh: bool = True, **kwargs: Any) -> None:
        """Shown at the end of the next line: `k=v, ...` (tqdm's set_postfix)."""
        del refresh  # a plain line is only written at the next step
        items = dict(ordered_dict or {}, **kwargs)
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        del refresh
        self.postfix = s

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        del refresh
        self.desc = desc or ""

    def close(self) -> None:
        """The last line (if the count moved since the previous one); later calls do nothing."""
        if self.closed:
            return
        self.closed = True
        if self.n != self._last_n and self.leave:
            self._print(self.line(self.clock() - self._start))

    def line(self, elapsed_s: float) -> str:
        """`desc: n/total unit (P%), R unit/s, ETA T, postfix` (parts that are unknown are left out)."""
        count = self._amount(self.n) + (f"/{self._amount(self.total)}" if self.total else "")
        parts = [count if self.unit_scale else f"{count} {self.unit}"]
        if self.total:
            parts[0] += f" ({100 * self.n / self.total:.0f}%)"
        if self.desc:
            parts[0] = f"{self.desc}: {parts[0]}"
        if elapsed_s > 0 and self.n > 0:
            rate = self.n / elapsed_s
            parts.append(f"{self._amount(rate)}/s" if self.unit_scale else f"{rate:.1f} {self.unit}/s")
            if self.total:
                remaining = max(self.total - self.n, 0) / rate
                parts.append(f"ETA {format_time(remaining)}" if remaining > 0 else f"done in {format_time(elapsed_s)}")
        if self.postfix:
            parts.append(self.postfix)
        return ", ".join(parts)

    def _amount(self, value: float) -> str:
        """A count: 1234 as is; with unit_scale, SI-scaled with the unit (1.23MB), as tqdm shows it."""
        return tqdm.tqdm.format_sizeof(value, self.unit) if self.unit_scale else f"{value:g}"

    def _print(self, text: str) -> None:
        self._last_n, self._last_time = self.n, self.clock()
        stream = self.file if self.file is not None else sys.stderr
        if stream is not sys.stdout and sys.stdout is not None:
            sys.stdout.flush()  # keep the order of stdout lines and these when both go to one log
        stream.write(text + "\n")
        stream.flush()


def progress(iterable: Iterable | None = None, *, total: float | None = None, desc: str = "", unit: str = "it",
             unit_scale: bool = False, leave: bool = True, disable: bool = False, file: TextIO | None = None,
             interval_s: float = INTERVAL_S) -> Any:  # fmt: skip
    """A progress display over iterable (or for manual `update`s up to total), written to file (default stderr).

    tqdm on a terminal; `PlainProgress` lines otherwise; with disable, a silent tqdm (iterating, `update` a no-op).
    """
    stream = file if file is not None else sys.stderr
    if disable or is_terminal(stream):
        return tqdm.tqdm(iterable, total=total, desc=desc, unit=unit, unit_scale=unit_scale, leave=leave,
                         disable=disable, file=stream)  # fmt: skip
    return PlainProgress(iterable, total=total, desc=desc, unit=unit, unit_scale=unit_scale, leave=leave,
                         file=stream, interval_s=interval_s)  # fmt: skip


def trange(n: int, **kwargs: Any) -> Any:
    """progress(range(n), **kwargs)."""
    return progress(range(n), **kwargs)
