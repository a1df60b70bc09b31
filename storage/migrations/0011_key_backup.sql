-- Server-side key backup (/room_keys, account/keybackup.go). The server
-- never reads auth_data or session_data: both are stored as sent (json
-- keeps the text as it came).

-- One row per backup version a user ever created. Versions count up per
-- user; a deleted one stays, without its auth_data and keys, so its number
-- is never handed out again and deleting it twice succeeds. The current
-- version is the user's highest one not deleted.
CREATE TABLE key_backup_versions (
    user_id   text NOT NULL REFERENCES users ON DELETE CASCADE,
    version   bigint NOT NULL CHECK (version > 0),
    algorithm text NOT NULL,
    auth_data json,                          -- NULL once deleted
    deleted   boolean NOT NULL DEFAULT false,
    -- key_count is the number of key_backup_keys rows of the version;
    -- etag counts the changes to them. Both are written in the
    -- transaction that changes the keys, under the user's backup lock.
    key_count bigint NOT NULL DEFAULT 0,
    etag      bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, version),
    CHECK (deleted = (auth_data IS NULL))
);

-- One key per (version, room, session): the better of the keys uploaded
-- for that session (the spec's rule, account.BetterBackupKey).
CREATE TABLE key_backup_keys (
    user_id             text NOT NULL,
    version             bigint NOT NULL,
    room_id             text NOT NULL,
    session_id          text NOT NULL,
    first_message_index bigint NOT NULL,
    forwarded_count     bigint NOT NULL,
    is_verified         boolean NOT NULL,
    session_data        json NOT NULL,
    PRIMARY KEY (user_id, version, room_id, session_id),
    FOREIGN KEY (user_id, version) REFERENCES key_backup_versions ON DELETE CASCADE
);
