-- /threads lists a room's thread roots by latest activity.
CREATE INDEX events_thread_replies ON events (room_id, stream_pos) WHERE rel_type = 'm.thread';
