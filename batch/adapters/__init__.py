"""Adapters: everything that does I/O (InvestSuite HTTP, core banking ledger, journal, PostgreSQL)."""
