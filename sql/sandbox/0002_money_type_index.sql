-- The full-book listing (`money_type eq 'REAL_MONEY'`, paged by offset in id order) reads this index
-- alone however deep the page (an index-only scan once the table is vacuumed): the job's
-- `batch reconcile --book` pages through every portfolio. The string is a bound parameter; PostgreSQL
-- plans a one-shot statement with its value, which matches the predicate.
CREATE INDEX portfolios_real_money ON sandbox.portfolios (id)
    WHERE (search_doc #>> '{money_type}') = 'REAL_MONEY';
