-- The foreign keys checked for every message event go.
--
-- A foreign-key check is a query per inserted row (an SPI plan run by a
-- trigger) that also locks the referenced row FOR KEY SHARE, and every
-- message event paid three: its room, its state snapshot, and the event
-- its transaction ID names. Measured with pgbench on the bulk append of
-- eight events (docs/performance.md), they were 13-30% of its time. The
-- references are the writer's own invariants, kept in one transaction:
-- an event is appended only to a room the batch has locked (or created),
-- on a snapshot the batch read from the room's head or wrote itself, and
-- an event's transaction ID is inserted by the statement that inserts
-- the event. Nothing deletes rooms, snapshots or events.
ALTER TABLE events DROP CONSTRAINT events_room_id_fkey;
ALTER TABLE events DROP CONSTRAINT events_state_before_fkey;
ALTER TABLE event_txns DROP CONSTRAINT event_txns_event_id_fkey;
