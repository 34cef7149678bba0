"""Progress bars: tqdm on a terminal, plain lines (no carriage returns) in a log, new bars for new runs."""

import io

from prunekit.progress import Bar


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_log_gets_plain_lines_with_rate_and_eta_at_most_every_interval():
    out, clock = io.StringIO(), Clock()
    bar = Bar("evaluating", file=out, every_s=10.0, clock=clock)
    for done in range(1, 11):
        clock.now += 2.0  # a point every 2 s: 20 s in all
        bar(done, 10)
    text = out.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    # the first point, one after 10 s more, and the last: not one line per point
    assert len(lines) == 3, lines
    assert lines[0].startswith("evaluating:") and "1/10" in lines[0]
    assert "6/10" in lines[1] and "10/10" in lines[-1]
    # the bar starts at the first report, 18 s before the last: the rate and elapsed time as tqdm writes them
    assert "1.80s/point" in lines[-1] and "00:18" in lines[-1]
    assert "#" in lines[-1] and "\u2588" not in text  # an ASCII bar in a log


def test_a_new_total_or_a_restart_starts_a_new_bar():
    out, clock = io.StringIO(), Clock()
    bar = Bar("evaluating", file=out, clock=clock)
    bar(1, 4)
    bar(4, 4)
    bar(1, 2)  # the next run (a plan's measurement after its scan)
    bar(2, 2)
    lines = out.getvalue().splitlines()
    assert [line.split("|")[-1].split()[0] for line in lines] == ["1/4", "4/4", "1/2", "2/2"]


def test_a_terminal_gets_a_tqdm_bar_that_closes_when_done():
    out = Terminal()
    bar = Bar("evaluating", file=out)
    bar(3, 6)
    assert bar._bar is not None and bar._bar.n == 3
    bar.update(6, 6, "estimate 91.00%")
    assert bar._bar is None
    text = out.getvalue()
    assert "\r" in text and "6/6" in text and "estimate 91.00%" in text
