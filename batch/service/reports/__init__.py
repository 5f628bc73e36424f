"""Run and date reports: built from the journal and its recorded reconciliation (``build``), modelled
(``model``, ``figures``, ``deposits``, ``checks``) and rendered as text, JSON, CSV and HTML (``render``, ``view``)."""
