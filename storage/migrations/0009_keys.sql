-- End-to-end encryption keys. The server only stores and hands out public
-- keys; every object is kept as canonical JSON (what signatures cover), so
-- "the same key again" is a text comparison. Keys go with their device
-- (ON DELETE CASCADE), whichever path deletes it.

-- A device's identity keys, as uploaded minus "unsigned". identity is the
-- canonical JSON of its "keys" map: a device may upload it again, never
-- change it. extra_sigs holds signatures added later by POST
-- /keys/signatures/upload ({signer user: {key ID: signature}}), dropped
-- with the row or when what they signed changes.
CREATE TABLE device_keys (
    user_id    text NOT NULL,
    device_id  text NOT NULL,
    key_json   json NOT NULL,
    identity   text NOT NULL,
    extra_sigs jsonb NOT NULL DEFAULT '{}',
    PRIMARY KEY (user_id, device_id),
    FOREIGN KEY (user_id, device_id) REFERENCES devices ON DELETE CASCADE
);

-- One-time keys, handed out at most once each (a claim deletes the row) in
-- upload order (seq). key_id is the full "<algorithm>:<id>".
CREATE SEQUENCE one_time_keys_seq AS bigint;
CREATE TABLE one_time_keys (
    user_id   text NOT NULL,
    device_id text NOT NULL,
    key_id    text NOT NULL,
    algorithm text NOT NULL,
    key_json  json NOT NULL,
    seq       bigint NOT NULL DEFAULT nextval('one_time_keys_seq'),
    PRIMARY KEY (user_id, device_id, key_id),
    FOREIGN KEY (user_id, device_id) REFERENCES devices ON DELETE CASCADE
);
CREATE INDEX one_time_keys_claim ON one_time_keys (user_id, device_id, algorithm, seq);

-- At most one fallback key per device and algorithm: a new upload replaces
-- it and makes it unused; a claim that finds no one-time key hands it out
-- and marks it used, and it stays until replaced.
CREATE TABLE fallback_keys (
    user_id   text NOT NULL,
    device_id text NOT NULL,
    algorithm text NOT NULL,
    key_id    text NOT NULL,
    key_json  json NOT NULL,
    used      boolean NOT NULL DEFAULT false,
    PRIMARY KEY (user_id, device_id, algorithm),
    FOREIGN KEY (user_id, device_id) REFERENCES devices ON DELETE CASCADE
);

-- Cross-signing keys: one per user and usage. public_key is the unpadded
-- base64 ed25519 key (also its key ID after "ed25519:"). extra_sigs as on
-- device_keys: replacing the key drops them.
CREATE TABLE cross_signing_keys (
    user_id    text NOT NULL REFERENCES users ON DELETE CASCADE,
    usage      text NOT NULL CHECK (usage IN ('master', 'self_signing', 'user_signing')),
    public_key text NOT NULL,
    key_json   json NOT NULL,
    extra_sigs jsonb NOT NULL DEFAULT '{}',
    PRIMARY KEY (user_id, usage)
);
