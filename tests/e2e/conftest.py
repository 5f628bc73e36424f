"""End-to-end fixtures: the ``batch`` command as a subprocess against the sandbox and real PostgreSQL.

``cli``           a CLI runner on this test's fresh databases and sandbox (function scope)
``e2e_world``     module scope: fresh databases + a sandbox for a whole module (seed and run once)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest

from batch.adapters.postgres import Dsns
from batch.sandbox.server import SandboxProcess
from tests.e2e.helpers import Cli, make_cli
from tests.fixtures.pg import fresh_dsns
from tests.fixtures.sandbox import RunningSandbox


@dataclass(frozen=True)
class World:
    """Fresh journal/ledger/sandbox databases, a running sandbox on them, and a CLI configured for both."""

    dsns: Dsns
    sandbox: RunningSandbox
    cli: Cli


@pytest.fixture
def cli(dsns: Dsns, sandbox: RunningSandbox, tmp_path: Path) -> Cli:
    """``batch`` on this test's fresh databases and sandbox (config and reports under tmp_path)."""
    return make_cli(dsns, sandbox.base_url, tmp_path)


@pytest.fixture(scope="module")
def new_world(
    pg_admin_dsn: str, pg_templates: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[[], World]]:
    """Build module-scoped worlds (databases + sandbox + CLI); sandboxes stop when the module ends."""
    with ExitStack() as stack:

        def build() -> World:
            dsns = fresh_dsns(pg_admin_dsn, pg_templates)
            process = stack.enter_context(SandboxProcess(dsns.sandbox))
            sandbox = RunningSandbox(process, dsns.sandbox)
            return World(dsns, sandbox, make_cli(dsns, sandbox.base_url, tmp_path_factory.mktemp("e2e")))

        yield build
