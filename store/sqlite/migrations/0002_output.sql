-- A handler's recorded output (JSON), kept across attempts.
ALTER TABLE herald_jobs ADD COLUMN output BLOB;
