-- The defects table the dashboard shows: one row per defect a line camera reports.
-- Run as the table's owner, then let the browser's role read it (demo.sh does both).
CREATE TABLE IF NOT EXISTS defects (
    id         bigserial PRIMARY KEY,
    camera     text NOT NULL,
    kind       text NOT NULL,
    score      numeric(5,4) NOT NULL,
    meta       jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now()
);
SELECT realtime_watch('defects');
CREATE INDEX IF NOT EXISTS defects_created_at ON defects (created_at);
