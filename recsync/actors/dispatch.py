"""Actors on a shared pool of threads, as Akka's dispatchers run them.

pykka's ThreadingActor is one OS thread per actor: 7 actors per pipeline is 7,000 threads
at 1,000 pipelines, most of them asleep. A :class:`PooledActor` keeps pykka's contract
(an inbox, one message at a time, ``on_start``/``on_stop``/``on_failure``, ``tell``,
``ask`` and proxies, ActorRegistry) but has no thread of its own: when a message arrives
at an idle actor, the actor is queued on its :class:`Dispatcher`, and a worker thread of
the pool runs up to ``throughput`` of its messages, then queues it again if more wait.
An actor is never run by two workers at once, so its handlers need no locks.

Actors may block (a connector waits on a database or an HTTP call, an actor asks
another). A worker that waits on a future of another actor tells the pool, which starts a
stand-in worker so the pool never runs out of runnable threads while some wait (the
"managed blocking" of a fork-join pool); stand-ins retire when idle. So an ask between two
pooled actors cannot deadlock the pool. Long blocking I/O goes on its own dispatcher
(connectors use ``IO``), so it never starves the actors that only compute.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import sys
import threading
from collections.abc import Iterator
from typing import Any, ClassVar

import pykka
from pykka import ThreadingFuture, messages
from pykka._envelope import Envelope

log = logging.getLogger(__name__)

__all__ = ["CPU", "IO", "Dispatcher", "PooledActor"]


_current = threading.local()  # .dispatcher: the pool whose worker this thread is


class Dispatcher:
    """A pool of worker threads running the actors that have messages waiting.

    ``workers`` threads run at most at once, outside blocking waits; while workers wait on
    futures, stand-ins are started (up to ``max_threads`` threads in all).
    """

    def __init__(self, name: str, workers: int, max_threads: int = 1024,
                 idle_timeout: float = 5.0) -> None:
        self.name = name
        self.workers = workers
        self.max_threads = max_threads
        self.idle_timeout = idle_timeout
        self._ready: collections.deque[PooledActor] = collections.deque()
        self._cond = threading.Condition(threading.Lock())
        self._threads = 0  # alive worker threads
        self._idle = 0  # of them waiting for work
        self._blocked = 0  # of them waiting on a future
        self._counter = 0

    # -- what actors call

    def schedule(self, actor: PooledActor) -> None:
        with self._cond:
            self._ready.append(actor)
            if self._idle:
                self._cond.notify()
            elif self._threads - self._blocked < self.workers:
                self._spawn()

    def in_worker(self) -> bool:
        return getattr(_current, "dispatcher", None) is self

    @contextlib.contextmanager
    def blocking(self) -> Iterator[None]:
        """Around a wait of a worker on something another actor must do."""
        if not self.in_worker():
            yield
            return
        with self._cond:
            self._blocked += 1
            if self._ready and not self._idle and self._threads < self.max_threads:
                self._spawn()
        try:
            yield
        finally:
            with self._cond:
                self._blocked -= 1

    def stats(self) -> dict[str, int]:
        with self._cond:
            return {"threads": self._threads, "idle": self._idle, "blocked": self._blocked,
                    "ready": len(self._ready)}

    # -- the pool

    def _spawn(self) -> None:
        """Start one worker (the caller holds the lock)."""
        self._threads += 1
        self._counter += 1
        thread = threading.Thread(target=self._work, daemon=True,
                                  name=f"{self.name}-{self._counter}")
        thread.start()

    def _work(self) -> None:
        _current.dispatcher = self
        while True:
            with self._cond:
                while not self._ready:
                    # a stand-in, or a worker beyond what runs unblocked: retire when idle
                    surplus = self._threads - self._blocked > self.workers
                    self._idle += 1
                    woke = self._cond.wait(timeout=self.idle_timeout)
                    self._idle -= 1
                    if not self._ready and (surplus or not woke):
                        self._threads -= 1
                        return
                actor = self._ready.popleft()
                if self._ready and self._idle:
                    self._cond.notify()
            try:
                actor._run_slice()
            except BaseException:  # an actor's slice never ends a worker
                log.exception("actor run failed", extra={"actor": str(actor)})


def _default_workers() -> int:
    return max(4, 2 * (os.cpu_count() or 2))


CPU = Dispatcher("actors", workers=_default_workers())
IO = Dispatcher("actors-io", workers=256)  # blocking I/O: grows with the work, idle ones retire


class PooledFuture(ThreadingFuture[Any]):
    """A ThreadingFuture whose ``get`` tells the pool a worker is waiting."""

    def get(self, *, timeout: float | None = None) -> Any:
        dispatcher: Dispatcher | None = getattr(_current, "dispatcher", None)
        if dispatcher is None:
            return super().get(timeout=timeout)
        with dispatcher.blocking():
            return super().get(timeout=timeout)


def _refuse(envelope: Envelope[Any], actor: PooledActor) -> None:
    if envelope.reply_to is None:
        return
    if isinstance(envelope.message, messages._ActorStop):
        envelope.reply_to.set(None)
        return
    error = pykka.ActorDeadError(f"{actor.actor_ref} stopped before handling the message")
    envelope.reply_to.set_exception(exc_info=(pykka.ActorDeadError, error, None))


class _Inbox:
    """pykka's inbox interface over a deque; a put to an idle actor schedules it."""

    def __init__(self) -> None:
        self.items: collections.deque[Envelope[Any]] = collections.deque()
        self.lock = threading.Lock()
        self.actor: PooledActor | None = None
        self.scheduled = True  # until the actor starts: it starts by being scheduled

    def put(self, envelope: Envelope[Any], /) -> None:
        actor = self.actor
        if actor is not None and actor.actor_stopped.is_set():
            _refuse(envelope, actor)  # it passed the sender's is_alive just before the stop
            return
        with self.lock:
            self.items.append(envelope)
            if self.scheduled or actor is None:
                return
            self.scheduled = True
        actor.dispatcher.schedule(actor)

    def get(self) -> Envelope[Any]:
        with self.lock:
            return self.items.popleft()

    def empty(self) -> bool:
        return not self.items


class PooledActor(pykka.Actor):
    """A pykka actor run by a :class:`Dispatcher` instead of a thread of its own."""

    dispatcher: ClassVar[Dispatcher] = CPU
    throughput: ClassVar[int] = 20  # messages per turn before other actors get theirs

    actor_inbox: _Inbox  # type: ignore[assignment]

    @staticmethod
    def _create_actor_inbox() -> Any:
        return _Inbox()

    @staticmethod
    def _create_future() -> pykka.Future[Any]:
        return PooledFuture()

    def _start_actor_loop(self) -> None:
        self._started = False
        self.actor_inbox.actor = self
        self.dispatcher.schedule(self)

    def _run_slice(self) -> None:
        """Run on a worker: start-up first, then up to ``throughput`` messages."""
        if not self._started:
            self._started = True
            self._actor_loop_setup()
        inbox = self.actor_inbox
        for _ in range(self.throughput):
            if self.actor_stopped.is_set():
                self._actor_loop_teardown()
                return
            with inbox.lock:
                if not inbox.items:
                    inbox.scheduled = False
                    return
                envelope = inbox.items.popleft()
            self._handle(envelope)
        if self.actor_stopped.is_set():
            self._actor_loop_teardown()
            return
        with inbox.lock:
            if not inbox.items:
                inbox.scheduled = False
                return
        self.dispatcher.schedule(self)  # more waiting: to the back of the line

    def _handle(self, envelope: Envelope[Any]) -> None:
        """One message, as pykka's ``_actor_loop_running`` handles it."""
        try:
            response = self._handle_receive(envelope.message)
            if envelope.reply_to is not None:
                envelope.reply_to.set(response)
        except Exception:
            if envelope.reply_to is not None:
                envelope.reply_to.set_exception()
            else:
                self._handle_failure(*sys.exc_info())
                try:
                    self.on_failure(*sys.exc_info())
                except Exception:
                    self._handle_failure(*sys.exc_info())
        except BaseException:
            self._stop()
            pykka.ActorRegistry.stop_all()
