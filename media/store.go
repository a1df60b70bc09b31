package media

import (
	"context"
	"errors"
	"time"

	"maunium.net/go/mautrix/id"
)

// Record is one media ID: an upload, or an ID created for an asynchronous
// upload whose content has not arrived yet (pending).
type Record struct {
	MediaID string
	UserID  id.UserID
	// ContentType as uploaded (application/octet-stream when none was given).
	ContentType string
	// FileName is the upload's filename parameter ("" when none was given).
	FileName string
	Size     int64
	// SHA256 is the blob's hash, "" while pending.
	SHA256    string
	CreatedAt time.Time
	// UploadedAt is when the content arrived; zero while pending.
	UploadedAt time.Time
	// ExpiresAt is when a pending ID stops accepting content (the
	// create response's unused_expires_at); zero once uploaded.
	ExpiresAt time.Time
	// Frozen records that the content arrived while unauthenticated media
	// access was frozen: the legacy /_matrix/media/v3 download and
	// thumbnail endpoints do not serve it (spec v1.11).
	Frozen bool
}

// Pending reports whether the content has not been uploaded yet.
func (r *Record) Pending() bool { return r.UploadedAt.IsZero() }

// Thumbnail is a stored thumbnail of a media ID at one configured size.
type Thumbnail struct {
	MediaID string
	// Width, Height and Method are the configured size it was made for
	// (the key), not the pixel size of the result, which never exceeds
	// the original's.
	Width, Height int
	Method        string
	ContentType   string
	SHA256        string
	Size          int64
}

// Store is the metadata the media domain needs, in PostgreSQL
// (storage.Media implements it).
//
// Blob lifetime: every blob that a row references has a blob entry, and
// the store serialises, per hash, placing content (the place callbacks,
// which run PendingBlob.Commit) against deleting it (DeleteBlobIfUnused's
// remove callback). A purge that removes a blob's last reference and an
// upload of the same bytes therefore cannot interleave so that the upload's
// row points at a deleted file.
type Store interface {
	// AddMedia records a finished upload. In one transaction it takes the
	// uploader's lock, refuses with ErrQuotaExceeded when quota > 0 and the
	// user's total would exceed it, locks rec.SHA256's blob entry
	// (creating it), inserts the row and, last before committing, runs
	// place. Nothing is written when place fails.
	AddMedia(ctx context.Context, rec Record, quota int64, place func() error) error
	// CreatePending records a pending media ID, unless the user already
	// has maxPending unexpired pending IDs at rec.CreatedAt: then it
	// returns a *TooManyPendingError.
	CreatePending(ctx context.Context, rec Record, maxPending int) error
	// FinishPending stores the content of a pending ID created by
	// rec.UserID: rec carries the content fields and UploadedAt. Errors:
	// ErrNotFound (unknown, or expired at rec.UploadedAt), ErrNotOwner,
	// ErrAlreadyUploaded, ErrQuotaExceeded. Blob placement as in AddMedia.
	FinishPending(ctx context.Context, rec Record, quota int64, place func() error) error
	// Media returns a media ID's record, pending or not; ErrNotFound.
	Media(ctx context.Context, mediaID string) (*Record, error)
	// Usage is the total size of the user's uploads.
	Usage(ctx context.Context, user id.UserID) (int64, error)
	// DeleteExpiredPending removes pending IDs that expired before now
	// and returns how many.
	DeleteExpiredPending(ctx context.Context, now time.Time) (int64, error)

	// Thumbnails lists a media ID's stored thumbnails.
	Thumbnails(ctx context.Context, mediaID string) ([]Thumbnail, error)
	// AddThumbnail stores a thumbnail (replacing one of the same size),
	// placing its blob as AddMedia does. ErrNotFound when the media ID is
	// gone (purged meanwhile).
	AddThumbnail(ctx context.Context, th Thumbnail, place func() error) error

	// CountMediaBefore counts the media uploaded before t, and the
	// pending IDs created before t.
	CountMediaBefore(ctx context.Context, t time.Time) (int64, error)
	// DeleteMediaBefore deletes up to limit of those (oldest first), with
	// their thumbnails, and returns how many it deleted and the blobs
	// they referenced. The blobs themselves are left to
	// DeleteBlobIfUnused.
	DeleteMediaBefore(ctx context.Context, t time.Time, limit int) (int, []string, error)
	// DeleteBlobIfUnused deletes hash's blob entry and runs remove (which
	// deletes the content) if no media or thumbnail references it, all
	// under the hash's lock; remove failing keeps the entry. It reports
	// whether it deleted the blob, and its size.
	DeleteBlobIfUnused(ctx context.Context, hash string, remove func() error) (bool, int64, error)
	// UnusedBlobs lists up to limit blob entries no row references (left
	// by a purge that was interrupted).
	UnusedBlobs(ctx context.Context, limit int) ([]string, error)
}

// Store errors.
var (
	ErrNotFound        = errors.New("media: not found")
	ErrNotOwner        = errors.New("media: pending media belongs to another user")
	ErrAlreadyUploaded = errors.New("media: content already uploaded")
	ErrQuotaExceeded   = errors.New("media: upload quota exceeded")
	// ErrTooLarge is content over the size limit.
	ErrTooLarge = errors.New("media: content too large")
)

// TooManyPendingError is CreatePending refusing a user who has too many
// pending uploads.
type TooManyPendingError struct {
	// NextExpiry is when the user's oldest pending ID expires, freeing a slot.
	NextExpiry time.Time
}

func (e *TooManyPendingError) Error() string { return "media: too many pending uploads" }
