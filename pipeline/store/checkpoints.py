"""Test hooks at named points of a run, to prove crash safety and locking with real processes.

``PIPELINE_TEST_CRASH_AT=name`` kills the process with SIGKILL at checkpoint ``name`` (as the OOM
killer or a power cut would); ``PIPELINE_TEST_PAUSE_AT=name:seconds`` sleeps there.
"""

from __future__ import annotations

import logging
import os
import signal
import time

log = logging.getLogger(__name__)

CRASH_ENV = "PIPELINE_TEST_CRASH_AT"
PAUSE_ENV = "PIPELINE_TEST_PAUSE_AT"


def checkpoint(name: str) -> None:
    """Kill or pause here when the test variables name this point; otherwise do nothing."""
    if os.environ.get(CRASH_ENV) == name:
        log.warning("test crash point %s: killing this process", name)
        os.kill(os.getpid(), signal.SIGKILL)
    pause = os.environ.get(PAUSE_ENV, "")
    if pause.partition(":")[0] == name:
        time.sleep(float(pause.partition(":")[2] or 1))
