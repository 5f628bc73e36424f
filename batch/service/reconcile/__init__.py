"""Reconciliation: pure rules and figures (``rules``, ``figures``, ``book``) and the read-back of the journal,
the ledger and InvestSuite that feeds them (``readback``, per flow ``deposits`` and ``announcements``)."""
