-- A room's forward extremities become a column of its room_heads row.
--
-- Every batch that writes a room rewrote its forward_extremities rows (a
-- delete and an insert, two foreign-key checks per row, and a dead row
-- and dead index entries left for vacuum each time) besides updating its
-- room_heads row. The extremities now travel in that same update, and
-- the heads read of LockRooms reads one row per room instead of a
-- subquery over an index full of dead entries. The array is kept in
-- event ID order, the order the old read produced.
ALTER TABLE room_heads ADD COLUMN extremities text[] NOT NULL DEFAULT '{}';
UPDATE room_heads h
    SET extremities = coalesce((SELECT array_agg(f.event_id ORDER BY f.event_id) FROM forward_extremities f WHERE f.room_id = h.room_id), '{}');
DROP TABLE forward_extremities;
