-- Withdrawals with broker integration by InvestSuite (docs/ledger-contract.md "Payouts made by the bank"):
-- InvestSuite moves the cash at the broker to the bank's house account; the core banking system then pays the
-- customer's counter account and records, on that transfer, the customer account it paid for. The job reads
-- these payouts per value date and announces each to InvestSuite (POST /events/withdraw/); it moves no money.

-- The customer account a payout to a counter account was made for (an account reference, not a foreign key:
-- the bank's system may name an account the job cannot map, which the job must hold, not lose). The counter
-- account is the transfer's counterparty.
ALTER TABLE ledger.transfers ADD COLUMN customer_reference text
    CONSTRAINT customer_reference_shape
    CHECK (customer_reference IS NULL OR length(customer_reference) BETWEEN 1 AND 64);

-- a value date's payouts, read in id order (sql/queries/ledger_bank_payouts.sql)
CREATE INDEX transfers_bank_payouts ON ledger.transfers (value_date, id) WHERE customer_reference IS NOT NULL;
