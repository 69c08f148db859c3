-- Jobs and their per-key lines. Times are Unix microseconds.
-- state: 0 scheduled, 1 available, 3 retryable, 4 completed, 5 discarded, 6 cancelled.
-- Running is not stored: one process owns the file and tracks its claims in
-- memory, so a running job keeps its pending state and finished-attempt count.
-- head = 1 marks the front of a key's line; only heads are claimed. Unordered
-- jobs (key '') are always heads. A discarded job that blocks its key stays head.
CREATE TABLE herald_jobs (
    id              INTEGER PRIMARY KEY,
    kind            TEXT    NOT NULL,
    key             TEXT    NOT NULL DEFAULT '',
    payload         BLOB    NOT NULL,
    state           INTEGER NOT NULL,
    head            INTEGER NOT NULL DEFAULT 0,
    attempt         INTEGER NOT NULL DEFAULT 0,
    max_attempts    INTEGER NOT NULL,
    run_at          INTEGER NOT NULL,
    due_at          INTEGER NOT NULL,
    idempotency_key TEXT,
    errors          TEXT,
    created_at      INTEGER NOT NULL,
    started_at      INTEGER,
    finished_at     INTEGER
);

-- At most one head per ordered key: the invariant per-key FIFO rests on.
CREATE UNIQUE INDEX herald_jobs_head ON herald_jobs (key) WHERE head = 1 AND key <> '';
-- A key's unfinished jobs in line order: used to pick the next head.
CREATE INDEX herald_jobs_line ON herald_jobs (key, due_at, id) WHERE state < 4;
-- Claimable heads per kind, oldest first.
CREATE INDEX herald_jobs_ready ON herald_jobs (kind, run_at, id) WHERE head = 1 AND state IN (0, 1, 3);
CREATE UNIQUE INDEX herald_jobs_idempotency ON herald_jobs (idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX herald_jobs_finished ON herald_jobs (finished_at) WHERE state >= 4;
