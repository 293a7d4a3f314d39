"""Ctrl-C during training: finish the step, checkpoint, then stop.

While `stop_on_sigint()` is active, the first SIGINT only raises a flag that the loop
checks after each step, so the step completes and a checkpoint is written before the
run stops. A second SIGINT restores Python's default and interrupts at once (the
checkpoint writer is crash-safe, see runs.save_checkpoint).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


class StopFlag:
    def __init__(self) -> None:
        self.requested = False


@contextlib.contextmanager
def stop_on_sigint() -> Iterator[StopFlag]:
    flag = StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag  # signal handlers can only be set from the main thread
        return

    def handler(signum, frame):
        flag.requested = True
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second ^C stops now

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)
