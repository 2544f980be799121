"""Base of every pipeline actor: failure reporting to the supervisor, message dispatch."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pykka

from recsync.actors.dispatch import PooledActor
from recsync.actors.protocol import Call, ChildFailed, Crash, Ping
from recsync.errors import ConnectorConfigError, StateUnavailable

log = logging.getLogger(__name__)

FailureSink = Callable[[ChildFailed], None]
# publishes one event (kind, data) on the control socket, from any actor's thread
EventSink = Callable[[str, dict[str, Any]], None]


def no_events(kind: str, data: dict[str, Any]) -> None:
    """The EventSink of actors started without one."""


class PipelineActor(PooledActor):
    """An actor of one pipeline incarnation.

    pykka calls ``on_failure`` when a ``tell`` handler raises, but an exception in
    ``on_start`` stops the actor silently, so ``on_start`` is wrapped here: either way the
    supervisor hears about it through ``report`` and decides what to restart.
    """

    role = "actor"

    def __init__(self, pipeline: str, incarnation: int, report: FailureSink) -> None:
        super().__init__()
        self.pipeline = pipeline
        self.incarnation = incarnation
        self._report = report
        self._handlers: dict[type, Callable[[Any], Any]] = {}
        # the pipeline's shared figures: an actor that has them (queue, pollers) writes its
        # ``progress()`` there after every message, so status and stats read them without
        # asking the actor (a thousand idle pipelines cost nothing to report on)
        self.figures: dict[str, Any] | None = None

    def handles(self, message_type: type, handler: Callable[[Any], Any]) -> None:
        self._handlers[message_type] = handler

    def send(self, target: pykka.ActorRef[Any], message: Any) -> None:
        """Tell ``target``; a peer that is gone (its pipeline is restarting) is skipped."""
        try:
            target.tell(message)
        except pykka.ActorDeadError:
            log.debug("peer gone", extra={"pipeline": self.pipeline, "actor": self.role})

    def setup(self) -> None:
        """Start-up work of the actor, on its own thread (override)."""

    def on_start(self) -> None:
        try:
            self.setup()
        except Exception as exc:
            self._report_failure(exc, fatal=isinstance(exc, ConnectorConfigError))
            raise

    def on_failure(self, exception_type: Any, exception_value: Any, traceback: Any) -> None:
        self._report_failure(exception_value)

    def _report_failure(self, exc: BaseException | None, fatal: bool = False) -> None:
        error = str(exc) or type(exc).__name__
        transient = isinstance(exc, StateUnavailable)
        log.error(
            "actor failed",
            extra={"pipeline": self.pipeline, "actor": self.role, "error": error},
            exc_info=not (fatal or transient),
        )
        self._report(ChildFailed(self.pipeline, self.incarnation, self.role, error, fatal,
                                 transient))

    def on_receive(self, message: Any) -> Any:
        try:
            return self._receive(message)
        finally:
            if self.figures is not None and not isinstance(message, Ping):
                self.publish_figures()

    def publish_figures(self) -> None:
        assert self.figures is not None
        progress = getattr(self, "progress", None)
        if progress is not None:
            self.figures[self.role] = progress()

    def _receive(self, message: Any) -> Any:
        handler = self._handlers.get(type(message))
        if handler is not None:
            return handler(message)
        if isinstance(message, Ping):
            return True
        if isinstance(message, Call):
            return getattr(self, message.name)(*message.args)
        if isinstance(message, Crash):
            raise RuntimeError(message.reason)
        log.warning("unexpected message %r", type(message).__name__,
                    extra={"pipeline": self.pipeline, "actor": self.role})
        return None
