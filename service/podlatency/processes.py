"""Child processes that die with the process that started them (Linux ``prctl(PR_SET_PDEATHSIG)``).

Without it a parent killed outright (SIGKILL, an OOM kill, a CI timeout) leaves its children
running: a compile child would compile on for nothing, a benchmark's servers would keep their ports.
"""

from __future__ import annotations

import ctypes
import signal
import sys

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def die_with_parent(signal_number: int = signal.SIGTERM) -> None:
    """``preexec_fn``: have the kernel send ``signal_number`` to this child when its parent dies.

    "Parent" is the thread that started the child. Elsewhere than Linux it does nothing.
    """
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal_number)
