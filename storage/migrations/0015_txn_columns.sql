-- A client's transaction ID becomes two columns of its event's row.
--
-- event_txns held one row per send: a heap row and two index entries
-- (the key, and event_id for /sync's lookup) beside the event's own row,
-- a quarter of what PostgreSQL spent appending a message event (pgbench
-- on the bulk append, docs/performance.md). The event row now carries
-- the device and the (scoped) transaction ID, and one partial unique
-- index keeps a retry from appending twice; /sync finds an event's
-- transaction ID by the event's primary key. The sender is the user the
-- transaction ID belongs to: every recorded ID was its event's sender's.
--
-- This rewrites the rows of the events that have a transaction ID, once.
ALTER TABLE events ADD COLUMN txn_device text, ADD COLUMN txn_id text;
UPDATE events e SET txn_device = t.device_id, txn_id = t.txn_id
    FROM event_txns t WHERE t.event_id = e.event_id;
CREATE UNIQUE INDEX events_txn ON events (sender, txn_device, txn_id) WHERE txn_id IS NOT NULL;
DROP TABLE event_txns;
