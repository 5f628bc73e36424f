"""The named cases a seeded sandbox scenario covers (DESIGN.md §3 and the money edge cases).

Every case appears at least once in any scenario with ``size >= len(CASES)``; the remaining
portfolios are ``partial_enough_cash``. "cash" is the InvestSuite ``$CCY`` holding, "ledger" the
core banking account's balance (available = balance - active holds).
"""

from __future__ import annotations

DEFAULT_CASE = "partial_enough_cash"

CASES: dict[str, str] = {
    "partial_enough_cash": "partial divest (EUR or USD), ledger = cash, enough cash for it",
    "insufficient_cash": "divest 5000.00 EUR, cash and ledger 100.00, positions still open",
    "full_no_positions": "divest 1e100 (full withdrawal), cash and ledger 2500.00 EUR, only zero positions left",
    "full_with_positions": "divest 1e100 (full withdrawal), cash and ledger 300.00 EUR, a non-cash position is open",
    "paper_money": "PAPER_MONEY portfolio with a divest of 100.00 EUR, no ledger account",
    "archived": "archived portfolio with a divest of 100.00 EUR and enough cash",
    "deleted": "deleted portfolio with a divest of 100.00 EUR and enough cash",
    "ineligible_status": "status WAITING_FOR_FUNDS with a divest of 100.00 EUR and enough cash",
    "no_ledger_account": "external_id names no ledger account; divest 100.00 EUR",
    "currency_mismatch": "EUR portfolio whose ledger account is in USD (1000.00); divest 100.00",
    "recon_break_enough": "cash 1000.00 EUR, ledger 800.00, divest 500.00: the smaller still covers it",
    "recon_break_short": "cash 1000.00 EUR, ledger 300.00, divest 500.00: the smaller does not cover it",
    "sub_minor_amount": "divest 10.005 EUR (below the minor unit), cash and ledger 1000.00",
    "jpy": "JPY portfolio, divest 1234.5 JPY, cash and ledger 500000",
    "kwd": "KWD portfolio (3 decimals), divest 125.1255 KWD, cash and ledger 1000.000",
    "ledger_hold": "cash and ledger balance 1000.00 EUR but a hold of 800.00: available 200.00 < divest 500.00",
    "negative_divest": "divest -100.00 EUR (invalid amount), cash and ledger 1000.00",
    "string_divest": 'divest stored as the string "250.00" (EUR), cash and ledger 1000.00',
    "unknown_currency": "base currency XYZ (not ISO 4217), divest 100, ledger account in XYZ",
    "no_counter_account": "owner has no counter_account (null); divest 100.00 EUR, enough cash",
    "above_cap": "divest 60000.00 EUR, cash and ledger 100000.00 (above a typical payout cap)",
    "string_positions": 'holdings served as strings ("2250.00", "12.5", "0"), divest 500.00 EUR: paid',
    "exponent_values": "divest 2.5E+2, cash 1.0E+3 and a position 1.25E+1 in exponent form (EUR): 250.00 paid",
    "missing_cash_key": "no $EUR key in the holdings, ledger 1000.00, divest 100.00: InvestSuite cash 0",
    "cash_too_precise": "cash 1000.005 EUR (more decimals than EUR has): it cannot be written back, held",
    "undocumented_config_field": "config carries a field the docs do not define: the PATCH would be refused, held",
    "no_divest_zero": "divest 0.0: not pending, must not be listed",
    "no_divest_null": "divest null: not pending, must not be listed",
}

#: Cases the pending-withdrawal query must not return.
NOT_PENDING_CASES = frozenset({"no_divest_zero", "no_divest_null"})

#: Incoming credits seeded by ``batch.sandbox.seed_deposits`` (case -> the credit, its portfolio, the outcome
#: DESIGN §9.6 asks for). A credit is a transfer NOSTRO-{CCY} -> INCOMING-{CCY} naming a beneficiary; a mapped
#: portfolio carries the beneficiary as its ``external_id`` and (but paper money) has a customer account of
#: that reference; no divest is pending, cash = ledger balance. "eligible": moved (client setup) and announced.
DEPOSIT_CASES: dict[str, str] = {
    "deposit_active": "1500.00 EUR for an ACTIVE REAL_MONEY EUR portfolio (cash and ledger 200.00): eligible",
    "deposit_waiting_for_funds": "1000.00 EUR, WAITING_FOR_FUNDS, funded_since null, cash and ledger 0: eligible",
    "deposit_archived": "300.00 EUR for an archived (ACTIVE, REAL_MONEY) portfolio: held",
    "deposit_paper_money": "300.00 EUR for a PAPER_MONEY portfolio (no ledger account): held",
    "deposit_inactive": "300.00 EUR for an INACTIVE portfolio: held",
    "deposit_unmapped": "400.00 EUR whose beneficiary names no ledger account and no portfolio: held",
    "deposit_no_beneficiary": "450.00 EUR the payment system matched to nobody (beneficiary null): held",
    "deposit_currency_mismatch": (
        "500.00 USD (into INCOMING-USD) for an ACTIVE EUR portfolio whose ledger account is in EUR: held"
    ),
    "deposit_sub_minor": "10.005 EUR (below the minor unit) for an ACTIVE EUR portfolio: held",
    "deposit_jpy": "50000 JPY for an ACTIVE JPY portfolio (cash and ledger 100000): eligible",
    "deposit_twice": "two credits (250.00 and 750.00 EUR) for one ACTIVE EUR portfolio: each eligible, once",
}
