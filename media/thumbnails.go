package media

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"image"
	"strconv"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"

	"github.com/weftchat/weft/media/thumbnail"
)

// ThumbnailRequest is what GET .../thumbnail asks for.
type ThumbnailRequest struct {
	Width, Height int
	Method        thumbnail.Method
	// Animated asks for an animated thumbnail. We make none (GIFs give
	// their first frame, animated WebP cannot be thumbnailed), which the
	// spec allows: the answer is the same as for animated=false.
	Animated bool
}

// Thumbnail serves a thumbnail of local image media.
//
// The request is answered from the smallest configured size at least as
// large (thumbnail.Pick): precomputed after the upload, or made now and
// kept. A request larger than every configured size gets a thumbnail made
// for it and not kept, so arbitrary sizes cannot fill the disk. Thumbnails
// are never larger than the original; a JPEG no larger than the size asked
// for is served as it is, as the spec recommends.
//
// Content we cannot thumbnail (not an image we decode, or a corrupt one)
// gets the spec's 400 M_UNKNOWN; an image over media.max_image_pixels its
// 413 M_TOO_LARGE.
func (s *Service) Thumbnail(ctx context.Context, uri id.ContentURI, req ThumbnailRequest, a Access) (*Content, error) {
	if req.Width < 1 || req.Height < 1 {
		return nil, mautrix.MInvalidParam.WithMessage("width and height must be positive")
	}
	if req.Method != thumbnail.Crop && req.Method != thumbnail.Scale {
		return nil, mautrix.MInvalidParam.WithMessage("method must be crop or scale")
	}
	rec, err := s.uploaded(ctx, uri, a)
	if err != nil {
		return nil, err
	}
	if !thumbnailable(rec.ContentType) {
		return nil, errCannotThumbnail()
	}
	// Pick falls back to the largest size when none covers the request;
	// that one would be smaller than asked, which the spec forbids.
	size, ok := thumbnail.Pick(s.cfg.ThumbnailSizes, req.Width, req.Height, req.Method)
	if ok && size.Width >= req.Width && size.Height >= req.Height {
		th, err := s.storedThumbnail(ctx, rec, size)
		if err != nil {
			return nil, err
		}
		b, err := s.openBlob(ctx, rec.MediaID, th.SHA256)
		if err != nil {
			return nil, err
		}
		return &Content{Blob: b, ContentType: th.ContentType, SHA256: th.SHA256, Modified: rec.UploadedAt}, nil
	}
	// Larger than every configured size: made for this request alone, on
	// its own context (no flight: the sizes are the client's choice, so
	// sharing would rarely help, and an abandoned request must not leave
	// work queued behind it).
	size = thumbnail.Size{Width: req.Width, Height: req.Height, Method: req.Method}
	img, format, err := s.decode(ctx, rec, true)
	if err != nil {
		return nil, err
	}
	r, err := s.render(rec, img, format, size, true)
	if err != nil {
		return nil, err
	}
	if r.original {
		return s.Download(ctx, uri, Access{Legacy: a.Legacy})
	}
	return &Content{Blob: memBlob{bytes.NewReader(r.data)}, ContentType: r.contentType, SHA256: r.hash, Modified: rec.UploadedAt}, nil
}

// adHocBudget bounds the resampling buffer of a thumbnail made for one
// request (32 bytes per thumbnail column per source row): a request near
// the size of a huge image would otherwise cost gigabytes.
const adHocBudget = 256 << 20

// rendered is a thumbnail made in memory, or the decision to serve the
// original.
type rendered struct {
	original    bool
	data        []byte
	contentType string
	hash        string
}

// hashOf is the hex SHA-256 of b.
func hashOf(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

func flightKey(mediaID string, sz thumbnail.Size) string {
	return mediaID + "/" + strconv.Itoa(sz.Width) + "x" + strconv.Itoa(sz.Height) + "/" + string(sz.Method)
}

// once runs f for key at most once at a time across all requests (the
// thumbnailing of one media ID at one size): concurrent requests for the
// same thumbnail share one decode. f runs on the service's background
// context, so one requester giving up does not fail the others; each
// requester still stops waiting when its own ctx ends.
func (s *Service) once(ctx context.Context, key string, f func(context.Context) (any, error)) (any, error) {
	ch := s.flight.DoChan(key, func() (v any, err error) {
		// DoChan runs this on a goroutine of its own, where a panic
		// would end the process; decoders recover their own, this
		// covers resizing and encoding.
		defer func() {
			if p := recover(); p != nil {
				err = fmt.Errorf("thumbnailing %s panicked: %v", key, p)
			}
		}()
		return f(s.bg)
	})
	select {
	case res := <-ch:
		return res.Val, res.Err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// storedThumbnail returns the stored thumbnail of rec at a configured size,
// making and storing it first if it is missing.
func (s *Service) storedThumbnail(ctx context.Context, rec *Record, size thumbnail.Size) (*Thumbnail, error) {
	if th, err := s.findThumbnail(ctx, rec.MediaID, size); th != nil || err != nil {
		return th, err
	}
	v, err := s.once(ctx, flightKey(rec.MediaID, size), func(ctx context.Context) (any, error) {
		// Another flight may have stored it since we looked.
		if th, err := s.findThumbnail(ctx, rec.MediaID, size); th != nil || err != nil {
			return th, err
		}
		img, format, err := s.decode(ctx, rec, true)
		if err != nil {
			return nil, err
		}
		return s.keep(ctx, rec, img, format, size)
	})
	if err != nil {
		return nil, err
	}
	return v.(*Thumbnail), nil
}

func (s *Service) findThumbnail(ctx context.Context, mediaID string, size thumbnail.Size) (*Thumbnail, error) {
	ths, err := s.store.Thumbnails(ctx, mediaID)
	if err != nil {
		return nil, fmt.Errorf("listing thumbnails of %s: %w", mediaID, err)
	}
	for i := range ths {
		if ths[i].Width == size.Width && ths[i].Height == size.Height && ths[i].Method == string(size.Method) {
			return &ths[i], nil
		}
	}
	return nil, nil
}

// decode reads and decodes rec's image, within the pixel limit. onDemand
// decodes take one of decodeSlots (background workers are bounded by
// their number instead).
func (s *Service) decode(ctx context.Context, rec *Record, onDemand bool) (image.Image, string, error) {
	if onDemand {
		select {
		case s.decodeSlots <- struct{}{}:
			defer func() { <-s.decodeSlots }()
		case <-ctx.Done():
			return nil, "", ctx.Err()
		}
	}
	b, err := s.openBlob(ctx, rec.MediaID, rec.SHA256)
	if err != nil {
		return nil, "", err
	}
	defer b.Close()
	img, format, err := thumbnail.Decode(b, max(rec.Size, 1), s.cfg.MaxImagePixels)
	switch {
	case errors.Is(err, thumbnail.ErrTooManyPixels):
		return nil, "", mautrix.MTooLarge.WithMessage("Content is too large to thumbnail")
	case errors.Is(err, thumbnail.ErrUnsupported), errors.Is(err, thumbnail.ErrCorrupt), errors.Is(err, thumbnail.ErrTooLarge):
		return nil, "", errCannotThumbnail()
	case err != nil:
		return nil, "", fmt.Errorf("decoding media %s: %w", rec.MediaID, err)
	}
	return img, format, nil
}

// render makes the thumbnail of img at size in memory, or decides that the
// original is the answer: a JPEG the thumbnail would not shrink (the spec
// asks for the original then; re-encoding would only lose quality), or, for
// a request made for itself (adHoc), a JPEG or PNG whose thumbnail would
// cost more than adHocBudget to make (it is larger than the request, so
// still a correct answer).
func (s *Service) render(rec *Record, img image.Image, format string, size thumbnail.Size, adHoc bool) (*rendered, error) {
	b := img.Bounds()
	ow, oh := thumbnail.Dimensions(b.Dx(), b.Dy(), size.Width, size.Height, size.Method)
	staticOriginal := (format == "jpeg" && baseType(rec.ContentType) == "image/jpeg") ||
		(format == "png" && baseType(rec.ContentType) == "image/png")
	original := &rendered{original: true, contentType: rec.ContentType, hash: rec.SHA256}
	if format == "jpeg" && staticOriginal && ow == b.Dx() && oh == b.Dy() {
		return original, nil
	}
	if adHoc && int64(max(ow, oh))*int64(max(b.Dx(), b.Dy()))*32 > adHocBudget {
		if staticOriginal {
			return original, nil
		}
		return nil, mautrix.MTooLarge.WithMessage("Content is too large to thumbnail at this size")
	}
	small, err := thumbnail.Resize(img, size.Width, size.Height, size.Method)
	if err != nil {
		return nil, fmt.Errorf("resizing %s: %w", rec.MediaID, err)
	}
	var buf bytes.Buffer
	ct, err := thumbnail.Encode(&buf, small)
	if err != nil {
		return nil, fmt.Errorf("encoding a thumbnail of %s: %w", rec.MediaID, err)
	}
	return &rendered{data: buf.Bytes(), contentType: ct, hash: hashOf(buf.Bytes())}, nil
}

// keep renders and stores the thumbnail of rec at a configured size.
func (s *Service) keep(ctx context.Context, rec *Record, img image.Image, format string, size thumbnail.Size) (*Thumbnail, error) {
	r, err := s.render(rec, img, format, size, false)
	if err != nil {
		return nil, err
	}
	th := Thumbnail{MediaID: rec.MediaID, Width: size.Width, Height: size.Height, Method: string(size.Method)}
	place := func() error { return nil } // the original is in place already
	if r.original {
		th.ContentType, th.SHA256, th.Size = rec.ContentType, rec.SHA256, rec.Size
	} else {
		p, err := s.blobs.Put(ctx, bytes.NewReader(r.data), int64(len(r.data)))
		if err != nil {
			return nil, fmt.Errorf("storing a thumbnail of %s: %w", rec.MediaID, err)
		}
		defer p.Discard()
		th.ContentType, th.SHA256, th.Size = r.contentType, p.Hash(), p.Size()
		place = p.Commit
	}
	if err := s.store.AddThumbnail(ctx, th, place); err != nil {
		if errors.Is(err, ErrNotFound) {
			return nil, errNotFound() // purged meanwhile
		}
		return nil, fmt.Errorf("recording a thumbnail of %s: %w", rec.MediaID, err)
	}
	return &th, nil
}

// queueThumbnails asks the background workers to precompute the configured
// sizes of a new image upload. The queue is bounded: when it is full the
// upload is skipped and its thumbnails are made on demand.
func (s *Service) queueThumbnails(rec Record) {
	if !thumbnailable(rec.ContentType) || len(s.cfg.ThumbnailSizes) == 0 {
		return
	}
	select {
	case s.thumbJobs <- rec.MediaID:
	default:
		s.log.Debug("thumbnail queue full; thumbnails will be made on demand", "media_id", rec.MediaID)
	}
}

// thumbnailWorker precomputes thumbnails until Close.
func (s *Service) thumbnailWorker() {
	defer s.bgDone.Done()
	for {
		select {
		case <-s.bg.Done():
			return
		case mediaID := <-s.thumbJobs:
			s.precompute(s.bg, mediaID)
		}
	}
}

// precompute decodes an upload once and stores every configured size it
// does not have yet. Failures are logged, not retried: a request for a
// missing size makes it on demand.
func (s *Service) precompute(ctx context.Context, mediaID string) {
	rec, err := s.store.Media(ctx, mediaID)
	if err != nil {
		return // purged meanwhile, or shutting down
	}
	img, format, err := s.decode(ctx, rec, false)
	if err != nil {
		var re mautrix.RespError
		if errors.As(err, &re) {
			s.log.Debug("not thumbnailing media", "media_id", mediaID, "reason", re.Err)
		} else if !isCtxErr(err) {
			s.log.Warn("thumbnailing media", "media_id", mediaID, "err", err)
		}
		return
	}
	for _, size := range s.cfg.ThumbnailSizes {
		_, err := s.once(ctx, flightKey(mediaID, size), func(ctx context.Context) (any, error) {
			if th, err := s.findThumbnail(ctx, mediaID, size); th != nil || err != nil {
				return th, err
			}
			return s.keep(ctx, rec, img, format, size)
		})
		if err != nil {
			if !isCtxErr(err) {
				s.log.Warn("thumbnailing media", "media_id", mediaID, "size", flightKey("", size), "err", err)
			}
			return
		}
	}
}
