"""Shared fixtures. PostgreSQL is real (embedded server per test session, or BATCH_TEST_ADMIN_DSN)."""

import os

import pytest
import stamina
from hypothesis import settings

# Generated books are random locally (new cases each run) and derandomized in CI (`.ci/run` sets CI):
# the same examples every run, so a red CI is reproducible and never a roll of the dice.
settings.register_profile("ci", derandomize=True, print_blob=True)
settings.load_profile("ci" if os.environ.get("CI") else "default")

pytest_plugins = ["tests.fixtures.pg", "tests.fixtures.sandbox"]


@pytest.fixture(autouse=True, scope="session")
def _retries_without_waiting() -> None:
    """In-process retries (stamina) keep their attempt counts but do not sleep between tries."""
    stamina.set_testing(True, attempts=1000, cap=True)
