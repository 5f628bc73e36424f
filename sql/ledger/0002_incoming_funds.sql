-- Deposits (docs/ledger-contract.md "Deposits"): a customer pays into the bank; the bank's payment system
-- books the credit into a house account per currency of kind INCOMING_FUNDS and records on that transfer
-- the beneficiary, the customer's investment cash account it matched from the payment reference. The job
-- then moves the money from the incoming account to the customer's account (one transfer) and announces it.

-- An INCOMING_FUNDS account holds customers' money that is not placed yet: like a customer account, and
-- unlike a BANK_HOUSE account, it may never go below zero (the CHECK below and ledger.apply_transfer).
ALTER TABLE ledger.accounts DROP CONSTRAINT accounts_kind_check;
ALTER TABLE ledger.accounts ADD CONSTRAINT accounts_kind_check
    CHECK (kind IN ('CUSTOMER_INVESTMENT_CASH', 'BANK_HOUSE', 'PAYOUT_CLEARING', 'INCOMING_FUNDS'));
ALTER TABLE ledger.accounts ADD CONSTRAINT incoming_balance_not_negative
    CHECK (kind <> 'INCOMING_FUNDS' OR balance >= 0);

-- The beneficiary a payment system matched (an account reference, not a foreign key: the match may name an
-- account that does not exist, which the job must hold, not lose). Set only on a credit into an
-- INCOMING_FUNDS account: the shape is checked here, the account kind by ledger.apply_transfer (a CHECK
-- cannot read the credited account), as constraint beneficiary_only_on_incoming_credits.
ALTER TABLE ledger.transfers ADD COLUMN beneficiary_reference text
    CONSTRAINT beneficiary_reference_shape
    CHECK (beneficiary_reference IS NULL OR length(beneficiary_reference) BETWEEN 1 AND 64);

-- Credits into incoming accounts, found by id: one index range per incoming account (one per currency),
-- read in id order from the last credit seen (sql/queries/ledger_deposits.sql, incoming_credits).
CREATE INDEX transfers_by_credit ON ledger.transfers (credit_account_id, id);
CREATE INDEX accounts_incoming_funds ON ledger.accounts (id) WHERE kind = 'INCOMING_FUNDS';

-- Credits into incoming accounts become visible in id order, so a reader paging by id (id > the last seen)
-- never skips one: a bigserial id is drawn when the row is formed, not when it commits, and a credit with a
-- lower id could otherwise commit after a higher one was read. Each such credit takes one transaction-level
-- lock (held to its commit) and draws its id under it; other transfers are untouched.
CREATE FUNCTION ledger.order_incoming_credit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM ledger.accounts WHERE id = NEW.credit_account_id AND kind = 'INCOMING_FUNDS') THEN
        PERFORM pg_advisory_xact_lock(hashtext('ledger.incoming_credits'));
        NEW.id := nextval('ledger.transfers_id_seq');
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER transfers_order_incoming BEFORE INSERT ON ledger.transfers
    FOR EACH ROW EXECUTE FUNCTION ledger.order_incoming_credit();

-- 0001's posting trigger with two additions: an INCOMING_FUNDS account is debited only within its
-- available cash (balance - active holds), like a customer account; a beneficiary only on a credit into an
-- INCOMING_FUNDS account. Everything else (locks in id order, currencies, the balance moves) is unchanged.
CREATE OR REPLACE FUNCTION ledger.apply_transfer() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    debit  ledger.accounts%ROWTYPE;
    credit ledger.accounts%ROWTYPE;
    held   numeric;
BEGIN
    PERFORM 1 FROM ledger.accounts WHERE id IN (NEW.debit_account_id, NEW.credit_account_id)
      ORDER BY id FOR NO KEY UPDATE;
    SELECT * INTO debit FROM ledger.accounts WHERE id = NEW.debit_account_id;
    SELECT * INTO credit FROM ledger.accounts WHERE id = NEW.credit_account_id;
    IF debit.id IS NULL OR credit.id IS NULL THEN
        RAISE EXCEPTION 'transfer refers to an unknown account' USING ERRCODE = 'foreign_key_violation';
    END IF;
    IF debit.currency <> NEW.currency OR credit.currency <> NEW.currency THEN
        RAISE EXCEPTION 'transfer currency % does not match the accounts (% -> %)',
            NEW.currency, debit.currency, credit.currency USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.beneficiary_reference IS NOT NULL AND credit.kind <> 'INCOMING_FUNDS' THEN
        RAISE EXCEPTION 'a beneficiary is recorded only on a credit into an INCOMING_FUNDS account, not into % (%)',
            credit.reference, credit.kind
            USING ERRCODE = 'check_violation', CONSTRAINT = 'beneficiary_only_on_incoming_credits';
    END IF;
    IF debit.kind IN ('CUSTOMER_INVESTMENT_CASH', 'INCOMING_FUNDS') THEN
        SELECT coalesce(sum(amount), 0) INTO held FROM ledger.holds
         WHERE account_id = debit.id AND released_at IS NULL;
        IF debit.balance - held < NEW.amount THEN
            RAISE EXCEPTION 'insufficient available balance on %: available %, transfer %',
                debit.reference, debit.balance - held, NEW.amount
                USING ERRCODE = 'check_violation', CONSTRAINT = 'insufficient_available_balance';
        END IF;
    END IF;
    UPDATE ledger.accounts SET balance = balance - NEW.amount WHERE id = debit.id;
    UPDATE ledger.accounts SET balance = balance + NEW.amount WHERE id = credit.id;
    RETURN NULL;
END $$;
