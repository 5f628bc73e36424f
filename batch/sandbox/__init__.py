"""A local InvestSuite-compatible API: a real HTTP server on 127.0.0.1 with its state in PostgreSQL.

Used by the demo, the tests and the benchmarks, never in production. It serves strictly the calls
the payout job makes (auth, portfolio listing and PATCH, users, transactions, events) and can inject
faults (latency, 5xx, lost responses, 429) switched at run time through ``/_sandbox/*``.

    app.py       create_app(): the starlette application
    store.py     PostgreSQL state, JSON codec with Decimal precision, ids
    query.py     the InvestSuite query language (``field eq 'x' and ...``) compiled to SQL
    faults.py    fault injection settings, rate limiter, request statistics
    seed.py      seed_scenario(): portfolios, users and matching core banking ledger accounts
    seed_deposits.py  seed_deposits(): the deposit cases' portfolios, accounts and incoming credits
    scenario.py  CASES, DEPOSIT_CASES: the named test cases a seeded scenario covers
    deposits.py  POST /events/deposit/: InvestSuite books the deposit (transaction, cash, funded_since)
    server.py    serve(), SandboxProcess, SandboxAdmin
"""
