-- herald's SQLite schema. Times are Unix microseconds.
--
-- Jobs are written once and then mostly updated in place. The per-key line
-- lives in herald_lines: one row per ordered key with work left, pointing at
-- its head. Finishing a head advances the pointer along herald_jobs_line, so
-- the hot path touches one job row and one line row and no job index.
--
-- state: 0 scheduled, 1 available, 3 retryable, 4 completed, 5 discarded,
-- 6 cancelled. Running is not stored: one process owns the file and keeps
-- its claims in memory, so a running job keeps its pending state and its
-- count of finished attempts.
CREATE TABLE herald_jobs (
    id              INTEGER PRIMARY KEY,
    kind            TEXT    NOT NULL,
    key             TEXT    NOT NULL DEFAULT '',
    -- kh identifies key's line: a 64-bit hash of key, 0 for unordered jobs.
    -- Integer seeks cost a fraction of text ones here. Two keys that collide
    -- share one line: both stay in order, they only lose parallelism.
    kh              INTEGER NOT NULL DEFAULT 0,
    payload         BLOB    NOT NULL,
    state           INTEGER NOT NULL,
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

-- Every ordered job in line order (due_at, id), finished ones included until
-- pruned. It names only columns that never change on the hot path.
CREATE INDEX herald_jobs_line ON herald_jobs (kh, due_at, id);
-- Unordered jobs waiting to run, oldest first.
-- (Its predicate names key, not kh: a partial index on kh = 0 makes SQLite
-- re-prepare every statement that binds kh, once per call.)
CREATE INDEX herald_jobs_unordered ON herald_jobs (kind, run_at, id) WHERE key = '' AND state IN (0, 1, 3);
CREATE UNIQUE INDEX herald_jobs_idempotency ON herald_jobs (idempotency_key) WHERE idempotency_key IS NOT NULL;
-- Finalized jobs by age, for retention.
CREATE INDEX herald_jobs_finished ON herald_jobs (finished_at) WHERE state >= 4;

-- The front of each ordered key's line. kind and run_at are the head's.
-- blocked: 0 ready or waiting for run_at; 1 the head is a dead letter holding
-- the key for an operator; 2 a job of the line runs in this process (reset
-- when the store is opened: claims do not survive the process).
CREATE TABLE herald_lines (
    kh      INTEGER PRIMARY KEY,
    key     TEXT    NOT NULL,
    head_id INTEGER NOT NULL,
    kind    TEXT    NOT NULL,
    run_at  INTEGER NOT NULL,
    blocked INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX herald_lines_ready ON herald_lines (kind, run_at, head_id) WHERE blocked = 0;
