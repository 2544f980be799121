"""Pooled actors: pykka's contract on a shared pool of threads."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any, ClassVar

import pykka
import pytest

from recsync.actors.dispatch import Dispatcher, PooledActor


@pytest.fixture
def pool() -> Dispatcher:
    return Dispatcher("test-pool", workers=2, idle_timeout=0.5)


def actor_class(dispatcher: Dispatcher) -> type[PooledActor]:
    class Counter(PooledActor):
        dispatcher: ClassVar[Dispatcher]

        def __init__(self, peer: pykka.ActorRef[Any] | None = None) -> None:
            super().__init__()
            self.seen: list[int] = []
            self.inside = 0
            self.overlaps = 0
            self.threads: set[str] = set()
            self.peer = peer
            self.started = threading.Event()

        def on_start(self) -> None:
            self.started.set()

        def on_receive(self, message: Any) -> Any:
            self.inside += 1
            self.overlaps += self.inside > 1
            self.threads.add(threading.current_thread().name)
            if message == "ask-peer":
                assert self.peer is not None
                value = self.peer.ask("value", timeout=10)
                self.inside -= 1
                return value
            if message == "value":
                self.inside -= 1
                return 42
            if message == "boom":
                self.inside -= 1
                raise ValueError("boom")
            self.seen.append(message)
            self.inside -= 1
            return None

    Counter.dispatcher = dispatcher
    return Counter


@pytest.fixture
def counters(pool: Dispatcher) -> Iterator[list[pykka.ActorRef[Any]]]:
    cls = actor_class(pool)
    refs = [cls.start() for _ in range(50)]
    yield refs
    for ref in refs:
        if ref.is_alive():
            ref.stop()


def test_fifty_actors_on_two_workers_each_get_every_message_in_order_one_at_a_time(
        counters: list[pykka.ActorRef[Any]], pool: Dispatcher) -> None:
    for i in range(200):
        for ref in counters:
            ref.tell(i)
    for ref in counters:
        assert ref.ask("value", timeout=10) == 42  # after every tell, in order
        seen = ref.proxy().seen.get(timeout=10)
        assert seen == list(range(200))
        assert ref.proxy().overlaps.get(timeout=10) == 0
    assert pool.stats()["threads"] <= 2


def test_an_ask_between_pooled_actors_on_a_one_worker_pool_does_not_deadlock() -> None:
    one = Dispatcher("one-worker", workers=1, idle_timeout=0.5)
    cls = actor_class(one)
    peer = cls.start()
    asker = cls.start(peer)
    try:
        # the asker's worker waits on the peer, which needs a worker too: a stand-in runs it
        assert asker.ask("ask-peer", timeout=10) == 42
    finally:
        asker.stop()
        peer.stop()


def test_a_failing_tell_stops_the_actor_an_ask_failure_returns_to_the_caller(
        pool: Dispatcher) -> None:
    cls = actor_class(pool)
    ref = cls.start()
    with pytest.raises(ValueError, match="boom"):
        ref.ask("boom", timeout=10)
    assert ref.is_alive()  # an ask's error goes to the caller
    ref.tell("boom")  # a tell's error stops the actor, as with pykka's threads
    stopped = ref.actor_stopped  # type: ignore[attr-defined]
    assert stopped.wait(10)
    with pytest.raises(pykka.ActorDeadError):
        ref.ask("value", timeout=10)


def test_stop_runs_on_stop_and_later_asks_are_refused(pool: Dispatcher) -> None:
    cls = actor_class(pool)
    ref = cls.start()
    assert ref.proxy().started.get(timeout=10).wait(10)
    ref.stop(timeout=10)
    assert not ref.is_alive()
    with pytest.raises(pykka.ActorDeadError):
        ref.tell(1)
