"""Planning: decide what a night (or one event) moves and record every decision — withdrawals from the
pending listing, deposits from the ledger's new credits, and withdrawal announcements from the bank's payouts."""
