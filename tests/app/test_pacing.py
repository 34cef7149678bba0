"""Poll pacing with an injected clock: one session polls at its own pace, a full room slower, so that the
room's polls together stay near the rate the server can serve."""

from prunekit.app.pacing import BACKGROUND_POLLS_PER_S, Pacing


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_one_session_polls_at_its_own_pace_and_a_room_of_thirty_slower():
    clock = Clock()
    pacing = Pacing(polls_per_s=40.0, window_s=30.0, clock=clock)
    pacing.seen("a")
    assert pacing.every(0.25) == 0.25
    for i in range(30):
        pacing.seen(f"s{i}")
    assert pacing.active() == 31 and pacing.every(0.25) == 31 / 40
    assert pacing.every(2.0) == 2.0  # a part that polls slowly anyway is left alone
    assert 31 / pacing.every(0.25) == 40.0  # the room's polls together


def test_sessions_that_left_stop_counting_after_the_window():
    clock = Clock()
    pacing = Pacing(polls_per_s=10.0, window_s=30.0, clock=clock)
    for i in range(20):
        pacing.seen(f"s{i}")
    clock.now += 20.0
    pacing.seen("still here")
    assert pacing.active() == 21
    clock.now += 15.0  # the twenty were last seen 35 s ago
    assert pacing.active() == 1 and pacing.every(0.25) == 0.25


def test_a_background_part_polls_at_its_own_smaller_share_of_the_room():
    pacing = Pacing(polls_per_s=60, clock=lambda: 0.0)
    for i in range(100):
        pacing.seen(f"s{i}")
    assert pacing.every(2.0, BACKGROUND_POLLS_PER_S) == 100 / BACKGROUND_POLLS_PER_S == 10.0
    assert pacing.every(2.0) == 2.0  # at the room's whole rate a 2-s part would be left alone
