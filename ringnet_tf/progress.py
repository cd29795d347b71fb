"""The one progress reporter of long loops (data preparation, synthetic data, the demo, video): a
tqdm bar when tqdm is installed and the stream is a terminal, else a plain line every few seconds."""
from __future__ import annotations

import sys
import time
from typing import TextIO

# Seconds between plain progress lines (no tqdm, or output not to a terminal).
LINE_EVERY = 5.0


class Progress:
    """Counts `total` units of work; `write` prints a message without breaking the bar."""

    def __init__(self, total: int, desc: str, enabled: bool = True, stream: TextIO | None = None,
                 unit: str = "img"):
        self.total, self.done, self.enabled, self.desc, self.unit = total, 0, enabled, desc, unit
        self.stream = stream or sys.stderr
        self.start = self.last = time.monotonic()
        self.bar = None
        if enabled and total and getattr(self.stream, "isatty", lambda: False)():
            try:
                from tqdm import tqdm
                self.bar = tqdm(total=total, unit=unit, desc=desc, file=self.stream, dynamic_ncols=True)
            except ImportError:
                pass

    def write(self, message: str, file: TextIO | None = None) -> None:
        if self.bar is not None:
            self.bar.write(message, file=file or self.stream)
        else:
            print(message, file=file or self.stream, flush=True)

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            return
        now = time.monotonic()
        if self.enabled and (now - self.last > LINE_EVERY or self.done == self.total):
            self.last = now
            rate = self.done / max(now - self.start, 1e-9)
            print(f"{self.desc}: {self.done}/{self.total} {self.unit} ({rate:.1f}/s)", file=self.stream,
                  flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
