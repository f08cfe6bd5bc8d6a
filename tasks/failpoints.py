"""Named crash points for the fault suite (tests/faults): with LLMSHIP_CRASH_AT=<name> this
process kills itself at that point with SIGKILL, as a power cut or the OOM killer would: no
`finally`, no handler, nothing flushed. Unset (always, outside the suite) it does nothing.

    after-publish, after-deploy, canary-step-<n>, promoting, rolling-back
"""

from __future__ import annotations

import os
import signal

ENV = "LLMSHIP_CRASH_AT"


def crash_point(name: str) -> None:
    if os.environ.get(ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
