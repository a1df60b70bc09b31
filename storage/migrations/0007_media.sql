-- The media repository (media/). Content lives in the blob store, one file
-- per distinct SHA-256; these tables say which media IDs and thumbnails
-- point at which content.

-- One row per stored blob. Placing content and deleting it both lock this
-- row, so a purge cannot delete a file that an upload of the same bytes is
-- about to reference (storage/media.go).
CREATE TABLE media_blobs (
    sha256     text PRIMARY KEY,            -- lowercase hex
    size       bigint NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- One row per media ID of this server: an upload, or an ID reserved by
-- POST /_matrix/media/v1/create whose content has not arrived (pending:
-- uploaded_at IS NULL).
CREATE TABLE media (
    media_id     text PRIMARY KEY,
    user_id      text NOT NULL,
    content_type text NOT NULL DEFAULT 'application/octet-stream',
    filename     text NOT NULL DEFAULT '',  -- '' when the upload gave none
    size         bigint,                    -- NULL while pending
    sha256       text REFERENCES media_blobs, -- NULL while pending
    created_at   timestamptz NOT NULL,
    uploaded_at  timestamptz,
    expires_at   timestamptz,               -- pending only: unused_expires_at
    -- Uploaded while unauthenticated media access was frozen: the legacy
    -- /_matrix/media/v3 download and thumbnail endpoints hide it.
    frozen       boolean NOT NULL DEFAULT false,
    CHECK ((uploaded_at IS NULL) = (sha256 IS NULL))
);
-- Quota (sum of a user's sizes) and the pending count.
CREATE INDEX media_user ON media (user_id) INCLUDE (size);
CREATE INDEX media_pending ON media (expires_at) WHERE uploaded_at IS NULL;
CREATE INDEX media_sha256 ON media (sha256);
-- weft media purge --before: by upload time (creation time while pending).
CREATE INDEX media_purge ON media ((COALESCE(uploaded_at, created_at)));

-- Thumbnails at configured sizes (width, height, method), made after an
-- upload or on first request.
CREATE TABLE media_thumbnails (
    media_id     text NOT NULL REFERENCES media ON DELETE CASCADE,
    width        integer NOT NULL,
    height       integer NOT NULL,
    method       text NOT NULL,
    content_type text NOT NULL,
    sha256       text NOT NULL REFERENCES media_blobs,
    size         bigint NOT NULL,
    PRIMARY KEY (media_id, width, height, method)
);
CREATE INDEX media_thumbnails_sha256 ON media_thumbnails (sha256);
