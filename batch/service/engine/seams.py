"""Test seam for the crash tests: die with SIGKILL at named points of the executor.

Enabled only when ``BATCH_CRASH_POINTS`` is set (never in production), e.g.
``BATCH_CRASH_POINTS="*:0.01,LEDGER_POST.after:0.05"`` kills the process with probability 1 % at
every point and 5 % right after a ledger post returned (before the journal recorded it). Points are
``<STEP>.before`` (intent recorded, external call not made) and ``<STEP>.after`` (external call
done, outcome not yet recorded) for the four steps.
"""

from __future__ import annotations

import functools
import os
import random
import signal


@functools.cache
def _spec() -> dict[str, float]:
    raw = os.environ.get("BATCH_CRASH_POINTS", "")
    spec: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in raw.split(","))):
        name, _, probability = part.partition(":")
        spec[name] = float(probability or "1")
    return spec


def crash_point(name: str) -> None:
    """SIGKILL this process with the configured probability for ``name`` (no-op when unset)."""
    spec = _spec()
    if not spec:
        return
    probability = spec.get(name, spec.get("*", 0.0))
    if probability and random.random() < probability:
        os.kill(os.getpid(), signal.SIGKILL)
