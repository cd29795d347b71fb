"""ringnet_tf.progress.Progress, the one progress reporter: timed lines (no terminal) and the
every-N-units log training prints."""
from __future__ import annotations

import io

import pytest

from ringnet_tf import progress as P


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(P.time, "monotonic", c)
    return c


def test_every_mode_prints_a_line_at_each_multiple_and_the_end(clock):
    out = io.StringIO()
    bar = P.Progress(7, "step", stream=out, every=3, done=1, unit="step", rate_per_unit=12, rate_unit="img")
    rates = []
    for step in range(2, 8):
        clock.now += 0.5
        rates.append(bar.update(1, f"loss {step / 10:.4g}"))
    # Lines at 3, 6 and the total (7); the rate is images per second since the previous line.
    assert out.getvalue().splitlines() == ["step 3/7  loss 0.3  24.0 img/s", "step 6/7  loss 0.6  24.0 img/s",
                                           "step 7/7  loss 0.7  24.0 img/s"]
    assert rates == [None, 24.0, None, None, 24.0, 24.0]


def test_every_mode_without_a_note_and_disabled(clock):
    out = io.StringIO()
    bar = P.Progress(4, "step", stream=out, every=2)
    clock.now += 2.0
    assert bar.update(2) == 1.0
    assert out.getvalue() == "step 2/4  1.0 img/s\n"
    quiet = P.Progress(4, "step", enabled=False, stream=out, every=2)
    assert quiet.update(2) is None and out.getvalue() == "step 2/4  1.0 img/s\n"


def test_timed_lines_when_not_a_terminal(clock):
    out = io.StringIO()
    bar = P.Progress(10, "synthetic", stream=out)
    clock.now += 1.0
    assert bar.update(2) is None and out.getvalue() == ""  # within LINE_EVERY seconds
    clock.now += P.LINE_EVERY
    bar.update(2)
    clock.now += 1.0
    bar.update(6)  # the end is always reported
    rate_4, rate_10 = 4 / (1.0 + P.LINE_EVERY), 10 / (2.0 + P.LINE_EVERY)
    assert out.getvalue().splitlines() == [f"synthetic: 4/10 img ({rate_4:.1f}/s)",
                                           f"synthetic: 10/10 img ({rate_10:.1f}/s)"]
