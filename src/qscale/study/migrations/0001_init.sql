-- qscale study store, schema 1: the store's own tables (result tables are created from each study's
-- Table definitions). Portable SQL: runs on SQLite and PostgreSQL alike.
CREATE TABLE IF NOT EXISTS task_failures (
    task_id TEXT PRIMARY KEY,
    label TEXT NOT NULL,
    error TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    created_at DOUBLE PRECISION NOT NULL
);
