package media

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"
)

// Access says how media is being asked for.
type Access struct {
	// Legacy marks the unauthenticated /_matrix/media/v3 endpoints, which
	// serve no media uploaded while the freeze is on.
	Legacy bool
	// Wait is how long to wait for content not yet uploaded (timeout_ms);
	// capped at MaxWait.
	Wait time.Duration
}

// Content is media (or a thumbnail) ready to serve. The caller closes it.
type Content struct {
	Blob
	ContentType string
	// FileName is the upload's file name ("" for none).
	FileName string
	// SHA256 identifies the bytes (a strong ETag).
	SHA256 string
	// Modified is when the content was uploaded or made.
	Modified time.Time
}

// pollInterval is how often a waiting download looks for content uploaded
// through another process (uploads in this process wake it at once).
const pollInterval = time.Second

// Download opens local media for serving. Media of other servers is
// M_NOT_FOUND: fetching remote media needs federation, which Weft does not
// have yet; this is where that will go.
func (s *Service) Download(ctx context.Context, uri id.ContentURI, a Access) (*Content, error) {
	rec, err := s.uploaded(ctx, uri, a)
	if err != nil {
		return nil, err
	}
	b, err := s.openBlob(ctx, rec.MediaID, rec.SHA256)
	if err != nil {
		return nil, err
	}
	return &Content{Blob: b, ContentType: rec.ContentType, FileName: rec.FileName, SHA256: rec.SHA256, Modified: rec.UploadedAt}, nil
}

// openBlob opens content that mediaID's row (or one of its thumbnails)
// named when it was read. The content can be gone since, only if a purge
// deleted the media meanwhile: that is M_NOT_FOUND; content missing under a
// row that still exists is lost data, an internal error.
func (s *Service) openBlob(ctx context.Context, mediaID, hash string) (Blob, error) {
	b, err := s.blobs.Open(ctx, hash)
	if errors.Is(err, ErrBlobNotFound) {
		if _, err := s.store.Media(ctx, mediaID); errors.Is(err, ErrNotFound) {
			return nil, errNotFound()
		}
		return nil, fmt.Errorf("media %s: its content %s is missing from the blob store", mediaID, hash)
	}
	if err != nil {
		return nil, fmt.Errorf("opening the content of media %s: %w", mediaID, err)
	}
	return b, nil
}

// uploaded returns the record of local, visible, uploaded media, waiting up
// to a.Wait for pending content.
func (s *Service) uploaded(ctx context.Context, uri id.ContentURI, a Access) (*Record, error) {
	if !s.local(uri) {
		return nil, errNotFound()
	}
	wait := min(max(a.Wait, 0), MaxWait)
	deadline := time.NewTimer(wait)
	defer deadline.Stop()
	var w *waiter
	defer func() { s.release(uri.FileID, w) }()
	for {
		rec, err := s.store.Media(ctx, uri.FileID)
		if errors.Is(err, ErrNotFound) {
			return nil, errNotFound()
		}
		if err != nil {
			return nil, fmt.Errorf("reading media %s: %w", uri.FileID, err)
		}
		if a.Legacy && s.cfg.FreezeUnauthenticated && (rec.Frozen || rec.Pending()) {
			// A pending ID is refused at once: its content will arrive
			// during the freeze.
			return nil, errNotFound()
		}
		if !rec.Pending() {
			return rec, nil
		}
		if !rec.ExpiresAt.After(s.now()) {
			return nil, errNotFound()
		}
		if w == nil {
			// Register, then read again: an upload committing between
			// the first read and the wait still wakes us.
			w = s.register(uri.FileID)
			continue
		}
		poll := time.NewTimer(pollInterval)
		select {
		case <-w.ch:
			w = nil // wake removed it
		case <-poll.C:
		case <-deadline.C:
			poll.Stop()
			return nil, mautrix.RespError{ErrCode: "M_NOT_YET_UPLOADED", Err: "Content has not yet been uploaded"}
		case <-ctx.Done():
			poll.Stop()
			return nil, ctx.Err()
		}
		poll.Stop()
	}
}

// waiter is the downloads of one pending media ID waiting in this process.
type waiter struct {
	ch chan struct{} // closed by wake
	n  int           // registered downloads, under Service.waitMu
}

// register adds a download waiting for mediaID's content.
func (s *Service) register(mediaID string) *waiter {
	s.waitMu.Lock()
	defer s.waitMu.Unlock()
	w, ok := s.waiters[mediaID]
	if !ok {
		w = &waiter{ch: make(chan struct{})}
		s.waiters[mediaID] = w
	}
	w.n++
	return w
}

// release removes a download that stopped waiting (nil: none); the last one
// out drops the entry, unless wake already did (and perhaps a newer entry
// took its place).
func (s *Service) release(mediaID string, w *waiter) {
	if w == nil {
		return
	}
	s.waitMu.Lock()
	defer s.waitMu.Unlock()
	w.n--
	if w.n == 0 && s.waiters[mediaID] == w {
		delete(s.waiters, mediaID)
	}
}

// wake tells downloads waiting for mediaID that its content is here.
func (s *Service) wake(mediaID string) {
	s.waitMu.Lock()
	defer s.waitMu.Unlock()
	if w, ok := s.waiters[mediaID]; ok {
		close(w.ch)
		delete(s.waiters, mediaID)
	}
}

// memBlob is a Blob over bytes (a thumbnail made for one request).
type memBlob struct{ *bytes.Reader }

func (memBlob) Close() error  { return nil }
func (m memBlob) Size() int64 { return m.Reader.Size() }
