"""Blocking work (loading a model, a training step, sampling) off the event loop, in a thread the
process need not wait for.

anyio's worker threads cannot be interrupted, and the interpreter joins them at exit: a server
whose stdin closed during a 45 s model load would stay up for those 45 s. `run_daemon` runs the
call in a daemon thread instead; when the awaiting task is cancelled it returns at once and the
thread's result is dropped, so shutdown never waits on it.
"""
from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


async def run_daemon(fn: Callable[..., T], *args: Any, name: str = "metaclaw-mcp worker") -> T:
    """`fn(*args)` in a new daemon thread; its result, or its exception re-raised here.

    Cancelling the caller abandons the thread (it runs to its end, unobserved). Use it only for
    work whose effects are safe to lose: files written whole or not at all, state in memory.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(ok: bool, value: Any) -> None:
        if not future.done():
            (future.set_result if ok else future.set_exception)(value)

    def work() -> None:
        try:
            outcome: tuple[bool, Any] = (True, fn(*args))
        except BaseException as exc:  # handed to the awaiting task, which decides
            outcome = (False, exc)
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody is waiting
            loop.call_soon_threadsafe(settle, *outcome)

    threading.Thread(target=work, name=name, daemon=True).start()
    return await future
