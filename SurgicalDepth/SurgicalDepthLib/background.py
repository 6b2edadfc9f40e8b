"""Background threads for streaming: run a producer ahead of its consumer, or run calls behind the caller.

Used to overlap video decoding and preprocessing (:func:`prefetch`) and writing (:class:`BackgroundCalls`) with
inference. Queues are bounded, so memory stays flat whatever the clip length; an exception raised in a
background thread is re-raised in the calling thread, and stopping early (``close()``, ``break``, an error)
stops the thread.
"""
from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

logger = logging.getLogger(__name__)

_DONE = object()


class _Failure:
    def __init__(self, exc: BaseException):
        self.exc = exc


def _put(q: queue.Queue, item, stop: threading.Event) -> bool:
    """Put ``item`` unless ``stop`` is set first; returns whether it was put."""
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


#: how long closing a :func:`prefetch` waits for its thread (the source's current item) before leaving it behind
PREFETCH_JOIN_SECONDS = 5.0


def prefetch(items: Iterable, depth: int, name: str = "prefetch",
             stop: threading.Event | None = None) -> Iterator:
    """Iterate ``items`` in a background thread, up to ``depth`` items ahead of the consumer.

    Args:
        items: any iterable; it is iterated (and its generator code run) in the background thread only.
        depth: queue size (>= 1).
        stop: optional event; setting it (e.g. from another thread) ends the iteration early: the consumer gets
            at most the items already queued. It is set when the consumer stops (and never cleared here).
    Yields:
        the items in order. An exception raised while producing an item is re-raised here, after the items
        produced before it.
    """
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = stop if stop is not None else threading.Event()

    def worker() -> None:
        try:
            for item in items:
                if not _put(q, item, stop):
                    return
            _put(q, _DONE, stop)
        except BaseException as exc:  # forwarded to the consumer and re-raised there
            _put(q, _Failure(exc), stop)

    thread = threading.Thread(target=worker, name=name, daemon=True)
    thread.start()
    try:
        while True:
            try:
                item = q.get(timeout=0.1)
            except queue.Empty:
                if stop.is_set() or (not thread.is_alive() and q.empty()):
                    return  # stopped from outside: end like an exhausted iterator
                continue
            if item is _DONE:
                return
            if isinstance(item, _Failure):
                raise item.exc
            yield item
    finally:
        stop.set()
        thread.join(PREFETCH_JOIN_SECONDS)  # a decoder stops within its current item
        if thread.is_alive():  # a source blocked inside next() (a camera waiting for a frame) cannot be interrupted
            logger.warning("%s: the source did not stop within %.0f s of the consumer; its thread is left to end "
                           "when the source yields", name, PREFETCH_JOIN_SECONDS)


class BackgroundCalls:
    """Run calls in order in one background thread, at most ``depth`` waiting.

    ``submit`` blocks while the queue is full and re-raises the first error of an earlier call; ``close`` (or
    leaving the ``with`` block) waits for the submitted calls and re-raises their error. After an error the
    remaining calls are skipped. Leaving the ``with`` block because of an exception skips the waiting calls.
    """

    def __init__(self, depth: int = 4, name: str = "background-calls"):
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is _DONE:
                return
            if self._error is not None or self._stop.is_set():
                continue
            fn, args, kwargs = item
            try:
                fn(*args, **kwargs)
            except BaseException as exc:
                self._error = exc

    def _raise(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            self._stop.set()
            raise error

    def submit(self, fn: Callable[..., Any], *args, **kwargs) -> None:
        self._raise()
        if not self._thread.is_alive():
            raise RuntimeError("BackgroundCalls is closed")
        self._queue.put((fn, args, kwargs))

    def close(self, cancel: bool = False) -> None:
        """Wait for the submitted calls (skip those not started with ``cancel``) and re-raise their error."""
        if self._thread.is_alive():
            if cancel:
                self._stop.set()
            self._queue.put(_DONE)
            self._thread.join()
        self._raise()

    def __enter__(self) -> "BackgroundCalls":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self._stop.set()
            self._queue.put(_DONE)
            self._thread.join()
