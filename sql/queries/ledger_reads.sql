-- Read-only queries of the core banking ledger for reconciliation (never a write).

-- name: transfers_by_keys
-- transfers posted under these idempotency keys (a payout's key is its id)
SELECT t.reference, t.idempotency_key, d.reference AS account_reference, t.amount, t.currency, t.value_date,
       c.kind AS credit_kind
  FROM ledger.transfers t
  JOIN ledger.accounts d ON d.id = t.debit_account_id
  JOIN ledger.accounts c ON c.id = t.credit_account_id
 WHERE t.idempotency_key = ANY(:keys)

-- name: payout_transfers_on
-- every transfer of the value date from a customer account into a payout clearing account, whoever posted it
SELECT t.reference, t.idempotency_key, d.reference AS account_reference, t.amount, t.currency, t.value_date,
       c.kind AS credit_kind
  FROM ledger.transfers t
  JOIN ledger.accounts d ON d.id = t.debit_account_id
  JOIN ledger.accounts c ON c.id = t.credit_account_id
 WHERE t.value_date = :value_date AND c.kind = 'PAYOUT_CLEARING' AND d.kind = 'CUSTOMER_INVESTMENT_CASH'
 ORDER BY t.id

-- name: accounts_by_reference
-- balance and available cash (balance - active holds) of these accounts, any kind
SELECT reference, currency, kind, balance, available FROM ledger.available_balances WHERE reference = ANY(:refs)

-- name: customer_accounts
-- every customer investment cash account (streamed: orphans are those no portfolio maps to)
SELECT reference, currency, balance FROM ledger.accounts
 WHERE kind = 'CUSTOMER_INVESTMENT_CASH'
 ORDER BY reference COLLATE "C"
