-- Rooms and their event graph. Every event is a signed PDU stored whole.
CREATE TABLE rooms (
    room_id      text PRIMARY KEY,
    room_version text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    -- published in the room directory
    published    boolean NOT NULL DEFAULT false
);

-- State snapshots: the state of a room before an event. A snapshot is its
-- parent plus its own entries (a delta); every snapshot_rebase deltas a
-- full copy is written instead, so resolving one never walks far.
CREATE TABLE state_snapshots (
    snapshot_id bigserial PRIMARY KEY,
    room_id     text NOT NULL REFERENCES rooms,
    parent_id   bigint REFERENCES state_snapshots,
    chain_len   integer NOT NULL                  -- deltas since the last full copy
);
CREATE TABLE state_snapshot_entries (
    snapshot_id bigint NOT NULL REFERENCES state_snapshots,
    type        text NOT NULL,
    state_key   text NOT NULL,
    event_id    text NOT NULL,
    PRIMARY KEY (snapshot_id, type, state_key)
);

CREATE TABLE events (
    event_id          text PRIMARY KEY,
    room_id           text NOT NULL REFERENCES rooms,
    type              text NOT NULL,
    state_key         text,
    sender            text NOT NULL,
    depth             bigint NOT NULL,
    origin_server_ts  bigint NOT NULL,
    stream_pos        bigint NOT NULL UNIQUE,     -- position in the global stream
    -- the state of the room before this event
    state_before      bigint NOT NULL REFERENCES state_snapshots,
    pdu               json NOT NULL,              -- the signed PDU, byte for byte
    redacted_by       text,                       -- event ID of the redaction applied to it
    rejected          boolean NOT NULL DEFAULT false,
    soft_failed       boolean NOT NULL DEFAULT false,
    -- relations (m.relates_to), for /relations and aggregation
    relates_to        text,
    rel_type          text
);
CREATE INDEX events_room_pos ON events (room_id, stream_pos);
CREATE INDEX events_relates ON events (relates_to, rel_type) WHERE relates_to IS NOT NULL;

-- The current state of every room, and the membership column that makes
-- "rooms of a user" and "members of a room" index lookups.
CREATE TABLE current_state (
    room_id    text NOT NULL REFERENCES rooms,
    type       text NOT NULL,
    state_key  text NOT NULL,
    event_id   text NOT NULL REFERENCES events,
    membership text,                              -- for m.room.member
    PRIMARY KEY (room_id, type, state_key)
);
CREATE INDEX current_state_member ON current_state (state_key, membership) WHERE type = 'm.room.member';

-- The current snapshot of every room (state before the next event).
CREATE TABLE room_heads (
    room_id     text PRIMARY KEY REFERENCES rooms,
    snapshot_id bigint NOT NULL REFERENCES state_snapshots,
    depth       bigint NOT NULL
);

-- Forward extremities: the events with no children yet, the next event's prev_events.
CREATE TABLE forward_extremities (
    room_id  text NOT NULL REFERENCES rooms,
    event_id text NOT NULL REFERENCES events,
    PRIMARY KEY (room_id, event_id)
);

-- Transaction IDs of client sends: a retry returns the same event.
CREATE TABLE event_txns (
    user_id   text NOT NULL,
    device_id text NOT NULL,
    txn_id    text NOT NULL,
    event_id  text NOT NULL REFERENCES events,
    PRIMARY KEY (user_id, device_id, txn_id)
);

-- Room aliases (#alias:server -> room).
CREATE TABLE room_aliases (
    alias      text PRIMARY KEY,
    room_id    text NOT NULL REFERENCES rooms,
    creator    text NOT NULL
);
CREATE INDEX room_aliases_room ON room_aliases (room_id);

-- Users' forgotten rooms.
CREATE TABLE forgotten_rooms (
    user_id text NOT NULL,
    room_id text NOT NULL,
    PRIMARY KEY (user_id, room_id)
);
