-- Payouts the core banking system made to customers' counter accounts (batch/adapters/ledger_bank_payouts.py),
-- announced by the job when the broker integration is by InvestSuite.

-- name: bank_payouts
-- the payouts of a value date with id > :after_id, in id order, at most :limit
SELECT t.id, t.reference, t.customer_reference, t.counterparty, t.amount, t.currency, t.value_date
  FROM ledger.transfers t
 WHERE t.customer_reference IS NOT NULL AND t.value_date = :value_date AND t.id > :after_id
 ORDER BY t.id
 LIMIT :limit

-- name: bank_payouts_by_reference
-- the payouts among these transfer references (others are absent)
SELECT t.id, t.reference, t.customer_reference, t.counterparty, t.amount, t.currency, t.value_date
  FROM ledger.transfers t
 WHERE t.reference = ANY(:references) AND t.customer_reference IS NOT NULL

-- name: bank_payout_totals
-- per currency, the count and sum of a value date's payouts (the reports' and the reconciliation's ledger figure)
SELECT t.currency, count(*) AS payouts, sum(t.amount) AS amount
  FROM ledger.transfers t
 WHERE t.customer_reference IS NOT NULL AND t.value_date = :value_date
 GROUP BY t.currency
 ORDER BY t.currency

-- name: insert_bank_payout
-- a payout as the core banking system books it: house account -> payout clearing, to the counter account
INSERT INTO ledger.transfers (idempotency_key, debit_account_id, credit_account_id, amount, currency, value_date,
                              counterparty, description, customer_reference)
VALUES (:key, :debit, :credit, :amount, :currency, :value_date, :counterparty, 'payout to counter account',
        :customer_reference)
ON CONFLICT (idempotency_key) DO NOTHING

-- name: bank_payout_by_key
-- a payout by its idempotency key (a repeat of pay_counter_account)
SELECT t.reference, t.customer_reference, t.counterparty, t.amount, t.currency
  FROM ledger.transfers t
 WHERE t.idempotency_key = :key
