"""Module-scoped databases and sandbox for integration modules whose tests stay independent by
adding their own portfolios (starting a sandbox and databases per test is most of a test's time)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from batch.adapters.postgres import Dsns
from batch.sandbox.server import SandboxProcess
from tests.fixtures.pg import fresh_dsns
from tests.fixtures.sandbox import RunningSandbox


@pytest.fixture(scope="module")
def module_dsns(pg_admin_dsn: str, pg_templates: dict[str, str]) -> Dsns:
    """Fresh journal, ledger and sandbox databases shared by one test module."""
    return fresh_dsns(pg_admin_dsn, pg_templates)


@pytest.fixture(scope="module")
def module_sandbox(module_dsns: Dsns) -> Iterator[RunningSandbox]:
    """One sandbox server on the module's sandbox database."""
    with SandboxProcess(module_dsns.sandbox) as process:
        yield RunningSandbox(process, module_dsns.sandbox)
