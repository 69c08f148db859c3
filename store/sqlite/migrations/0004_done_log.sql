-- Completions of ordered jobs not yet written into their rows: one row per
-- store cycle, body = JSON [[id, attempt, started_at], ...], at = their
-- finish time. Folded into herald_jobs in batches and deleted (done.go).
CREATE TABLE herald_done_log (
    seq  INTEGER PRIMARY KEY,
    at   INTEGER NOT NULL,
    body TEXT    NOT NULL
);
