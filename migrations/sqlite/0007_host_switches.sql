-- The host-wide kill switch, one row: it survives restarts (see the PostgreSQL migration).
CREATE TABLE host_switches (
    id            INTEGER PRIMARY KEY CHECK (id = 1),
    kill          INTEGER NOT NULL DEFAULT 0 CHECK (kill IN (0, 1)),
    updated_at_ms INTEGER NOT NULL DEFAULT (CAST(unixepoch('subsec') * 1000 AS INTEGER)),
    updated_by    TEXT
);
INSERT INTO host_switches (id) VALUES (1);
