-- Reference core banking ledger: accounts, double-entry transfers, holds.
-- Used by the demo, the tests and banks without a ledger of their own. Every rule that protects
-- money is enforced here, not only in the application.

CREATE TABLE ledger.accounts (
    id              bigserial PRIMARY KEY,
    reference       text        NOT NULL UNIQUE CHECK (length(reference) BETWEEN 1 AND 64),
    currency        char(3)     NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    owner           text        NOT NULL CHECK (length(owner) > 0),
    kind            text        NOT NULL CHECK (kind IN ('CUSTOMER_INVESTMENT_CASH', 'BANK_HOUSE', 'PAYOUT_CLEARING')),
    balance         numeric(38, 8) NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now(),
    -- a customer's investment cash account can never go below zero
    CONSTRAINT customer_balance_not_negative CHECK (kind <> 'CUSTOMER_INVESTMENT_CASH' OR balance >= 0)
);

CREATE TABLE ledger.holds (
    id              bigserial PRIMARY KEY,
    account_id      bigint      NOT NULL REFERENCES ledger.accounts (id),
    amount          numeric(38, 8) NOT NULL CHECK (amount > 0),
    reason          text        NOT NULL CHECK (length(reason) > 0),
    created_at      timestamptz NOT NULL DEFAULT now(),
    released_at     timestamptz,
    CHECK (released_at IS NULL OR released_at >= created_at)
);
CREATE INDEX holds_active_by_account ON ledger.holds (account_id) WHERE released_at IS NULL;

CREATE TABLE ledger.transfers (
    id                  bigserial PRIMARY KEY,
    reference           text        NOT NULL UNIQUE DEFAULT ('LT' || to_char(clock_timestamp(), 'YYYYMMDD') || '-' || lpad(nextval('ledger.transfers_id_seq')::text, 12, '0')),
    idempotency_key     text        NOT NULL UNIQUE CHECK (length(idempotency_key) BETWEEN 1 AND 128),
    debit_account_id    bigint      NOT NULL REFERENCES ledger.accounts (id),
    credit_account_id   bigint      NOT NULL REFERENCES ledger.accounts (id),
    amount              numeric(38, 8) NOT NULL CHECK (amount > 0),
    currency            char(3)     NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    value_date          date        NOT NULL,
    counterparty        text        NOT NULL CHECK (length(counterparty) > 0),
    description         text        NOT NULL DEFAULT '',
    created_at          timestamptz NOT NULL DEFAULT now(),
    CHECK (debit_account_id <> credit_account_id)
);
CREATE INDEX transfers_by_debit ON ledger.transfers (debit_account_id);

-- Posting a transfer moves both balances in the same transaction; the currency must match both
-- accounts; a customer account may not be debited below its available cash (balance - active holds).
-- AFTER INSERT, not BEFORE: a BEFORE trigger also fires for a row that INSERT ... ON CONFLICT DO
-- NOTHING then discards, and would move the balances of a transfer that was never recorded.
-- Both account rows are locked in id order so two opposite transfers cannot deadlock, with FOR NO KEY
-- UPDATE: the INSERT's foreign keys hold FOR KEY SHARE on both rows, which FOR UPDATE would conflict
-- with (two payouts into the same clearing account would deadlock).
CREATE FUNCTION ledger.apply_transfer() RETURNS trigger LANGUAGE plpgsql AS $$
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
    IF debit.kind = 'CUSTOMER_INVESTMENT_CASH' THEN
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

CREATE TRIGGER transfers_apply AFTER INSERT ON ledger.transfers
    FOR EACH ROW EXECUTE FUNCTION ledger.apply_transfer();

-- Posted transfers are facts: corrections are new transfers, never edits.
CREATE FUNCTION ledger.refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% on ledger.% is not allowed: ledger entries are immutable', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END $$;

CREATE TRIGGER transfers_immutable BEFORE UPDATE OR DELETE ON ledger.transfers
    FOR EACH ROW EXECUTE FUNCTION ledger.refuse_change();
CREATE TRIGGER transfers_no_truncate BEFORE TRUNCATE ON ledger.transfers
    FOR EACH STATEMENT EXECUTE FUNCTION ledger.refuse_change();

-- Balances only move through transfers (the trigger above); a direct UPDATE of balance is refused
-- unless it happens inside apply_transfer (pg_trigger_depth() > 1). Opening balances are transfers
-- from a BANK_HOUSE account, which may go negative.
CREATE FUNCTION ledger.guard_balance() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.balance <> OLD.balance AND pg_trigger_depth() < 2 THEN
        RAISE EXCEPTION 'account balances change only through ledger.transfers'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF NEW.currency <> OLD.currency OR NEW.kind <> OLD.kind THEN
        RAISE EXCEPTION 'account currency and kind are fixed' USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER accounts_guard_balance BEFORE UPDATE ON ledger.accounts
    FOR EACH ROW EXECUTE FUNCTION ledger.guard_balance();

-- A hold may be released, never changed otherwise, and never deleted.
CREATE FUNCTION ledger.guard_hold() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'holds are released, not deleted' USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF OLD.released_at IS NOT NULL THEN
        RAISE EXCEPTION 'hold % is already released', OLD.id USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF NEW.amount <> OLD.amount OR NEW.account_id <> OLD.account_id OR NEW.reason <> OLD.reason
       OR NEW.created_at <> OLD.created_at THEN
        RAISE EXCEPTION 'a hold can only be released' USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER holds_guard BEFORE UPDATE OR DELETE ON ledger.holds
    FOR EACH ROW EXECUTE FUNCTION ledger.guard_hold();

-- Available cash per account: balance minus active holds.
CREATE VIEW ledger.available_balances AS
SELECT a.id, a.reference, a.currency, a.kind, a.balance,
       a.balance - coalesce((SELECT sum(h.amount) FROM ledger.holds h
                              WHERE h.account_id = a.id AND h.released_at IS NULL), 0) AS available
  FROM ledger.accounts a;
