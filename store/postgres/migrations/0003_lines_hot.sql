-- A line row can be updated in place (a heap-only tuple: no new index
-- entries) when a finished head hands its successor straight to a claim:
-- the line stays running, only its head changes. lines_ready indexed the
-- head's id and run_at, which such an update changes; it now indexes
-- copies that are null unless the line is ready (blocked = 0), so the
-- index sees no change while the line runs. Generated columns keep the
-- copies right whoever writes the line. fillfactor leaves room on each
-- page for the new row versions (the table is rewritten here; it holds one
-- row per key with work left).
ALTER TABLE {{schema}}.lines SET (fillfactor = 50);
ALTER TABLE {{schema}}.lines
    ADD COLUMN ready_at timestamptz GENERATED ALWAYS AS (CASE WHEN blocked = 0 THEN run_at END) STORED,
    ADD COLUMN ready_id bigint GENERATED ALWAYS AS (CASE WHEN blocked = 0 THEN head_id END) STORED;
DROP INDEX {{schema}}.lines_ready;
CREATE INDEX lines_ready ON {{schema}}.lines (kind, ready_at, ready_id) WHERE ready_id IS NOT NULL;
