"""Progress in logs (lavila.progress): tqdm on a terminal, plain lines at a fixed interval under a pipe."""

from __future__ import annotations

import io

from lavila.progress import LineProgress, parse_interval, progress


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_non_terminal_gets_whole_lines_at_the_interval_and_one_at_the_end():
    out, clock = io.StringIO(), Clock()
    bar = LineProgress(total=100, desc="epoch 1/2", unit="step", file=out, interval="30", clock=clock)
    for _ in range(100):
        clock.t += 1.0  # 100 s in all: a line at 30, 60, 90 s and the final one
        bar.update(1)
        bar.set_postfix(loss="0.5000", refresh=False)
    bar.close()
    bar.close()  # idempotent
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue() and len(lines) == 4
    assert lines[0] == "epoch 1/2: 30/100 steps (30.0%), 1.00 steps/s, elapsed 0:00:30, ETA 0:01:10, loss=0.5000"
    assert lines[-1].startswith("epoch 1/2: 100/100 steps (100.0%)")


def test_interval_in_percent_and_zero_and_a_bad_value(capsys):
    out = io.StringIO()
    bar = LineProgress(total=50, desc="narrate", unit="clip", file=out, interval="10%", clock=Clock())
    for _ in range(50):
        bar.update(1)
    bar.close()
    assert len(out.getvalue().splitlines()) == 10  # 10 %, 20 %, ... 100 % (the last one is not repeated)
    out = io.StringIO()
    with LineProgress(range(3), desc="texts", file=out, interval="0", clock=Clock()) as bar:
        assert list(bar) == [0, 1, 2]
    assert len(out.getvalue().splitlines()) == 3
    assert parse_interval("abc") == (30.0, None) and "LAVILA_PROGRESS_INTERVAL" in capsys.readouterr().err
    assert parse_interval("5s") == (5.0, None) and parse_interval(None) == (30.0, None)


def test_progress_picks_tqdm_for_a_terminal_lines_otherwise_and_nothing_when_disabled(monkeypatch):
    monkeypatch.setenv("LAVILA_PROGRESS_INTERVAL", "0")
    piped = io.StringIO()
    bar = progress(total=3, desc="prepare-ego4d", unit="video", file=piped)
    assert isinstance(bar, LineProgress)
    for _ in range(3):
        bar.update(1)
    bar.close()
    assert len(piped.getvalue().splitlines()) == 3 and "\r" not in piped.getvalue()
    tty = Tty()
    bar = progress(total=3, desc="x", file=tty)
    assert not isinstance(bar, LineProgress)  # tqdm
    bar.update(3)
    bar.close()
    assert "\r" in tty.getvalue()
    off = io.StringIO()
    bar = progress(total=3, desc="x", file=off, enabled=False)
    bar.update(3)
    bar.close()
    assert off.getvalue() == ""
