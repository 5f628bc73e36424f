-- The full-book listing (`money_type eq 'REAL_MONEY'`, paged by offset in id order) reads this index
-- alone, however deep the page: the job's `batch reconcile --book` pages through every portfolio.
CREATE INDEX portfolios_by_money_type ON sandbox.portfolios ((search_doc #>> '{money_type}'), id);
