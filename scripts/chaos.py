"""Chaos run: SIGKILL the nightly job again and again under API faults, then check nothing was paid twice.

    .venv/bin/python scripts/chaos.py --size 2000 --kills 100 --seed 1

Starts its own embedded PostgreSQL in a temporary folder under /tmp (three fresh, migrated
databases: journal, ledger, sandbox) and an InvestSuite sandbox on a free port, seeds a scenario,
then runs the harness of ``tests/e2e/chaos_support.py`` (the crash test uses the same code) and
prints what it checked. Exit code 0 when every check holds, 1 otherwise. Never touches ``.data``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from batch.adapters.migrations import migrate  # noqa: E402
from batch.adapters.postgres import Dsns, EmbeddedServer, ensure_database, make_engine, with_database  # noqa: E402
from batch.sandbox.server import SandboxProcess  # noqa: E402
from tests.e2e.chaos_support import ChaosHarness, ChaosOptions  # noqa: E402


def say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def fresh_databases(admin_dsn: str) -> Dsns:
    """Create and migrate the journal, ledger and sandbox databases on the embedded server."""
    made: dict[str, str] = {}
    for component in ("journal", "ledger", "sandbox"):
        name = f"chaos_{component}"
        ensure_database(admin_dsn, name)
        made[component] = with_database(admin_dsn, name)
        engine = make_engine(made[component], pool_size=1)
        try:
            migrate(engine, component)
        finally:
            engine.dispose()
    return Dsns(journal=made["journal"], ledger=made["ledger"], sandbox=made["sandbox"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2000, help="portfolios to seed (most of them payable)")
    parser.add_argument("--kills", type=int, default=100, help="SIGKILLs before the job may converge")
    parser.add_argument("--seed", type=int, default=20261120, help="random seed (scenario, faults, kill timing)")
    parser.add_argument("--error-rate", type=float, default=0.05, help="5xx rate on POST/PATCH")
    parser.add_argument("--lose-response-rate", type=float, default=0.05, help="lost-response rate on POST/PATCH")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (databases, reports)")
    args = parser.parse_args(argv)

    started = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="batch-chaos-", dir="/tmp"))
    server = EmbeddedServer(root / "pg")
    say(f"chaos: size {args.size}, kills {args.kills}, seed {args.seed}; work folder {root}")
    try:
        dsns = fresh_databases(server.start())
        with SandboxProcess(dsns.sandbox) as sandbox:
            options = ChaosOptions(
                size=args.size,
                kills=args.kills,
                seed=args.seed,
                error_rate=args.error_rate,
                lose_response_rate=args.lose_response_rate,
                concurrency=args.concurrency,
            )
            result = ChaosHarness(dsns, sandbox.base_url, root / "job", options, say=say).run()
        say("")
        say(result.summary())
        say("")
        say(result.table())
        say("")
        say(f"{'ALL CHECKS HOLD' if result.ok else 'CHECKS FAILED'} in {time.monotonic() - started:.1f} s")
        return 0 if result.ok else 1
    finally:
        server.stop()
        if args.keep:
            say(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
