"""Shared fixtures. PostgreSQL is real (embedded server per test session, or BATCH_TEST_ADMIN_DSN)."""

import pytest
import stamina

pytest_plugins = ["tests.fixtures.pg", "tests.fixtures.sandbox"]


@pytest.fixture(autouse=True, scope="session")
def _retries_without_waiting() -> None:
    """In-process retries (stamina) keep their attempt counts but do not sleep between tries."""
    stamina.set_testing(True, attempts=1000, cap=True)
