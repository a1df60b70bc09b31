package storage

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"maunium.net/go/mautrix/id"

	"github.com/weftchat/weft/media"
)

// Media implements media.Store over the media, media_thumbnails and
// media_blobs tables (migration 0007).
//
// Locks, always taken in this order within a transaction, so no two
// transactions wait for each other in a cycle:
//  1. the uploader's advisory lock (mediaUserLock, hash of the user ID),
//     serialising a user's quota and pending-count checks with their inserts;
//  2. a media row (FOR UPDATE: finishing a pending upload; purging);
//  3. a blob row (media_blobs, by upsert or FOR UPDATE): placing content
//     and deleting it exclude each other per hash.
//
// The place callback (moving content into the blob store) runs last in its
// transaction, after every row is written and checked: a refused row moves
// no file, and only a failed COMMIT can leave a file no row names.
//
// Inserting a row that references a blob takes a key-share lock on it,
// which FOR UPDATE in DeleteBlobIfUnused also waits for.
type Media struct{ db *DB }

// Media returns the media metadata store.
func (db *DB) Media() *Media { return &Media{db: db} }

var _ media.Store = (*Media)(nil)

// mediaUserLock is the first key of the two-key advisory locks on a user's
// media (the two-key space does not overlap the one-key locks used for the
// stream and migrations).
const mediaUserLock = 0x6d656469 // "medi"

func lockMediaUser(ctx context.Context, tx pgx.Tx, user id.UserID) error {
	if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1, hashtext($2))", int32(mediaUserLock), string(user)); err != nil {
		return fmt.Errorf("locking media of %s: %w", user, err)
	}
	return nil
}

// checkQuota refuses when user's uploads plus extra would exceed quota.
// The user's lock must be held.
func checkQuota(ctx context.Context, tx pgx.Tx, user id.UserID, extra, quota int64) error {
	if quota <= 0 {
		return nil
	}
	var used int64
	if err := tx.QueryRow(ctx, "SELECT COALESCE(sum(size), 0) FROM media WHERE user_id = $1", string(user)).Scan(&used); err != nil {
		return fmt.Errorf("reading media usage: %w", err)
	}
	if used+extra > quota {
		return media.ErrQuotaExceeded
	}
	return nil
}

// lockBlob locks (creating) the blob row of hash. The caller runs place
// after its own writes, just before committing: every constraint has been
// checked by then, so a refused row moves no file into place.
func lockBlob(ctx context.Context, tx pgx.Tx, hash string, size int64) error {
	_, err := tx.Exec(ctx, `INSERT INTO media_blobs (sha256, size) VALUES ($1, $2)
		ON CONFLICT (sha256) DO UPDATE SET size = EXCLUDED.size`, hash, size)
	if err != nil {
		return fmt.Errorf("locking media blob: %w", err)
	}
	return nil
}

func (m *Media) AddMedia(ctx context.Context, rec media.Record, quota int64, place func() error) error {
	return m.db.inTx(ctx, pgx.TxOptions{}, func(tx pgx.Tx) error {
		if quota > 0 {
			if err := lockMediaUser(ctx, tx, rec.UserID); err != nil {
				return err
			}
			if err := checkQuota(ctx, tx, rec.UserID, rec.Size, quota); err != nil {
				return err
			}
		}
		if err := lockBlob(ctx, tx, rec.SHA256, rec.Size); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `INSERT INTO media
			(media_id, user_id, content_type, filename, size, sha256, created_at, uploaded_at, frozen)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)`,
			rec.MediaID, string(rec.UserID), rec.ContentType, rec.FileName, rec.Size, rec.SHA256,
			rec.CreatedAt, rec.UploadedAt, rec.Frozen)
		if err != nil {
			return fmt.Errorf("inserting media: %w", err)
		}
		return place()
	})
}

func (m *Media) CreatePending(ctx context.Context, rec media.Record, maxPending int) error {
	return m.db.inTx(ctx, pgx.TxOptions{}, func(tx pgx.Tx) error {
		if err := lockMediaUser(ctx, tx, rec.UserID); err != nil {
			return err
		}
		var n int
		var next *time.Time
		err := tx.QueryRow(ctx, `SELECT count(*), min(expires_at) FROM media
			WHERE user_id = $1 AND uploaded_at IS NULL AND expires_at > $2`,
			string(rec.UserID), rec.CreatedAt).Scan(&n, &next)
		if err != nil {
			return fmt.Errorf("counting pending media: %w", err)
		}
		if n >= maxPending {
			e := &media.TooManyPendingError{NextExpiry: rec.CreatedAt}
			if next != nil {
				e.NextExpiry = *next
			}
			return e
		}
		_, err = tx.Exec(ctx, `INSERT INTO media (media_id, user_id, created_at, expires_at)
			VALUES ($1, $2, $3, $4)`, rec.MediaID, string(rec.UserID), rec.CreatedAt, rec.ExpiresAt)
		if err != nil {
			return fmt.Errorf("inserting pending media: %w", err)
		}
		return nil
	})
}

func (m *Media) FinishPending(ctx context.Context, rec media.Record, quota int64, place func() error) error {
	return m.db.inTx(ctx, pgx.TxOptions{}, func(tx pgx.Tx) error {
		if quota > 0 {
			if err := lockMediaUser(ctx, tx, rec.UserID); err != nil {
				return err
			}
		}
		var owner string
		var uploaded, expires *time.Time
		err := tx.QueryRow(ctx, `SELECT user_id, uploaded_at, expires_at FROM media WHERE media_id = $1 FOR UPDATE`,
			rec.MediaID).Scan(&owner, &uploaded, &expires)
		switch {
		case errors.Is(err, pgx.ErrNoRows):
			return media.ErrNotFound
		case err != nil:
			return fmt.Errorf("locking pending media: %w", err)
		case owner != string(rec.UserID):
			return media.ErrNotOwner
		case uploaded != nil:
			return media.ErrAlreadyUploaded
		case expires == nil || !expires.After(rec.UploadedAt):
			return media.ErrNotFound
		}
		if err := checkQuota(ctx, tx, rec.UserID, rec.Size, quota); err != nil {
			return err
		}
		if err := lockBlob(ctx, tx, rec.SHA256, rec.Size); err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `UPDATE media SET content_type = $2, filename = $3, size = $4, sha256 = $5,
			uploaded_at = $6, expires_at = NULL, frozen = $7 WHERE media_id = $1`,
			rec.MediaID, rec.ContentType, rec.FileName, rec.Size, rec.SHA256, rec.UploadedAt, rec.Frozen)
		if err != nil {
			return fmt.Errorf("storing pending media: %w", err)
		}
		return place()
	})
}

func (m *Media) Media(ctx context.Context, mediaID string) (*media.Record, error) {
	var rec media.Record
	var user string
	var size *int64
	var hash *string
	var uploaded, expires *time.Time
	err := m.db.pool.QueryRow(ctx, `SELECT media_id, user_id, content_type, filename, size, sha256,
			created_at, uploaded_at, expires_at, frozen
		FROM media WHERE media_id = $1`, mediaID).
		Scan(&rec.MediaID, &user, &rec.ContentType, &rec.FileName, &size, &hash,
			&rec.CreatedAt, &uploaded, &expires, &rec.Frozen)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, media.ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("reading media: %w", err)
	}
	rec.UserID = id.UserID(user)
	if size != nil {
		rec.Size = *size
	}
	if hash != nil {
		rec.SHA256 = *hash
	}
	if uploaded != nil {
		rec.UploadedAt = *uploaded
	}
	if expires != nil {
		rec.ExpiresAt = *expires
	}
	return &rec, nil
}

func (m *Media) Usage(ctx context.Context, user id.UserID) (int64, error) {
	var used int64
	err := m.db.pool.QueryRow(ctx, "SELECT COALESCE(sum(size), 0) FROM media WHERE user_id = $1", string(user)).Scan(&used)
	if err != nil {
		return 0, fmt.Errorf("reading media usage: %w", err)
	}
	return used, nil
}

// DeleteExpiredPending races FinishPending safely: a row it has locked and
// uploaded no longer matches "uploaded_at IS NULL" when the DELETE
// re-checks it after the lock is released.
func (m *Media) DeleteExpiredPending(ctx context.Context, now time.Time) (int64, error) {
	tag, err := m.db.pool.Exec(ctx, `DELETE FROM media WHERE uploaded_at IS NULL AND expires_at <= $1`, now)
	if err != nil {
		return 0, fmt.Errorf("deleting expired pending media: %w", err)
	}
	return tag.RowsAffected(), nil
}

func (m *Media) Thumbnails(ctx context.Context, mediaID string) ([]media.Thumbnail, error) {
	rows, err := m.db.pool.Query(ctx, `SELECT media_id, width, height, method, content_type, sha256, size
		FROM media_thumbnails WHERE media_id = $1 ORDER BY width, height, method`, mediaID)
	if err != nil {
		return nil, fmt.Errorf("listing thumbnails: %w", err)
	}
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (media.Thumbnail, error) {
		var th media.Thumbnail
		err := row.Scan(&th.MediaID, &th.Width, &th.Height, &th.Method, &th.ContentType, &th.SHA256, &th.Size)
		return th, err
	})
}

func (m *Media) AddThumbnail(ctx context.Context, th media.Thumbnail, place func() error) error {
	err := m.db.inTx(ctx, pgx.TxOptions{}, func(tx pgx.Tx) error {
		if err := lockBlob(ctx, tx, th.SHA256, th.Size); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `INSERT INTO media_thumbnails (media_id, width, height, method, content_type, sha256, size)
			VALUES ($1, $2, $3, $4, $5, $6, $7)
			ON CONFLICT (media_id, width, height, method) DO UPDATE SET
				content_type = EXCLUDED.content_type, sha256 = EXCLUDED.sha256, size = EXCLUDED.size`,
			th.MediaID, th.Width, th.Height, th.Method, th.ContentType, th.SHA256, th.Size)
		if err != nil {
			return fmt.Errorf("inserting thumbnail: %w", err)
		}
		return place()
	})
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "23503" { // foreign key: the media row is gone
		return media.ErrNotFound
	}
	return err
}

func (m *Media) CountMediaBefore(ctx context.Context, t time.Time) (int64, error) {
	var n int64
	if err := m.db.pool.QueryRow(ctx, "SELECT count(*) FROM media WHERE COALESCE(uploaded_at, created_at) < $1", t).Scan(&n); err != nil {
		return 0, fmt.Errorf("counting media: %w", err)
	}
	return n, nil
}

// DeleteMediaBefore skips rows another transaction holds (a pending upload
// finishing): the next batch, or the next purge, gets them.
func (m *Media) DeleteMediaBefore(ctx context.Context, t time.Time, limit int) (int, []string, error) {
	var n int
	var hashes []string
	err := m.db.inTx(ctx, pgx.TxOptions{}, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `SELECT media_id FROM media WHERE COALESCE(uploaded_at, created_at) < $1
			ORDER BY COALESCE(uploaded_at, created_at), media_id LIMIT $2 FOR UPDATE SKIP LOCKED`, t, limit)
		if err != nil {
			return fmt.Errorf("selecting media to purge: %w", err)
		}
		ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return fmt.Errorf("selecting media to purge: %w", err)
		}
		if len(ids) == 0 {
			return nil
		}
		rows, err = tx.Query(ctx, `WITH gone AS (
				DELETE FROM media_thumbnails WHERE media_id = ANY($1) RETURNING sha256
			) SELECT DISTINCT sha256 FROM gone`, ids)
		if err != nil {
			return fmt.Errorf("deleting thumbnails: %w", err)
		}
		thumbs, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return fmt.Errorf("deleting thumbnails: %w", err)
		}
		rows, err = tx.Query(ctx, `WITH gone AS (
				DELETE FROM media WHERE media_id = ANY($1) RETURNING sha256
			) SELECT DISTINCT sha256 FROM gone WHERE sha256 IS NOT NULL`, ids)
		if err != nil {
			return fmt.Errorf("deleting media: %w", err)
		}
		own, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return fmt.Errorf("deleting media: %w", err)
		}
		n = len(ids)
		seen := map[string]bool{}
		for _, h := range append(own, thumbs...) {
			if !seen[h] {
				seen[h] = true
				hashes = append(hashes, h)
			}
		}
		return nil
	})
	if err != nil {
		return 0, nil, err
	}
	return n, hashes, nil
}

func (m *Media) DeleteBlobIfUnused(ctx context.Context, hash string, remove func() error) (bool, int64, error) {
	var deleted bool
	var size int64
	err := m.db.inTx(ctx, pgx.TxOptions{}, func(tx pgx.Tx) error {
		err := tx.QueryRow(ctx, "SELECT size FROM media_blobs WHERE sha256 = $1 FOR UPDATE", hash).Scan(&size)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil // someone else removed it
		}
		if err != nil {
			return fmt.Errorf("locking media blob: %w", err)
		}
		// A new statement, so a new snapshot: it sees every reference
		// committed by whoever held the lock before us.
		var used bool
		err = tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM media WHERE sha256 = $1)
			OR EXISTS (SELECT 1 FROM media_thumbnails WHERE sha256 = $1)`, hash).Scan(&used)
		if err != nil {
			return fmt.Errorf("checking media blob references: %w", err)
		}
		if used {
			return nil
		}
		if _, err := tx.Exec(ctx, "DELETE FROM media_blobs WHERE sha256 = $1", hash); err != nil {
			return fmt.Errorf("deleting media blob row: %w", err)
		}
		// The file goes last, still under the lock: if deleting it fails
		// the row stays (rolled back) and the next purge tries again.
		if err := remove(); err != nil {
			return err
		}
		deleted = true
		return nil
	})
	if err != nil {
		return false, 0, err
	}
	if !deleted {
		size = 0
	}
	return deleted, size, nil
}

func (m *Media) UnusedBlobs(ctx context.Context, limit int) ([]string, error) {
	rows, err := m.db.pool.Query(ctx, `SELECT sha256 FROM media_blobs b
		WHERE NOT EXISTS (SELECT 1 FROM media WHERE sha256 = b.sha256)
		  AND NOT EXISTS (SELECT 1 FROM media_thumbnails WHERE sha256 = b.sha256)
		ORDER BY sha256 LIMIT $1`, limit)
	if err != nil {
		return nil, fmt.Errorf("listing unreferenced media blobs: %w", err)
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}
