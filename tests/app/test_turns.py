"""Script runs take turns: first come first served, heads before remainders, a stuck run never stops the room."""

from __future__ import annotations

import threading
import time

import pytest

from prunekit.app.turns import HEAD, TAIL, Turns
from tests.helpers import wait_until


class Room:
    """Threads that each take a turn, record when they hold it, and wait for a go to give it back."""

    def __init__(self, turns: Turns) -> None:
        self.turns = turns
        self.order: list[str] = []
        self.lock = threading.Lock()
        self.go: dict[str, threading.Event] = {}
        self.threads: list[threading.Thread] = []

    def run(self, name: str, head_then_tail: bool = False) -> None:
        self.go[name] = threading.Event()
        self.go[name + "/tail"] = threading.Event()

        def body() -> None:
            with self.turns.turn():
                self._record(name)
                self.go[name].wait(60)
                if head_then_tail:
                    self.turns.head_done()
                    self._record(name + "/tail")
                    self.go[name + "/tail"].wait(60)

        before = self.turns.waiting()
        t = threading.Thread(target=body, daemon=True)
        t.start()
        self.threads.append(t)
        wait_until(lambda: self.turns.waiting() > before or name in self.order)  # in line, in this order

    def _record(self, name: str) -> None:
        with self.lock:
            self.order.append(name)

    def release(self, name: str) -> None:
        self.go[name].set()

    def join(self) -> None:
        for t in self.threads:
            t.join(60)
            assert not t.is_alive()


def test_runs_hold_turns_one_at_a_time_in_the_order_they_asked():
    room = Room(Turns(slots=1))
    for name in "abcd":
        room.run(name)
    assert room.order == ["a"]  # b, c, d wait
    for name in "abcd":
        room.release(name)
    room.join()
    assert room.order == ["a", "b", "c", "d"]
    assert room.turns.waited_out == 0


def test_every_waiting_head_goes_before_a_remainder():
    turns = Turns(slots=1)
    room = Room(turns)
    room.run("a", head_then_tail=True)
    room.run("b", head_then_tail=True)  # waits behind a's head
    room.release("a")  # a's head is done: a's remainder waits behind b's head
    wait_until(lambda: "b" in room.order)
    room.run("c")  # a head that came after a's remainder queued still goes first
    room.release("b")
    wait_until(lambda: "c" in room.order)
    room.release("c")
    wait_until(lambda: "a/tail" in room.order)
    room.release("a/tail")
    wait_until(lambda: "b/tail" in room.order)
    room.release("b/tail")
    room.join()
    assert room.order == ["a", "b", "c", "a/tail", "b/tail"]


def test_a_run_that_steps_aside_lets_the_next_one_in_and_comes_back():
    turns = Turns(slots=1)
    stepped, back = threading.Event(), threading.Event()
    finish = threading.Event()

    def loader() -> None:
        with turns.turn():
            with turns.aside():
                assert turns.holding() is None
                stepped.set()
                finish.wait(60)
            assert turns.holding() == HEAD
            back.set()

    t = threading.Thread(target=loader, daemon=True)
    t.start()
    stepped.wait(60)
    with turns.turn():  # the turn is free while the loader waits aside
        assert turns.holding() == HEAD
        finish.set()
        time.sleep(0.05)
        assert not back.is_set()  # it waits for this turn to end
    t.join(60)
    assert back.is_set()


def test_a_stuck_run_slows_the_room_but_never_stops_it():
    turns = Turns(slots=1, wait_s=0.1)
    stuck, release = threading.Event(), threading.Event()

    def hog() -> None:
        with turns.turn():
            stuck.set()
            release.wait(60)

    t = threading.Thread(target=hog, daemon=True)
    t.start()
    stuck.wait(60)
    with turns.turn():  # waits 0.1 s, then goes on without a turn
        assert turns.holding() is None
        turns.head_done()  # nothing to hand over
    assert turns.waited_out == 1
    release.set()
    t.join(60)
    # the hog's turn went back: exactly one slot is free, not two
    room = Room(turns)
    room.run("a")
    room.run("b")
    assert room.order == ["a"]
    room.release("a")
    room.release("b")
    room.join()


def test_nested_turns_and_a_remainder_outside_a_turn_are_no_ops():
    turns = Turns(slots=1)
    turns.head_done()  # a fragment rerun holds no turn
    with turns.turn(), turns.turn():
        assert turns.holding() == HEAD
        turns.head_done()
        assert turns.holding() == TAIL
    assert turns.holding() is None
    assert turns.waiting() == 0


def test_slots_must_be_positive():
    with pytest.raises(ValueError, match="slots must be at least 1, got 0"):
        Turns(slots=0)


def test_a_part_refreshing_itself_waits_behind_every_head():
    turns = Turns(slots=1)
    order, go = [], threading.Event()
    with turns.turn():

        def run(name: str, line: int) -> threading.Thread:
            def body() -> None:
                with turns.turn(line):
                    order.append(name)
                    go.wait(60)

            t = threading.Thread(target=body, daemon=True)
            before = turns.waiting()
            t.start()
            wait_until(lambda: turns.waiting() > before)
            return t

        threads = [run("refresh", TAIL), run("page", HEAD)]
    go.set()
    for t in threads:
        t.join(60)
    assert order == ["page", "refresh"]
