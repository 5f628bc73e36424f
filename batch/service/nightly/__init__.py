"""One nightly run: refuse bad requests (``checks``), lock, resume, plan, execute, reconcile, report (``run``),
with its progress, interruption, metrics and the run history the CLI lists."""
