"""The service layer: plan (list, check the ledger, decide), execute (drive payouts), report."""
