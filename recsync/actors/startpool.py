"""Pipeline starts, several at once, on daemon threads the supervisor never waits for
longer than it chooses (a start stuck on a system that does not answer cannot hold up a
stop: the process may exit with it still running)."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable

log = logging.getLogger(__name__)


class StartPool:
    def __init__(self, size: int) -> None:
        self.size = size
        self._todo: deque[Callable[[], None]] = deque()
        self._cond = threading.Condition()
        self._threads = 0
        self._running = 0
        self._closed = False

    def submit(self, job: Callable[[], None]) -> None:
        with self._cond:
            if self._closed:
                return
            self._todo.append(job)
            if self._threads < self.size:
                self._threads += 1
                threading.Thread(target=self._work, name="pipeline-start", daemon=True).start()
            else:
                self._cond.notify()

    def close(self, timeout: float) -> bool:
        """Drop the starts not begun; wait up to ``timeout`` for those running. True when
        none is left running."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._closed = True
            self._todo.clear()
            self._cond.notify_all()
            while self._running:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._todo and not self._closed:
                    if not self._cond.wait(timeout=30.0) and not self._todo:
                        self._threads -= 1  # idle a while: retire
                        return
                if self._closed and not self._todo:
                    self._threads -= 1
                    return
                job = self._todo.popleft()
                self._running += 1
            try:
                job()
            except Exception:  # a job reports its own errors; this is a last resort
                log.exception("pipeline start job failed")
            finally:
                with self._cond:
                    self._running -= 1
                    self._cond.notify_all()
