-- The deposit side of the core banking ledger (batch/adapters/ledger_deposits.py): incoming credits and
-- the move of a credit from the incoming account to the customer's investment cash account.

-- name: incoming_credits
-- credits into INCOMING_FUNDS accounts with id > :after_id, in id order, at most :limit: each incoming
-- account (one per currency) reads at most :limit rows of the index transfers_by_credit, then they merge.
-- A transfer out of a customer account is the job undoing a deposit move (reverse_deposit), not a payment.
SELECT t.id, t.reference, t.beneficiary_reference AS beneficiary, t.amount, t.currency, t.value_date,
       t.counterparty, t.created_at
  FROM ledger.accounts a
 CROSS JOIN LATERAL (
        SELECT c.* FROM ledger.transfers c
         WHERE c.credit_account_id = a.id AND c.id > :after_id
           AND NOT EXISTS (SELECT 1 FROM ledger.accounts d
                            WHERE d.id = c.debit_account_id AND d.kind = 'CUSTOMER_INVESTMENT_CASH')
         ORDER BY c.id
         LIMIT :limit) t
 WHERE a.kind = 'INCOMING_FUNDS'
 ORDER BY t.id
 LIMIT :limit

-- name: credits_by_reference
-- the credits into INCOMING_FUNDS accounts among these transfer references (others are absent)
SELECT t.id, t.reference, t.beneficiary_reference AS beneficiary, t.amount, t.currency, t.value_date,
       t.counterparty, t.created_at
  FROM ledger.transfers t
  JOIN ledger.accounts a ON a.id = t.credit_account_id
  JOIN ledger.accounts d ON d.id = t.debit_account_id
 WHERE t.reference = ANY(:references) AND a.kind = 'INCOMING_FUNDS' AND d.kind <> 'CUSTOMER_INVESTMENT_CASH'

-- name: accounts_by_reference
-- id, currency and kind of these accounts (the incoming account and the customer's, for a move)
SELECT id, reference, currency, kind FROM ledger.accounts WHERE reference = ANY(:references)

-- name: available
-- an account's available cash now (balance - active holds), the evidence of a refusal
SELECT available FROM ledger.available_balances WHERE reference = :reference

-- name: insert_move
-- the move: debit the incoming account, credit the customer's; a repeat of the key inserts nothing
INSERT INTO ledger.transfers (idempotency_key, debit_account_id, credit_account_id, amount, currency, value_date,
                              counterparty, description)
VALUES (:key, :debit, :credit, :amount, :currency, :value_date, :counterparty, :description)
ON CONFLICT (idempotency_key) DO NOTHING
RETURNING reference

-- name: insert_credit
-- an incoming payment as a payment system books it: nostro -> incoming account, with the beneficiary
INSERT INTO ledger.transfers (idempotency_key, debit_account_id, credit_account_id, amount, currency, value_date,
                              counterparty, description, beneficiary_reference)
VALUES (:key, :debit, :credit, :amount, :currency, :value_date, :counterparty, 'incoming payment', :beneficiary)
ON CONFLICT (idempotency_key) DO NOTHING

-- name: credit_by_key
-- a credit by its idempotency key, with the account it went into (a repeat of receive_credit)
SELECT t.reference, t.beneficiary_reference AS beneficiary, t.amount, t.currency, a.reference AS credit_account
  FROM ledger.transfers t
  JOIN ledger.accounts a ON a.id = t.credit_account_id
 WHERE t.idempotency_key = :key

-- name: deposit_movements_on
-- reconciliation (read-only): every transfer of the value date between an INCOMING_FUNDS account and a
-- customer investment cash account, either way (a deposit's move, or the undo of one), whoever posted it
SELECT t.reference, t.idempotency_key, d.reference AS account_reference, c.reference AS counter_account_reference,
       t.amount, t.currency, t.value_date, t.counterparty, t.created_at, d.kind AS debit_kind
  FROM ledger.transfers t
  JOIN ledger.accounts d ON d.id = t.debit_account_id
  JOIN ledger.accounts c ON c.id = t.credit_account_id
 WHERE t.value_date = :value_date
   AND ((d.kind = 'INCOMING_FUNDS' AND c.kind = 'CUSTOMER_INVESTMENT_CASH')
        OR (d.kind = 'CUSTOMER_INVESTMENT_CASH' AND c.kind = 'INCOMING_FUNDS'))
 ORDER BY t.id

-- name: transfers_by_keys
-- reconciliation (read-only): the transfers posted under these idempotency keys (moves and undos)
SELECT t.reference, t.idempotency_key, d.reference AS account_reference, c.reference AS counter_account_reference,
       t.amount, t.currency, t.value_date, t.counterparty, t.created_at
  FROM ledger.transfers t
  JOIN ledger.accounts d ON d.id = t.debit_account_id
  JOIN ledger.accounts c ON c.id = t.credit_account_id
 WHERE t.idempotency_key = ANY(:keys)
