"""Read the next page while the current one is worked on: one page ahead, memory flat in the book's size.

Used by planning (the pending listing) and by the full-book reconciliation. A failure of the fetch is
raised in the caller's thread at the page where it happened; the reader thread carries the caller's
bound log context.
"""

from __future__ import annotations

import contextlib
import contextvars
import queue
import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar, cast

T = TypeVar("T")
_END = object()


def read_ahead(pages: Iterable[T], name: str = "read-ahead") -> Iterator[T]:
    """Yield ``pages`` while a thread fetches the next one (at most one page waits)."""
    ahead: queue.Queue[object] = queue.Queue(maxsize=1)
    stop = threading.Event()
    context = contextvars.copy_context()

    def fetch() -> None:
        try:
            for page in pages:
                while not stop.is_set():
                    try:
                        ahead.put(page, timeout=0.5)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            ahead.put(_END)
        except BaseException as exc:  # handed to the caller's thread
            ahead.put(exc)

    reader = threading.Thread(target=context.run, args=(fetch,), name=name, daemon=True)
    reader.start()
    try:
        while True:
            item = ahead.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield cast(T, item)
    finally:
        stop.set()
        while reader.is_alive():  # unblock a reader waiting to put, then let it finish
            with contextlib.suppress(queue.Empty):
                ahead.get_nowait()
            reader.join(timeout=0.1)
