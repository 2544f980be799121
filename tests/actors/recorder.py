"""A peer actor for tests: it keeps every message it is told, in order."""

from __future__ import annotations

import queue
from typing import Any

import pykka


class Recorder(pykka.ThreadingActor):
    """A peer that keeps every message it is told, in order, in ``inbox``."""

    def __init__(self, inbox: queue.Queue[Any]) -> None:
        super().__init__()
        self.inbox = inbox

    def on_receive(self, message: Any) -> None:
        self.inbox.put(message)
