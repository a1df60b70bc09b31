-- End-to-end encryption: each change to a user's devices or keys (device
-- keys uploaded or changed, a device deleted, cross-signing keys or
-- signatures uploaded) gets a stream position, so /sync's device_lists and
-- GET /keys/changes can say whose keys changed between two tokens.
CREATE TABLE device_list_changes (
    stream_pos bigint NOT NULL,
    user_id    text NOT NULL,
    PRIMARY KEY (user_id, stream_pos)
);
CREATE INDEX device_list_changes_stream ON device_list_changes (stream_pos);
