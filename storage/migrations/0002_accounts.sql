-- The global stream: every change /sync reports takes its position from this
-- sequence, allocated only while holding the stream advisory lock (see
-- storage/stream.go), so positions become visible in order.
CREATE SEQUENCE stream_pos_seq AS bigint;

CREATE TABLE users (
    user_id        text PRIMARY KEY,             -- full user ID, @localpart:server
    localpart      text NOT NULL,
    password_hash  text,                         -- NULL: no password login (JWT-only or deactivated)
    is_admin       boolean NOT NULL DEFAULT false,
    is_guest       boolean NOT NULL DEFAULT false,
    deactivated    boolean NOT NULL DEFAULT false,
    created_at     timestamptz NOT NULL DEFAULT now(),
    -- brute-force lockout: failures counted from failure_window_start
    failed_logins        integer NOT NULL DEFAULT 0,
    failure_window_start timestamptz,
    locked_until         timestamptz
);
-- Login looks users up case-insensitively; registration keeps them unique that way.
CREATE UNIQUE INDEX users_localpart_lower ON users (lower(localpart));

CREATE TABLE profiles (
    user_id     text PRIMARY KEY REFERENCES users ON DELETE CASCADE,
    displayname text,
    avatar_url  text
);

CREATE TABLE devices (
    user_id      text NOT NULL REFERENCES users ON DELETE CASCADE,
    device_id    text NOT NULL,
    display_name text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_seen_at timestamptz,
    last_seen_ip text,
    PRIMARY KEY (user_id, device_id)
);

-- Refresh tokens form chains: a token issued by /refresh points at its
-- parent, which stays valid until the child or its access token is used.
CREATE TABLE refresh_tokens (
    id         bigserial PRIMARY KEY,
    token_hash bytea NOT NULL UNIQUE,           -- SHA-256 of the token; the token itself is never stored
    user_id    text NOT NULL,
    device_id  text NOT NULL,
    parent_id  bigint REFERENCES refresh_tokens ON DELETE SET NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (user_id, device_id) REFERENCES devices ON DELETE CASCADE
);

CREATE TABLE access_tokens (
    id               bigserial PRIMARY KEY,
    token_hash       bytea NOT NULL UNIQUE,     -- SHA-256 of the token
    user_id          text NOT NULL,
    device_id        text NOT NULL,
    refresh_token_id bigint REFERENCES refresh_tokens ON DELETE CASCADE,
    expires_at       timestamptz,               -- NULL: does not expire
    created_at       timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (user_id, device_id) REFERENCES devices ON DELETE CASCADE
);
CREATE INDEX access_tokens_device ON access_tokens (user_id, device_id);

-- Global (room_id = '') and per-room account data; stream_pos orders it for /sync.
CREATE TABLE account_data (
    user_id    text NOT NULL REFERENCES users ON DELETE CASCADE,
    room_id    text NOT NULL DEFAULT '',
    type       text NOT NULL,
    content    json NOT NULL,              -- json, not jsonb: kept byte for byte, and \u0000 is legal JSON
    stream_pos bigint NOT NULL,
    PRIMARY KEY (user_id, room_id, type)
);
CREATE INDEX account_data_stream ON account_data (user_id, stream_pos);

CREATE TABLE filters (
    user_id   text NOT NULL REFERENCES users ON DELETE CASCADE,
    filter_id bigserial,
    filter    json NOT NULL,
    PRIMARY KEY (user_id, filter_id)
);

-- User-interactive auth sessions. completed lists the stages done so far.
CREATE TABLE uia_sessions (
    session_id text PRIMARY KEY,
    operation  text NOT NULL,                    -- register, delete_devices, password, deactivate, ...
    user_id    text,                             -- NULL for registration
    completed  text[] NOT NULL DEFAULT '{}',
    reg_token  text,                             -- registration token reserved by this session
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);

CREATE TABLE registration_tokens (
    token        text PRIMARY KEY,
    uses_allowed integer,                       -- NULL: unlimited
    pending      integer NOT NULL DEFAULT 0,    -- reserved by UIA sessions in progress
    completed    integer NOT NULL DEFAULT 0,
    expiry_time  timestamptz                    -- NULL: never expires
);

-- Nonces for Synapse-compatible shared-secret registration: single use.
CREATE TABLE registration_nonces (
    nonce      text PRIMARY KEY,
    expires_at timestamptz NOT NULL
);
