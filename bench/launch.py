"""Run a command and report its peak RSS and CPU: ``launch.py OUT.json COMMAND...``.

The benchmark starts the job through this small process because Linux carries the *parent's*
peak RSS into a child's ``ru_maxrss`` at exec (``exec_mmap`` records the old address space's
high-water mark, and a vfork/fork child's old address space is the parent's). Started directly
from the benchmark, which may hold a large seeded data set, the job would report the benchmark's
peak instead of its own. Here the parent is this small interpreter. ``ru_maxrss`` is the largest
single process of the job's tree (the planner or one of its waited-for workers), not their sum.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path


def main() -> int:
    out, command = Path(sys.argv[1]), sys.argv[2:]
    child = subprocess.Popen(command)
    signal.signal(signal.SIGTERM, lambda signum, _frame: child.send_signal(signum))
    _, status, usage = os.wait4(child.pid, 0)
    out.write_text(
        json.dumps({"maxrss_kb": usage.ru_maxrss, "cpu_seconds": usage.ru_utime + usage.ru_stime, "pid": child.pid}),
        encoding="utf-8",
    )
    code = os.waitstatus_to_exitcode(status)
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main())
