package urlpreview

import (
	"context"
	"errors"
	"fmt"

	"github.com/weftchat/weft/media"
)

// ForMedia is the media domain's PreviewFetcher over f, translating f's
// errors into the domain's kinds (which the domain answers 403, 504 or 502
// from), with f's error kept in the chain for the logs.
func ForMedia(f *Fetcher) media.PreviewFetcher { return mediaFetcher{f} }

type mediaFetcher struct{ f *Fetcher }

func (a mediaFetcher) Fetch(ctx context.Context, rawURL string) (*media.FetchedPage, error) {
	res, err := a.f.Fetch(ctx, rawURL)
	if err != nil {
		return nil, mediaErr(err)
	}
	return &media.FetchedPage{URL: res.URL, ContentType: res.ContentType, OpenGraph: res.OpenGraph, Image: res.Image}, nil
}

func (a mediaFetcher) FetchImage(ctx context.Context, imageURL string, maxBytes int64) ([]byte, error) {
	img, _, err := a.f.FetchImage(ctx, imageURL, maxBytes)
	if err != nil {
		return nil, mediaErr(err)
	}
	return img, nil
}

// mediaErr: a refused address and a URL (or redirect target) the fetcher
// will not use are both refusals; the caller's context ending is nobody's
// fault and passes through uncategorised (not cached); anything else (DNS,
// connecting, non-2xx, too large, too many redirects, a type that is not
// an image) is the remote side failing.
func mediaErr(err error) error {
	switch {
	case errors.Is(err, ErrRefused), errors.Is(err, ErrBadURL):
		return fmt.Errorf("%w: %w", media.ErrFetchRefused, err)
	case errors.Is(err, ErrTimeout):
		return fmt.Errorf("%w: %w", media.ErrFetchTimeout, err)
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return err
	}
	return fmt.Errorf("%w: %w", media.ErrFetchFailed, err)
}
