"""Progress lines for long metric passes: items done, images/s and ETA, at most every 10% or `interval_s`."""

from __future__ import annotations

import time
from collections.abc import Callable

from torch_utils.misc import format_time


class ProgressPrinter:
    """A MetricContext.progress callback, (done, total) -> prints `name: done/total images, R img/s, ETA T`.

    A pass is a run of calls with the same total and non-decreasing `done` (real features, then generation):
    each new pass restarts the rate and ETA. Prints when a new 10% step is reached or `interval_s` has passed,
    and at the end of a pass. `clock` is injectable for tests (seconds, monotonic).
    """

    def __init__(
        self,
        name: str,
        print_fn: Callable[[str], None] = print,
        interval_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.name, self.print_fn, self.interval_s, self.clock = name, print_fn, interval_s, clock
        self._total = self._done = -1
        self._start = self._last_print = 0.0
        self._decile = self._done_at_start = -1

    def __call__(self, done: int, total: int) -> None:
        now = self.clock()
        if total != self._total or done < self._done:  # a new pass
            self._total, self._start, self._last_print, self._decile = total, now, now, -1
            self._done_at_start = done  # the first report comes after the first batch: rate counts from there
        self._done = done
        decile = 10 * done // max(total, 1)
        if decile == self._decile and now - self._last_print < self.interval_s and done < total:
            return
        self._decile, self._last_print = decile, now
        self.print_fn(self.line(done, total, done - self._done_at_start, now - self._start))

    def line(self, done: int, total: int, done_in_window: int, elapsed_s: float) -> str:
        """`name: done/total images, R img/s, ETA T`; R = images done in the last `elapsed_s` seconds / elapsed_s."""
        text = f"  {self.name}: {done}/{total} images"
        if elapsed_s > 0 and done_in_window > 0:
            rate = done_in_window / elapsed_s
            text += f", {rate:.1f} img/s, ETA {format_time(round((total - done) / rate))}"
        return text
