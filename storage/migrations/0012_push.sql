-- Push: what each new event did for the local members of its room, and the
-- pushers that deliver it to phones.
--
-- A user's push rules are their m.push_rules global account data (written
-- whole by the /pushrules API, delivered by /sync like any account data).

-- What each new event did for the room's local members is written in the
-- same transaction as the event (room/push.go), so the event and the
-- counts it changes reach /sync together. In a big room most members get
-- the same outcome (a message notifies everyone but its sender), so one
-- row says what it did for every local member joined at the event
-- (event_push_summary), and only the members whose own rules gave another
-- outcome get a row of their own (event_push_exceptions: notify = false
-- for a member the event did not notify although the summary says it
-- does; notify = true for the invitee of an invite, or a member the
-- summary's outcome does not fit). One row per event instead of one per
-- member keeps a send into a 1,000-member room cheap.
--
-- thread_id is 'main' or the thread root's event ID; actions are the
-- matched rule's actions as the spec writes them; ts is the event's
-- origin_server_ts (unix ms).
CREATE TABLE event_push_summary (
    room_id    text NOT NULL,
    stream_pos bigint NOT NULL,               -- the event's position
    event_id   text NOT NULL,
    sender     text NOT NULL,                 -- never notified by the summary
    thread_id  text NOT NULL DEFAULT 'main',
    highlight  boolean NOT NULL,
    actions    json NOT NULL,
    ts         bigint NOT NULL,
    PRIMARY KEY (room_id, stream_pos)
);

CREATE TABLE event_push_exceptions (
    user_id    text NOT NULL,
    room_id    text NOT NULL,
    stream_pos bigint NOT NULL,
    event_id   text NOT NULL,
    notify     boolean NOT NULL DEFAULT true,
    thread_id  text NOT NULL DEFAULT 'main',
    highlight  boolean NOT NULL,
    actions    json NOT NULL,
    ts         bigint NOT NULL,
    PRIMARY KEY (user_id, room_id, stream_pos)
);
CREATE INDEX event_push_exceptions_user_pos ON event_push_exceptions (user_id, stream_pos);
-- A room's outcomes between two positions, for every member at once.
CREATE INDEX event_push_exceptions_room_pos ON event_push_exceptions (room_id, stream_pos);

-- member_since is, for a member event in the current state, the position
-- where the user's current membership began: a join that only changes a
-- display name or avatar keeps it (storage/rooms.go).
ALTER TABLE current_state ADD COLUMN member_since bigint;
UPDATE current_state c SET member_since = e.stream_pos FROM events e
    WHERE e.event_id = c.event_id AND c.type = 'm.room.member';

-- event_push_actions is every (user, event) notification: the summary for
-- each user joined now since before the event (so they were a member when
-- it was evaluated), unless an exception says otherwise, plus the
-- exceptions that notify. A user who left and joined again sees only what
-- came after the join. Rows stay after they are read: /notifications
-- lists them with "read". Read it with user_id given: the planner pushes it
-- into both branches (current_state_member, event_push_exceptions' keys).
CREATE VIEW event_push_actions AS
    SELECT m.state_key AS user_id, s.room_id, s.stream_pos, s.event_id, s.thread_id, s.highlight, s.actions, s.ts
    FROM event_push_summary s
    JOIN current_state m ON m.room_id = s.room_id AND m.type = 'm.room.member' AND m.membership = 'join'
        AND m.state_key <> s.sender AND m.member_since < s.stream_pos
    WHERE NOT EXISTS (SELECT 1 FROM event_push_exceptions x
        WHERE x.user_id = m.state_key AND x.room_id = s.room_id AND x.stream_pos = s.stream_pos)
    UNION ALL
    SELECT user_id, room_id, stream_pos, event_id, thread_id, highlight, actions, ts
    FROM event_push_exceptions WHERE notify;

-- A user's own events (not state: a profile change reads nothing) mark
-- what came before them as read (spec, "Marking notifications as read"):
-- the newest own event per room is found here.
CREATE INDEX events_room_sender ON events (room_id, sender, stream_pos);

-- HTTP pushers. A pusher belongs to the device that set it (deleted with
-- it); (app_id, pushkey) is unique per user. last_pos is the delivery
-- cursor: every notification of the user at or below it was delivered,
-- skipped (the device was syncing) or given up on, so a restart resumes
-- after it and delivers in order.
CREATE TABLE pushers (
    user_id             text NOT NULL,
    app_id              text NOT NULL,
    pushkey             text NOT NULL,
    device_id           text NOT NULL,
    kind                text NOT NULL,
    app_display_name    text NOT NULL,
    device_display_name text NOT NULL,
    profile_tag         text NOT NULL DEFAULT '',
    lang                text NOT NULL,
    data                json NOT NULL,
    pushkey_ts          bigint NOT NULL,      -- unix ms the pushkey was set
    last_pos            bigint NOT NULL,
    failing_since       bigint,               -- unix ms of the first failed attempt of the current notification
    PRIMARY KEY (user_id, app_id, pushkey),
    FOREIGN KEY (user_id, device_id) REFERENCES devices ON DELETE CASCADE
);
CREATE INDEX pushers_key ON pushers (app_id, pushkey);
