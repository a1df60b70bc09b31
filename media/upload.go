package media

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"
)

// Upload is content a user sends.
type Upload struct {
	User id.UserID
	// ContentType as sent; empty or unparseable is stored as
	// application/octet-stream.
	ContentType string
	// FileName is the filename query parameter ("" for none).
	FileName string
	// Length is the declared size (Content-Length), or -1 when unknown.
	Length int64
	// Body is read once, streamed to disk; never buffered whole.
	Body io.Reader
}

// maxFileNameLen bounds stored file names (in bytes).
const maxFileNameLen = 1024

// check validates what can be validated before reading the body.
func (s *Service) check(ctx context.Context, u *Upload) error {
	if !utf8.ValidString(u.FileName) || strings.ContainsRune(u.FileName, 0) || len(u.FileName) > maxFileNameLen {
		return mautrix.MInvalidParam.WithMessage("filename must be valid UTF-8 without NUL, at most " + strconv.Itoa(maxFileNameLen) + " bytes")
	}
	if u.Length > s.cfg.MaxUploadSize {
		return errTooLarge(s.cfg.MaxUploadSize)
	}
	if s.cfg.UserQuota > 0 && u.Length > 0 {
		// An early refusal saves receiving a body that cannot be kept;
		// the check that counts is the one in the store's transaction.
		used, err := s.store.Usage(ctx, u.User)
		if err != nil {
			return fmt.Errorf("reading media usage of %s: %w", u.User, err)
		}
		if used+u.Length > s.cfg.UserQuota {
			return errQuota()
		}
	}
	return nil
}

// receive streams the body into a pending blob.
func (s *Service) receive(ctx context.Context, u Upload) (PendingBlob, error) {
	p, err := s.blobs.Put(ctx, u.Body, s.cfg.MaxUploadSize)
	if errors.Is(err, ErrTooLarge) {
		return nil, errTooLarge(s.cfg.MaxUploadSize)
	}
	if err != nil {
		return nil, err
	}
	return p, nil
}

// Upload stores content under a new media ID (POST /_matrix/media/v3/upload).
// It returns only once the content is durable and its row committed.
func (s *Service) Upload(ctx context.Context, u Upload) (id.ContentURI, error) {
	if err := s.check(ctx, &u); err != nil {
		return id.ContentURI{}, err
	}
	mediaID, err := newMediaID()
	if err != nil {
		return id.ContentURI{}, err
	}
	p, err := s.receive(ctx, u)
	if err != nil {
		return id.ContentURI{}, err
	}
	defer p.Discard()
	now := s.now()
	rec := Record{
		MediaID: mediaID, UserID: u.User,
		ContentType: normalContentType(u.ContentType), FileName: u.FileName,
		Size: p.Size(), SHA256: p.Hash(),
		CreatedAt: now, UploadedAt: now,
		Frozen: s.cfg.FreezeUnauthenticated,
	}
	err = s.store.AddMedia(ctx, rec, s.cfg.UserQuota, p.Commit)
	if errors.Is(err, ErrQuotaExceeded) {
		return id.ContentURI{}, errQuota()
	}
	if err != nil {
		return id.ContentURI{}, fmt.Errorf("storing media %s: %w", mediaID, err)
	}
	s.queueThumbnails(rec)
	return id.ContentURI{Homeserver: s.cfg.ServerName, FileID: mediaID}, nil
}

// Create reserves a media ID for content uploaded later
// (POST /_matrix/media/v1/create), returning it and when it expires unused.
func (s *Service) Create(ctx context.Context, user id.UserID) (id.ContentURI, time.Time, error) {
	mediaID, err := newMediaID()
	if err != nil {
		return id.ContentURI{}, time.Time{}, err
	}
	now := s.now()
	rec := Record{MediaID: mediaID, UserID: user, CreatedAt: now, ExpiresAt: now.Add(s.cfg.UnusedExpiry)}
	err = s.store.CreatePending(ctx, rec, s.cfg.MaxPendingUploads)
	var tooMany *TooManyPendingError
	if errors.As(err, &tooMany) {
		return id.ContentURI{}, time.Time{}, errTooManyPending(tooMany.NextExpiry.Sub(now))
	}
	if err != nil {
		return id.ContentURI{}, time.Time{}, fmt.Errorf("creating media ID: %w", err)
	}
	return id.ContentURI{Homeserver: s.cfg.ServerName, FileID: mediaID}, rec.ExpiresAt, nil
}

// errTooManyPending is the spec's 429 for a user at the pending limit,
// telling them when their oldest pending ID expires.
func errTooManyPending(wait time.Duration) error {
	wait = max(wait, time.Millisecond)
	ms := (wait + time.Millisecond - 1) / time.Millisecond
	secs := (wait + time.Second - 1) / time.Second
	return mautrix.RespError{
		ErrCode:     "M_LIMIT_EXCEEDED",
		Err:         "Too many pending uploads: upload content to the media IDs you created, or wait for them to expire",
		ExtraData:   map[string]any{"retry_after_ms": int64(ms)},
		ExtraHeader: map[string]string{"Retry-After": strconv.FormatInt(int64(secs), 10)},
	}
}

// UploadTo stores the content of a media ID made by Create
// (PUT /_matrix/media/v3/upload/{serverName}/{mediaId}). Only its creator
// may, once, before it expires.
func (s *Service) UploadTo(ctx context.Context, uri id.ContentURI, u Upload) error {
	if !s.local(uri) {
		return errNotFound()
	}
	// Refuse early what the transaction would refuse, before receiving
	// the body; the transaction checks again, since this read can race.
	rec, err := s.store.Media(ctx, uri.FileID)
	if err := s.pendingErr(rec, err, u.User); err != nil {
		return err
	}
	if err := s.check(ctx, &u); err != nil {
		return err
	}
	p, err := s.receive(ctx, u)
	if err != nil {
		return err
	}
	defer p.Discard()
	now := s.now()
	done := Record{
		MediaID: uri.FileID, UserID: u.User,
		ContentType: normalContentType(u.ContentType), FileName: u.FileName,
		Size: p.Size(), SHA256: p.Hash(),
		UploadedAt: now, Frozen: s.cfg.FreezeUnauthenticated,
	}
	err = s.store.FinishPending(ctx, done, s.cfg.UserQuota, p.Commit)
	if err := s.pendingErr(nil, err, u.User); err != nil {
		return err
	}
	s.wake(uri.FileID)
	done.CreatedAt = rec.CreatedAt
	s.queueThumbnails(done)
	return nil
}

// pendingErr maps the state of a pending ID (or a store error) to the
// spec's answers for PUT /upload/{serverName}/{mediaId}.
func (s *Service) pendingErr(rec *Record, err error, user id.UserID) error {
	switch {
	case errors.Is(err, ErrNotFound):
		return mautrix.MNotFound.WithMessage("Unknown or expired media ID")
	case errors.Is(err, ErrNotOwner):
		return mautrix.MForbidden.WithMessage("This media ID was created by another user")
	case errors.Is(err, ErrAlreadyUploaded):
		return errCannotOverwrite()
	case errors.Is(err, ErrQuotaExceeded):
		return errQuota()
	case err != nil:
		return fmt.Errorf("storing pending media: %w", err)
	case rec == nil:
		return nil
	case rec.UserID != user:
		return mautrix.MForbidden.WithMessage("This media ID was created by another user")
	case !rec.Pending():
		return errCannotOverwrite()
	case !rec.ExpiresAt.After(s.now()):
		return mautrix.MNotFound.WithMessage("Unknown or expired media ID")
	}
	return nil
}

func errCannotOverwrite() error {
	return mautrix.RespError{ErrCode: "M_CANNOT_OVERWRITE_MEDIA", Err: "Media already uploaded"}
}

// ExpirePending deletes pending media IDs whose time ran out. Expired IDs
// are refused whether or not this has run; it only reclaims the rows.
func (s *Service) ExpirePending(ctx context.Context) (int64, error) {
	n, err := s.store.DeleteExpiredPending(ctx, s.now())
	if err != nil {
		return 0, fmt.Errorf("deleting expired pending media: %w", err)
	}
	return n, nil
}

// RunExpiry calls ExpirePending every interval until ctx ends.
func (s *Service) RunExpiry(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		n, err := s.ExpirePending(ctx)
		switch {
		case err != nil && !isCtxErr(err):
			s.log.Warn("media expiry", "err", err)
		case n > 0:
			s.log.Info("expired unused media IDs", "count", n)
		}
	}
}
