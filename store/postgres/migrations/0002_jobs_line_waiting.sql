-- jobs_line without running jobs. A claim's new row version then leaves
-- the index instead of adding an entry to it: one index write less per
-- job (of eight). A running job of an ordered key is its line's head
-- (lines.head_id, blocked = 2); queries that need running jobs too (the
-- repairs) add jobs_running. The index is rebuilt here, which holds
-- writes to jobs for as long as the build takes: on a large existing
-- jobs table, run `herald migrate` in a quiet moment.
DROP INDEX {{schema}}.jobs_line;
CREATE INDEX jobs_line ON {{schema}}.jobs (key, due_at, id) WHERE key <> '' AND state IN (0, 1, 3);
