// Package media is the domain of the media repository: mxc:// IDs, uploads
// (direct and asynchronous), size limits and per-user quotas, downloads,
// thumbnails, and purging old media. It knows nothing of HTTP or SQL: api
// calls it, storage implements the Store it declares, and the bytes live in
// a BlobStore (LocalBlobs: a directory under data_dir).
//
// Durability: an upload is acknowledged only after its content is durable
// (fsynced, renamed into place, directory fsynced) and then its row is
// committed, so a crash at any moment loses no acknowledged upload; a crash
// before the row commits leaves at most a stray file.
package media

import (
	"context"
	"errors"
	"log/slog"
	"mime"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"

	"github.com/weftchat/weft/media/thumbnail"
)

// Config is the part of the server configuration the media domain uses.
type Config struct {
	// ServerName is this server's name, the authority of its mxc:// URIs.
	ServerName string
	// MaxUploadSize is the largest upload accepted, in bytes.
	MaxUploadSize int64
	// UserQuota is the most bytes one user may have uploaded in total;
	// 0 means no quota.
	UserQuota int64
	// MaxPendingUploads is how many unexpired, not yet uploaded media IDs
	// (POST /_matrix/media/v1/create) one user may hold.
	MaxPendingUploads int
	// UnusedExpiry is how long a created media ID waits for its content.
	UnusedExpiry time.Duration
	// MaxImagePixels: images with more pixels are never decoded.
	MaxImagePixels int64
	// ThumbnailSizes are precomputed for every image upload, and requests
	// are answered from the smallest of them that is large enough.
	ThumbnailSizes []thumbnail.Size
	// FreezeUnauthenticated: media uploaded while set is served only on
	// the authenticated endpoints (spec v1.11 "freeze").
	FreezeUnauthenticated bool
	// ThumbnailWorkers bounds how many images are decoded at once, in
	// the background and on demand each (0: half the CPUs, at least 1).
	// Peak decoding memory is about 2 * workers * 16 bytes * MaxImagePixels.
	ThumbnailWorkers int
}

// DefaultThumbnailSizes are the sizes the spec says servers should produce.
var DefaultThumbnailSizes = []thumbnail.Size{
	{Width: 32, Height: 32, Method: thumbnail.Crop},
	{Width: 96, Height: 96, Method: thumbnail.Crop},
	{Width: 320, Height: 240, Method: thumbnail.Scale},
	{Width: 640, Height: 480, Method: thumbnail.Scale},
	{Width: 800, Height: 600, Method: thumbnail.Scale},
}

// MaxWait caps how long a download of content not yet uploaded waits
// (timeout_ms): the spec asks servers to impose a maximum.
const MaxWait = 60 * time.Second

// DefaultWait is the spec's default timeout_ms.
const DefaultWait = 20 * time.Second

// thumbQueueLen bounds the uploads waiting for background thumbnails;
// beyond it an upload gets its thumbnails on demand instead.
const thumbQueueLen = 256

// Service implements the media repository.
type Service struct {
	cfg   Config
	store Store
	blobs BlobStore
	log   *slog.Logger
	now   func() time.Time

	// waiters are closed when a pending media ID of this process receives
	// its content; downloads waiting on it wake at once (other processes'
	// uploads are found by polling).
	waitMu  sync.Mutex
	waiters map[string]*waiter

	// decodeSlots bounds on-demand thumbnail generation; the background
	// workers are ThumbnailWorkers goroutines of their own.
	decodeSlots chan struct{}
	flight      singleflight.Group
	thumbJobs   chan string
	bg          context.Context
	stopBG      context.CancelFunc
	bgDone      sync.WaitGroup
	closeOnce   sync.Once
}

// New builds the service and starts its background thumbnail workers; call
// Close to stop them. now may be nil (time.Now).
func New(cfg Config, store Store, blobs BlobStore, log *slog.Logger, now func() time.Time) *Service {
	if now == nil {
		now = time.Now
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if cfg.ThumbnailWorkers <= 0 {
		cfg.ThumbnailWorkers = max(1, runtime.GOMAXPROCS(0)/2)
	}
	// Zero values get the configuration's defaults, so a partly filled
	// Config (tests, tools) cannot refuse every upload or decode.
	if cfg.UnusedExpiry <= 0 {
		cfg.UnusedExpiry = 24 * time.Hour
	}
	if cfg.MaxUploadSize <= 0 {
		cfg.MaxUploadSize = 100 << 20
	}
	if cfg.MaxPendingUploads <= 0 {
		cfg.MaxPendingUploads = 10
	}
	if cfg.MaxImagePixels <= 0 {
		cfg.MaxImagePixels = 32_000_000
	}
	s := &Service{
		cfg: cfg, store: store, blobs: blobs, log: log, now: now,
		waiters:     map[string]*waiter{},
		decodeSlots: make(chan struct{}, cfg.ThumbnailWorkers),
		thumbJobs:   make(chan string, thumbQueueLen),
	}
	s.bg, s.stopBG = context.WithCancel(context.Background())
	for range cfg.ThumbnailWorkers {
		s.bgDone.Add(1)
		go s.thumbnailWorker()
	}
	return s
}

// Close stops the background thumbnail workers, abandoning queued work
// (those thumbnails are made on demand later), and waits for them.
func (s *Service) Close() {
	s.closeOnce.Do(func() {
		s.stopBG()
		s.bgDone.Wait()
	})
}

// ServerName is the authority of this server's mxc:// URIs.
func (s *Service) ServerName() string { return s.cfg.ServerName }

// MaxUploadSize is the largest upload accepted (m.upload.size).
func (s *Service) MaxUploadSize() int64 { return s.cfg.MaxUploadSize }

// local reports whether uri names media of this server with a well-formed
// ID. Everything else is answered M_NOT_FOUND: remote media needs
// federation (fetching it from its origin and caching it, the cache time
// counting as its upload for the freeze), which Weft does not have yet.
func (s *Service) local(uri id.ContentURI) bool {
	return uri.Homeserver == s.cfg.ServerName && ValidMediaID(uri.FileID)
}

// Matrix errors of the media endpoints.
func errNotFound() error { return mautrix.MNotFound.WithMessage("Media not found") }

func errTooLarge(limit int64) error {
	return mautrix.MTooLarge.WithMessage("Cannot upload files larger than " + formatBytes(limit))
}

func errQuota() error {
	return mautrix.MForbidden.WithMessage("This upload would exceed your media quota")
}

func errCannotThumbnail() error {
	// The spec's 400 for content the server cannot thumbnail carries
	// M_UNKNOWN; the status is explicit since M_UNKNOWN is otherwise a 500.
	return mautrix.RespError{ErrCode: "M_UNKNOWN", Err: "Cannot generate thumbnails for the requested content", StatusCode: 400}
}

// normalContentType keeps the uploader's Content-Type when it parses as a
// media type, and stores application/octet-stream when it is missing or
// unparseable (the spec allows that fallback on download).
func normalContentType(ct string) string {
	ct = strings.TrimSpace(ct)
	if ct == "" || len(ct) > 255 {
		return "application/octet-stream"
	}
	if _, _, err := mime.ParseMediaType(ct); err != nil {
		return "application/octet-stream"
	}
	return ct
}

// baseType is the lowercased media type without parameters.
func baseType(ct string) string {
	mt, _, err := mime.ParseMediaType(ct)
	if err != nil {
		return ""
	}
	return mt
}

// inlineTypes are the spec's types safe to serve with
// Content-Disposition: inline ("Serving inline content").
var inlineTypes = map[string]bool{
	"text/css": true, "text/plain": true, "text/csv": true,
	"application/json": true, "application/ld+json": true,
	"image/jpeg": true, "image/gif": true, "image/png": true, "image/apng": true,
	"image/webp": true, "image/avif": true,
	"video/mp4": true, "video/webm": true, "video/ogg": true, "video/quicktime": true,
	"audio/mp4": true, "audio/webm": true, "audio/aac": true, "audio/mpeg": true,
	"audio/ogg": true, "audio/wave": true, "audio/wav": true, "audio/x-wav": true,
	"audio/x-pn-wav": true, "audio/flac": true, "audio/x-flac": true,
}

// InlineSafe reports whether content of this type may be served inline;
// anything else is served as an attachment.
func InlineSafe(contentType string) bool { return inlineTypes[baseType(contentType)] }

// thumbnailable reports whether we try to decode content of this type.
func thumbnailable(contentType string) bool {
	switch baseType(contentType) {
	case "image/jpeg", "image/png", "image/gif", "image/webp":
		return true
	}
	return false
}

// formatBytes renders n in binary units for messages ("100 MiB", "3.2 GiB").
func formatBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return strconv.FormatInt(n, 10) + " bytes"
	}
	units := []string{"KiB", "MiB", "GiB", "TiB", "PiB", "EiB"}
	v := float64(n) / unit
	i := 0
	for v >= unit && i < len(units)-1 {
		v /= unit
		i++
	}
	return strings.TrimSuffix(strconv.FormatFloat(v, 'f', 1, 64), ".0") + " " + units[i]
}

// FormatBytes renders a byte count for people ("3.2 GiB").
func FormatBytes(n int64) string { return formatBytes(n) }

// isCtxErr reports a cancelled or timed-out context.
func isCtxErr(err error) bool {
	return errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)
}
