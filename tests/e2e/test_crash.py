"""Crash test: the nightly run is SIGKILLed over and over (inside every step) and still pays exactly once."""

from __future__ import annotations

from pathlib import Path

import pytest

from batch.adapters.postgres import Dsns
from tests.e2e.chaos_support import ChaosHarness, ChaosOptions
from tests.fixtures.sandbox import RunningSandbox

pytestmark = pytest.mark.slow


def test_sigkill_at_random_moments_never_pays_twice(dsns: Dsns, sandbox: RunningSandbox, tmp_path: Path) -> None:
    """Twenty-odd SIGKILLs under 5 % errors and 5 % lost responses: every request paid once, books exact."""
    harness = ChaosHarness(
        dsns, sandbox.base_url, tmp_path, ChaosOptions(size=230, kills=20, deadline_seconds=600), say=print
    )
    result = harness.run()
    print(result.summary())
    print(result.table())
    assert result.ok, "\n".join(f"{c.name}: {c.detail}" for c in result.failed())
