"""Admission and scheduling of generations: who runs, who waits, in which order."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable

POLL_SECONDS = 0.25  # how often a waiting request checks that its client is still there


class FairScheduler:
    """FIFO admission to ``slots`` concurrent generations; a waiter can be abandoned."""

    def __init__(self, slots: int = 1) -> None:
        self.slots = max(1, slots)
        self._lock = threading.Lock()
        self._waiting: deque[threading.Event] = deque()
        self._active = 0

    @property
    def active(self) -> int:
        return self._active

    @property
    def queued(self) -> int:
        return len(self._waiting)

    def position(self, ticket: threading.Event) -> int:
        with self._lock:
            try:
                return self._waiting.index(ticket) + 1
            except ValueError:
                return 0

    def acquire(self, keep_waiting: Callable[[threading.Event], bool] = lambda t: True) -> bool:
        """Wait for a slot in arrival order; ``keep_waiting`` is polled and may give up."""
        with self._lock:
            if self._active < self.slots and not self._waiting:
                self._active += 1
                return True
            ticket = threading.Event()
            self._waiting.append(ticket)
        while not ticket.wait(POLL_SECONDS):
            if not keep_waiting(ticket):
                with self._lock:
                    if ticket in self._waiting:
                        self._waiting.remove(ticket)
                        return False
                # granted while we decided to leave: pass the slot on
                self.release()
                return False
        return True

    def release(self) -> None:
        with self._lock:
            if self._waiting:
                self._waiting.popleft().set()  # the slot moves to the next in line
            else:
                self._active -= 1
