"""Sample pg_stat_activity of a running bench (issue 27): what the job's backends wait on.

    .venv/bin/python bench/waits.py [--root /tmp/payout-bench-XXXX] [--interval 0.05] [--seconds 600]

Finds the newest /tmp/payout-bench-*/pg (or --root), connects to its server as ``postgres`` and, every
``--interval`` seconds, counts the active backends per (database kind, wait event, statement head).
Stops after ``--seconds`` or when the server goes away (or Ctrl-C), then prints the average number of
backends per sample for the top entries. Only samples with a journal backend active are counted.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import time
from collections import Counter
from pathlib import Path

import psycopg

QUERY = """
SELECT datname, coalesce(wait_event_type || ':' || wait_event, 'CPU') AS wait, left(query, 200) AS query
  FROM pg_stat_activity
 WHERE state = 'active' AND pid <> pg_backend_pid() AND backend_type = 'client backend'
   AND datname ~ '^b[0-9]+_'
"""


def head(query: str) -> str:
    """The function or table a statement is about, enough to tell the hot statements apart."""
    m = re.search(r"batch\.([a-z_]+)\s*\(", query) or re.search(r"(?:FROM|UPDATE|INTO)\s+([a-z_.]+)", query, re.I)
    return m.group(1) if m else " ".join(query.split())[:40]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=None)
    parser.add_argument("--interval", type=float, default=0.05)
    parser.add_argument("--seconds", type=float, default=600)
    parser.add_argument("--top", type=int, default=8)
    args = parser.parse_args()
    root = args.root
    deadline = time.monotonic() + args.seconds
    while root is None:
        roots = sorted(glob.glob("/tmp/payout-bench-*/pg/postmaster.pid"), key=os.path.getmtime)
        if roots:
            root = str(Path(roots[-1]).parent.parent)
            break
        if time.monotonic() > deadline:
            raise SystemExit("no bench server found")
        time.sleep(0.5)
    lines = (Path(root) / "pg" / "postmaster.pid").read_text().splitlines()
    port, socket_dir = int(lines[3]), lines[4]  # the embedded server listens on its socket only
    conn = psycopg.connect(host=socket_dir, port=port, user="postgres", dbname="postgres", autocommit=True)
    counts: Counter[tuple[str, str, str]] = Counter()
    samples = 0
    try:
        while time.monotonic() < deadline:
            rows = conn.execute(QUERY).fetchall()
            if any(datname.endswith("_journal") for datname, _, _ in rows):
                samples += 1
                for datname, wait, query in rows:
                    counts[(datname.rsplit("_", 1)[-1], wait, head(query))] += 1
            time.sleep(args.interval)
    except (KeyboardInterrupt, psycopg.OperationalError):
        pass
    print(f"{samples} samples with a job backend active ({root})")
    for (db, wait, what), n in counts.most_common(args.top):
        print(f"  {n / max(samples, 1):6.2f}  {db:8s} {wait:32s} {what}")


if __name__ == "__main__":
    main()
