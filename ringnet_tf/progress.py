"""The one progress reporter of long loops (data preparation, synthetic data, the demo, video,
training): a tqdm bar when tqdm is installed and the stream is a terminal, else a plain line every
few seconds; or, with `every` (training's log), a line every `every` units."""
from __future__ import annotations

import sys
import time
from typing import TextIO

# Seconds between plain progress lines (no tqdm, or output not to a terminal).
LINE_EVERY = 5.0


class Progress:
    """Counts `total` units of work; `write` prints a message without breaking the bar.

    Two ways to report. By default a tqdm bar, or without one a line every LINE_EVERY seconds
    (`desc: done/total unit (rate/s)`, the rate since the start). With `every`, a line each time
    the count reaches a multiple of `every` or `total`, never a bar (the lines are a log, kept
    in files): `desc done/total  note  rate rate_unit/s`, e.g. `step 40/200  loss 0.31  12.5 img/s`,
    the rate since the previous line, counted in `rate_unit`s (`rate_per_unit` of them a unit).
    `done` starts the count (a resumed run); the clock starts at construction.
    """

    def __init__(self, total: int, desc: str, enabled: bool = True, stream: TextIO | None = None,
                 unit: str = "img", every: int | None = None, done: int = 0, rate_per_unit: float = 1.0,
                 rate_unit: str | None = None):
        self.total, self.done, self.enabled, self.desc, self.unit = total, done, enabled, desc, unit
        self.every, self.rate_per_unit, self.rate_unit = every, rate_per_unit, rate_unit or unit
        self.stream = stream or sys.stderr
        self.start = self.last = time.monotonic()
        self.initial = self.last_done = done
        self.bar = None
        if enabled and total and every is None and getattr(self.stream, "isatty", lambda: False)():
            try:
                from tqdm import tqdm
                self.bar = tqdm(total=total, unit=unit, desc=desc, file=self.stream, dynamic_ncols=True,
                                initial=done)
            except ImportError:
                pass

    def write(self, message: str, file: TextIO | None = None) -> None:
        if self.bar is not None:
            self.bar.write(message, file=file or self.stream)
        else:
            print(message, file=file or self.stream, flush=True)

    def update(self, n: int = 1, note: str = "") -> float | None:
        """Counts `n` more units. Returns the rate it printed (`rate_unit`s per second; with
        `every`, since the previous line), None when it printed nothing. `note`: `every` lines'
        middle part."""
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            return None
        now = time.monotonic()
        if not self.enabled:
            return None
        if self.every is not None:
            if self.done % self.every and self.done != self.total:
                return None
            rate = (self.done - self.last_done) * self.rate_per_unit / max(now - self.last, 1e-9)
            line = "  ".join(p for p in (f"{self.desc} {self.done}/{self.total}", note,
                                         f"{rate:.1f} {self.rate_unit}/s") if p)
        elif now - self.last > LINE_EVERY or self.done == self.total:
            rate = (self.done - self.initial) / max(now - self.start, 1e-9)
            line = f"{self.desc}: {self.done}/{self.total} {self.unit} ({rate:.1f}/s)"
        else:
            return None
        self.last, self.last_done = now, self.done
        print(line, file=self.stream, flush=True)
        return rate

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
