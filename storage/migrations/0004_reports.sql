-- Content reports (POST /rooms/{roomId}/report[/{eventId}]), kept for the
-- operator. No foreign keys: a report outlives the room or event it names.
CREATE TABLE content_reports (
    report_id  bigserial PRIMARY KEY,
    reporter   text NOT NULL,
    room_id    text NOT NULL,
    event_id   text,                               -- NULL: the whole room is reported
    reason     text NOT NULL DEFAULT '',
    score      integer,                            -- deprecated score, -100..0
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX content_reports_created ON content_reports (created_at);
CREATE INDEX content_reports_room ON content_reports (room_id);

-- The published directory is scanned by "published", not by room_id.
CREATE INDEX rooms_published ON rooms (room_id) WHERE published;
