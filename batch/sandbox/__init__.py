"""A local InvestSuite-compatible API: a real HTTP server on 127.0.0.1 with its state in PostgreSQL.

Used by the demo, the tests and the benchmarks, never in production. It serves strictly the calls
the payout job makes (auth, portfolio listing and PATCH, users, transactions, events) and can inject
faults (latency, 5xx, lost responses, 429) switched at run time through ``/_sandbox/*``.

    app.py       create_app(): the starlette application
    store.py     PostgreSQL state, JSON codec with Decimal precision, ids
    query.py     the InvestSuite query language (``field eq 'x' and ...``) compiled to SQL
    faults.py    fault injection settings, rate limiter, request statistics
    seed.py      seed_scenario(): portfolios, users and matching core banking ledger accounts
    scenario.py  CASES: the named test cases a seeded scenario covers
    server.py    serve(), SandboxProcess, SandboxAdmin
"""
