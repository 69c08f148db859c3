-- Small durable facts about the store. id_floor is the highest job id ever
-- handed out, recorded before pruning: ids are assigned in memory from the
-- highest id on disk, and must never be reused once the newest jobs are
-- pruned.
CREATE TABLE herald_meta (
    name  TEXT    PRIMARY KEY,
    value INTEGER NOT NULL
);
