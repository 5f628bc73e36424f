"""The service layer: plan (list, check the ledger, decide), execute (drive payouts), reconcile, report.

Sub-packages by what they serve — ``nightly`` (one run), ``bus`` (the listener), ``engine`` (the steps),
``planning`` (decisions), ``reconcile`` and ``reports`` — over a few shared modules: ``context`` (what the
layer is given), ``wiring`` (engine and planner built from it), ``heartbeat``, ``audit_checks`` and
``read_ahead``. Which may import which is in pyproject.toml (import-linter) and docs/design.md.
"""
