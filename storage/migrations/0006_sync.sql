-- /sync: a user's membership history, newest first per room.
CREATE INDEX events_member_user ON events (state_key, stream_pos) WHERE type = 'm.room.member';

-- The transaction ID of a device's own send, shown to that device in /sync.
CREATE INDEX event_txns_event ON event_txns (event_id);

-- Read receipts: the newest receipt of each user per room, receipt type and
-- thread ('' = unthreaded). Private receipts (m.read.private) are only ever
-- shown to their owner.
CREATE TABLE receipts (
    room_id      text NOT NULL REFERENCES rooms,
    user_id      text NOT NULL,
    receipt_type text NOT NULL,
    thread_id    text NOT NULL DEFAULT '',
    event_id     text NOT NULL,
    ts           bigint NOT NULL,
    stream_pos   bigint NOT NULL,
    PRIMARY KEY (room_id, user_id, receipt_type, thread_id)
);
CREATE INDEX receipts_stream ON receipts (room_id, stream_pos);

-- Presence of each user who ever set one.
CREATE TABLE presence (
    user_id          text PRIMARY KEY,
    state            text NOT NULL,             -- online, unavailable, offline
    status_msg       text,
    last_active_ts   bigint NOT NULL,           -- unix ms of the last activity
    last_sync_ts     bigint NOT NULL DEFAULT 0, -- unix ms of the last /sync (drift to offline)
    stream_pos       bigint NOT NULL
);
CREATE INDEX presence_stream ON presence (stream_pos);
