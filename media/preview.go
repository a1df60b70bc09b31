package media

// URL previews: GET /_matrix/client/v1/media/preview_url.
//
// The domain decides what a preview is and how often a URL may be fetched;
// the fetching itself (and the refusal to reach private addresses) is a
// PreviewFetcher's, which cmd builds over internal/urlpreview.
//
// Ownership: a preview's image is stored as ordinary media of this server,
// owned by the server's own preview process (previewOwner), not by the user
// who asked. It does not count toward any user's quota (one user's preview
// is shared by everyone who previews the same URL, so charging the first
// asker would be arbitrary) and is bounded instead by the per-user fetch
// rate, the fetch size cap and the cache. It is purged like any other media
// by `weft media purge`.

import (
	"bytes"
	"container/list"
	"context"
	"errors"
	"fmt"
	"image"
	"image/gif"
	"image/jpeg"
	"image/png"
	"maps"
	"math"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/image/webp"
	"golang.org/x/sync/singleflight"
	"golang.org/x/time/rate"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"
)

// PreviewFetcher fetches the URLs users ask to preview. Implementations
// must refuse to connect to addresses the server should not reach (checked
// on the address dialled, for every redirect) and bound time and size.
//
// Errors must match (errors.Is) ErrFetchRefused, ErrFetchTimeout or
// ErrFetchFailed; anything else (the context ending) is treated as an
// internal failure and not cached.
type PreviewFetcher interface {
	// Fetch fetches rawURL, an absolute http(s) URL without credentials.
	Fetch(ctx context.Context, rawURL string) (*FetchedPage, error)
	// FetchImage downloads an image (a page's og:image) of at most
	// maxBytes; a body that is not an image is ErrFetchFailed.
	FetchImage(ctx context.Context, imageURL string, maxBytes int64) ([]byte, error)
}

// FetchedPage is what a PreviewFetcher found at a URL.
type FetchedPage struct {
	// URL is the final URL, after redirects.
	URL string
	// ContentType is the media type, lower case, without parameters.
	ContentType string
	// OpenGraph holds an HTML page's og:* properties (og:image an absolute
	// http(s) URL; width and height int64); empty for other types.
	OpenGraph map[string]any
	// Image is the body when the URL is itself an image; nil otherwise.
	Image []byte
}

// PreviewFetcher errors.
var (
	// ErrFetchRefused: the URL or an address it resolved or redirected to
	// is not allowed (a private address, a bad redirect target).
	ErrFetchRefused = errors.New("media: preview fetch refused")
	// ErrFetchTimeout: the fetch took longer than the fetcher allows.
	ErrFetchTimeout = errors.New("media: preview fetch timed out")
	// ErrFetchFailed: the remote side failed (DNS, connection, non-2xx,
	// too large, too many redirects, not the type asked for).
	ErrFetchFailed = errors.New("media: preview fetch failed")
)

// PreviewConfig tunes a Previewer. Zero fields take the defaults below.
type PreviewConfig struct {
	// TTL is how long a preview is reused for everyone (default 1 h).
	TTL time.Duration
	// FailureTTL is how long a failed fetch is remembered, so a broken or
	// refused URL cannot be used to make the server hammer a site (default
	// 1 min). A page whose og:image could not be fetched is kept this long
	// too, so the image gets another chance soon.
	FailureTTL time.Duration
	// MaxEntries and MaxCacheBytes bound the cache (pages and images
	// together; defaults 10,000 and 32 MiB, sizes estimated from the
	// keys and values held). The least recently used go first.
	MaxEntries    int
	MaxCacheBytes int64
	// MaxImageBytes caps a preview image; it is never above the media
	// repository's MaxUploadSize (default: that).
	MaxImageBytes int64
	// MaxFetches bounds fetches running at once, across all users
	// (default 8). Each may hold up to the fetcher's size cap in memory.
	MaxFetches int
	// UserRate and UserBurst limit the previews one user can make the
	// server fetch (cache hits are free): UserBurst at once, then UserRate
	// a second (defaults 0.5 and 20).
	UserRate  float64
	UserBurst int
}

// Preview defaults.
const (
	DefaultPreviewTTL        = time.Hour
	DefaultPreviewFailureTTL = time.Minute
	defaultPreviewEntries    = 10_000
	defaultPreviewCacheBytes = 32 << 20
	defaultPreviewFetches    = 8
	defaultPreviewUserRate   = 0.5
	defaultPreviewUserBurst  = 20

	// maxPreviewURLLen bounds the url parameter; longer is M_INVALID_PARAM.
	maxPreviewURLLen = 8 << 10
	// maxLimiterUsers is how many per-user buckets are held before full
	// (idle) ones are swept.
	maxLimiterUsers = 10_000
)

// previewOwnerLocalpart owns stored preview images. Localparts starting
// with "_" cannot be registered (account.validLocalpart), so no user's
// quota or pending uploads are mixed with them.
const previewOwnerLocalpart = "_weft_url_preview"

// Previewer answers preview_url: the OpenGraph data of a URL, with its
// image stored as media of this server. Results, failures included, are
// cached in memory (per process; a restart or another process fetches
// again) and shared by all users; concurrent requests for one URL share one
// fetch. Safe for concurrent use; Close stops fetches in progress.
type Previewer struct {
	svc   *Service
	fetch PreviewFetcher
	cfg   PreviewConfig
	owner id.UserID
	cache *previewCache

	// flight joins concurrent loads of one key ("page <url>" or
	// "image <url>"). A load runs on bg, not on a caller's context: a
	// caller who leaves stops waiting, but the fetch finishes and is
	// cached for the others (bounded by the fetcher's timeout).
	flight  singleflight.Group
	slots   chan struct{}
	bg      context.Context
	stop    context.CancelFunc
	closeMu sync.Mutex
	closed  bool
	running sync.WaitGroup // loads in progress

	limMu  sync.Mutex
	limits map[id.UserID]*rate.Limiter
}

// NewPreviewer builds a Previewer storing images through svc.
func NewPreviewer(svc *Service, fetcher PreviewFetcher, cfg PreviewConfig) *Previewer {
	if cfg.TTL <= 0 {
		cfg.TTL = DefaultPreviewTTL
	}
	if cfg.FailureTTL <= 0 {
		cfg.FailureTTL = DefaultPreviewFailureTTL
	}
	if cfg.MaxEntries <= 0 {
		cfg.MaxEntries = defaultPreviewEntries
	}
	if cfg.MaxCacheBytes <= 0 {
		cfg.MaxCacheBytes = defaultPreviewCacheBytes
	}
	if cfg.MaxImageBytes <= 0 || cfg.MaxImageBytes > svc.cfg.MaxUploadSize {
		cfg.MaxImageBytes = svc.cfg.MaxUploadSize
	}
	if cfg.MaxFetches <= 0 {
		cfg.MaxFetches = defaultPreviewFetches
	}
	if !(cfg.UserRate > 0) {
		cfg.UserRate = defaultPreviewUserRate
	}
	if cfg.UserBurst <= 0 {
		cfg.UserBurst = defaultPreviewUserBurst
	}
	p := &Previewer{
		svc: svc, fetch: fetcher, cfg: cfg,
		owner:  id.NewUserID(previewOwnerLocalpart, svc.cfg.ServerName),
		cache:  &previewCache{maxEntries: cfg.MaxEntries, maxBytes: cfg.MaxCacheBytes, byKey: map[string]*list.Element{}},
		slots:  make(chan struct{}, cfg.MaxFetches),
		limits: map[id.UserID]*rate.Limiter{},
	}
	p.bg, p.stop = context.WithCancel(context.Background())
	return p
}

// Owner is the user ID stored preview images belong to.
func (p *Previewer) Owner() id.UserID { return p.owner }

// Close cancels fetches in progress and waits for them; call it before
// the media Service closes and before the database goes away. Previews
// asked for afterwards fail.
func (p *Previewer) Close() {
	p.closeMu.Lock()
	p.closed = true
	p.closeMu.Unlock()
	p.stop()
	p.running.Wait()
}

// enter counts a load in running unless Close has begun. Checking closed
// under closeMu orders every Add before Close's Wait, as WaitGroup needs.
func (p *Previewer) enter() bool {
	p.closeMu.Lock()
	defer p.closeMu.Unlock()
	if p.closed {
		return false
	}
	p.running.Add(1)
	return true
}

// Preview returns the spec's preview_url response for rawURL: og:*
// properties, og:image an mxc:// URI with og:image:type/width/height and
// matrix:image:size, or an empty object for a type that has no preview.
// ts is ignored: the spec lets a server return a newer preview than asked
// for, and we only keep the newest.
func (p *Previewer) Preview(ctx context.Context, user id.UserID, rawURL string, ts int64) (map[string]any, error) {
	target, err := normalizePreviewURL(rawURL)
	if err != nil {
		return nil, err
	}
	key := "page " + target
	if v, err, ok := p.cache.get(key, p.svc.now()); ok {
		return previewResult(v, err)
	}
	if err := p.allow(user); err != nil {
		return nil, err
	}
	ch := p.flight.DoChan(key, func() (any, error) {
		if !p.enter() {
			return nil, errors.New("URL previews: shutting down")
		}
		defer p.running.Done()
		return p.loadPage(key, target)
	})
	select {
	case r := <-ch:
		return previewResult(r.Val, r.Err)
	case <-ctx.Done():
		return nil, fmt.Errorf("waiting for the preview of %s: %w", redactedHost(target), ctx.Err())
	}
}

// previewResult copies a cached preview, so callers cannot change the
// cache's copy.
func previewResult(v any, err error) (map[string]any, error) {
	if err != nil {
		return nil, err
	}
	return maps.Clone(v.(map[string]any)), nil
}

// loadPage fetches and builds the preview of target and caches the
// outcome. It runs once per key at a time (flight) on p.bg.
func (p *Previewer) loadPage(key, target string) (any, error) {
	// A load that finished between the caller's cache miss and joining
	// the flight has cached its result: use it, so a URL is fetched at
	// most once per TTL.
	if v, err, ok := p.cache.get(key, p.svc.now()); ok {
		return v, err
	}
	ctx := p.bg
	var page *FetchedPage
	err := p.withSlot(ctx, func() (err error) {
		page, err = p.fetch.Fetch(ctx, target)
		return err
	})
	if err != nil {
		return nil, p.failed(key, target, err)
	}
	og, ttl, err := p.build(ctx, page)
	if err != nil {
		return nil, p.failed(key, target, err)
	}
	p.cache.put(key, og, nil, p.svc.now().Add(ttl), entryCost(key, og))
	return og, nil
}

// build turns a fetched page into the response object and how long to
// cache it.
func (p *Previewer) build(ctx context.Context, page *FetchedPage) (map[string]any, time.Duration, error) {
	if page.Image != nil {
		if int64(len(page.Image)) > p.cfg.MaxImageBytes {
			return nil, 0, fmt.Errorf("%w: image of %d bytes over the %d byte limit", ErrFetchFailed, len(page.Image), p.cfg.MaxImageBytes)
		}
		img, err := p.storeImage(ctx, page.Image)
		if errors.Is(err, errNotPreviewImage) {
			// An image type we do not store (SVG, AVIF, a lie): no
			// preview, which the spec allows ("may be empty").
			return map[string]any{}, p.cfg.TTL, nil
		}
		if err != nil {
			return nil, 0, err
		}
		og := map[string]any{}
		img.into(og)
		return og, p.cfg.TTL, nil
	}
	og := maps.Clone(page.OpenGraph)
	if og == nil {
		og = map[string]any{}
	}
	// Clients load og:image from us (an mxc URI), never from the remote
	// site: these alternative remote URLs would send them there.
	delete(og, "og:image:url")
	delete(og, "og:image:secure_url")
	imageURL, _ := og["og:image"].(string)
	if imageURL == "" {
		dropImage(og)
		return og, p.cfg.TTL, nil
	}
	img, err := p.image(ctx, imageURL)
	if err != nil {
		if ctx.Err() != nil {
			return nil, 0, fmt.Errorf("fetching og:image: %w", err)
		}
		if !fetchFailure(err) {
			// Not the remote site's doing (storage): the page is
			// answered without its image, so this is the only report.
			p.svc.log.Warn("storing a URL preview image", "err", err)
		}
		// The page is still worth showing; retry its image soon.
		dropImage(og)
		return og, p.cfg.FailureTTL, nil
	}
	img.into(og)
	return og, p.cfg.TTL, nil
}

// dropImage removes og:image and everything describing it.
func dropImage(og map[string]any) {
	for k := range og {
		if k == "og:image" || strings.HasPrefix(k, "og:image:") {
			delete(og, k)
		}
	}
}

// image returns the stored copy of a page's og:image, fetching it at most
// once per TTL (many pages of a site share one image).
func (p *Previewer) image(ctx context.Context, rawURL string) (*previewImage, error) {
	target, err := normalizePreviewURL(rawURL)
	if err != nil {
		return nil, fmt.Errorf("%w: og:image %v", ErrFetchRefused, err)
	}
	key := "image " + target
	if v, err, ok := p.cache.get(key, p.svc.now()); ok {
		if err != nil {
			return nil, err
		}
		return v.(*previewImage), nil
	}
	// Called from a page load, already on p.bg and counted in running.
	v, err, _ := p.flight.Do(key, func() (any, error) {
		if v, err, ok := p.cache.get(key, p.svc.now()); ok {
			return v, err
		}
		var data []byte
		err := p.withSlot(ctx, func() (err error) {
			data, err = p.fetch.FetchImage(ctx, target, p.cfg.MaxImageBytes)
			return err
		})
		if err != nil {
			return nil, p.failed(key, target, err)
		}
		img, err := p.storeImage(ctx, data)
		if errors.Is(err, errNotPreviewImage) {
			err = fmt.Errorf("%w: %w", ErrFetchFailed, err)
		}
		if err != nil {
			return nil, p.failed(key, target, err)
		}
		p.cache.put(key, img, nil, p.svc.now().Add(p.cfg.TTL), int64(len(key))+cacheEntryOverhead)
		return img, nil
	})
	if err != nil {
		return nil, err
	}
	return v.(*previewImage), nil
}

// failed maps a load's error to the client's answer and caches fetch
// failures for FailureTTL. Other errors (shutdown, storage) are not
// cached: they say nothing about the URL.
func (p *Previewer) failed(key, target string, err error) error {
	answer := previewError(err)
	if fetchFailure(err) {
		p.cache.put(key, nil, answer, p.svc.now().Add(p.cfg.FailureTTL), int64(len(key))+cacheEntryOverhead)
		if errors.Is(err, ErrFetchRefused) {
			// Possibly someone probing the server's network: worth
			// an operator's eye. The cause names the address.
			p.svc.log.Info("URL preview refused", "host", redactedHost(target), "err", err)
		} else {
			p.svc.log.Debug("URL preview failed", "host", redactedHost(target), "err", err)
		}
	}
	return answer
}

// fetchFailure reports an error the fetcher blames on the URL or the
// remote site (cached, answered 403/502/504).
func fetchFailure(err error) bool {
	return errors.Is(err, ErrFetchRefused) || errors.Is(err, ErrFetchTimeout) || errors.Is(err, ErrFetchFailed)
}

// previewError is the client's answer to a failed preview. Messages are
// generic: the cause may name an internal address, and only goes to logs
// (it stays in the chain for errors.Is).
func previewError(err error) error {
	var answer mautrix.RespError
	switch {
	case errors.Is(err, ErrFetchRefused):
		answer = mautrix.MForbidden.WithMessage("This URL cannot be previewed")
	case errors.Is(err, ErrFetchTimeout):
		answer = mautrix.RespError{ErrCode: "M_UNKNOWN", Err: "Timed out fetching the URL", StatusCode: 504}
	case errors.Is(err, ErrFetchFailed):
		answer = mautrix.RespError{ErrCode: "M_UNKNOWN", Err: "Could not fetch the URL", StatusCode: 502}
	default:
		return fmt.Errorf("previewing URL: %w", err)
	}
	return fmt.Errorf("%w: %w", answer, err)
}

// withSlot runs f while holding one of the MaxFetches slots. A page load
// releases its slot before fetching its image, which takes another, so
// loads never wait for each other while holding slots.
func (p *Previewer) withSlot(ctx context.Context, f func() error) error {
	select {
	case p.slots <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-p.slots }()
	return f()
}

// allow takes one of user's fetch tokens, or answers M_LIMIT_EXCEEDED.
func (p *Previewer) allow(user id.UserID) error {
	now := p.svc.now()
	p.limMu.Lock()
	defer p.limMu.Unlock()
	if len(p.limits) >= maxLimiterUsers {
		// A full bucket is the same as a new one: dropping it loses
		// nothing.
		for u, l := range p.limits {
			if l.TokensAt(now) >= float64(p.cfg.UserBurst) {
				delete(p.limits, u)
			}
		}
	}
	l := p.limits[user]
	if l == nil {
		l = rate.NewLimiter(rate.Limit(p.cfg.UserRate), p.cfg.UserBurst)
		p.limits[user] = l
	}
	if l.AllowN(now, 1) {
		return nil
	}
	wait := time.Duration(math.Ceil((1 - l.TokensAt(now)) / p.cfg.UserRate * float64(time.Second)))
	return errPreviewLimit(wait)
}

func errPreviewLimit(wait time.Duration) error {
	wait = max(wait, time.Millisecond)
	ms := (wait + time.Millisecond - 1) / time.Millisecond
	secs := (wait + time.Second - 1) / time.Second
	return mautrix.RespError{
		ErrCode:     "M_LIMIT_EXCEEDED",
		Err:         "Too many URL previews; try again later",
		ExtraData:   map[string]any{"retry_after_ms": int64(ms)},
		ExtraHeader: map[string]string{"Retry-After": strconv.FormatInt(int64(secs), 10)},
	}
}

// normalizePreviewURL checks the url parameter and returns the cache key
// and URL to fetch: scheme and host lower case, default port and fragment
// dropped (the fragment never reaches the server), empty path as "/".
// Only absolute http(s) URLs with a host and no credentials are accepted.
func normalizePreviewURL(raw string) (string, error) {
	invalid := func(msg string) error { return mautrix.MInvalidParam.WithMessage(msg) }
	if len(raw) > maxPreviewURLLen {
		return "", invalid("url is longer than " + strconv.Itoa(maxPreviewURLLen) + " bytes")
	}
	u, err := url.Parse(raw)
	if err != nil {
		return "", invalid("url is not a valid URL")
	}
	u.Scheme = strings.ToLower(u.Scheme)
	if u.Scheme != "http" && u.Scheme != "https" {
		return "", invalid("Only http and https URLs can be previewed")
	}
	if u.Opaque != "" || u.Hostname() == "" {
		return "", invalid("url must be an absolute URL with a host")
	}
	if u.User != nil {
		return "", invalid("URLs with credentials cannot be previewed")
	}
	host := strings.ToLower(u.Hostname())
	if strings.Contains(host, ":") {
		host = "[" + host + "]"
	}
	if port := u.Port(); port != "" && !(u.Scheme == "http" && port == "80") && !(u.Scheme == "https" && port == "443") {
		host += ":" + port
	}
	u.Host = host
	u.Fragment, u.RawFragment = "", ""
	if u.Path == "" {
		u.Path, u.RawPath = "/", ""
	}
	return u.String(), nil
}

// redactedHost is what logs say about a user's URL: its host, not the
// path or query, which may carry secrets.
func redactedHost(target string) string {
	if u, err := url.Parse(target); err == nil {
		return u.Host
	}
	return "(unparsable)"
}

// previewImage is a stored preview image.
type previewImage struct {
	uri           id.ContentURI
	contentType   string
	width, height int
	size          int64
}

// into sets the spec's image properties, replacing what the page said
// about its image's type and size with what we stored (og:image:alt and
// the like stay).
func (img *previewImage) into(og map[string]any) {
	og["og:image"] = img.uri.String()
	og["og:image:type"] = img.contentType
	og["og:image:width"] = int64(img.width)
	og["og:image:height"] = int64(img.height)
	og["matrix:image:size"] = img.size
}

// errNotPreviewImage: the bytes are not an image we store.
var errNotPreviewImage = errors.New("not a JPEG, PNG, GIF or WebP image")

// storeImage stores a preview image as media of the preview owner: no
// quota, thumbnails queued as for an upload.
func (p *Previewer) storeImage(ctx context.Context, data []byte) (*previewImage, error) {
	ct, w, h, err := previewImageInfo(data)
	if err != nil {
		return nil, err
	}
	mediaID, err := newMediaID()
	if err != nil {
		return nil, err
	}
	pb, err := p.svc.blobs.Put(ctx, bytes.NewReader(data), int64(len(data)))
	if err != nil {
		return nil, fmt.Errorf("storing preview image: %w", err)
	}
	defer pb.Discard()
	now := p.svc.now()
	rec := Record{
		MediaID: mediaID, UserID: p.owner, ContentType: ct,
		Size: pb.Size(), SHA256: pb.Hash(), CreatedAt: now, UploadedAt: now,
		Frozen: p.svc.cfg.FreezeUnauthenticated,
	}
	if err := p.svc.store.AddMedia(ctx, rec, 0, pb.Commit); err != nil {
		return nil, fmt.Errorf("storing preview image %s: %w", mediaID, err)
	}
	p.svc.queueThumbnails(rec)
	return &previewImage{
		uri:         id.ContentURI{Homeserver: p.svc.cfg.ServerName, FileID: mediaID},
		contentType: ct, width: w, height: h, size: rec.Size,
	}, nil
}

// previewImageInfo recognises the formats we can thumbnail by their magic
// bytes (never trusting the remote Content-Type) and reads the dimensions
// from the header, without decoding pixels.
func previewImageInfo(b []byte) (contentType string, width, height int, err error) {
	var decodeConfig func(r *bytes.Reader) (image.Config, error)
	switch {
	case bytes.HasPrefix(b, []byte("\xff\xd8\xff")):
		contentType = "image/jpeg"
		decodeConfig = func(r *bytes.Reader) (image.Config, error) { return jpeg.DecodeConfig(r) }
	case bytes.HasPrefix(b, []byte("\x89PNG\r\n\x1a\n")):
		contentType = "image/png"
		decodeConfig = func(r *bytes.Reader) (image.Config, error) { return png.DecodeConfig(r) }
	case bytes.HasPrefix(b, []byte("GIF87a")), bytes.HasPrefix(b, []byte("GIF89a")):
		contentType = "image/gif"
		decodeConfig = func(r *bytes.Reader) (image.Config, error) { return gif.DecodeConfig(r) }
	case len(b) >= 12 && string(b[:4]) == "RIFF" && string(b[8:12]) == "WEBP":
		contentType = "image/webp"
		decodeConfig = func(r *bytes.Reader) (image.Config, error) { return webp.DecodeConfig(r) }
	default:
		return "", 0, 0, errNotPreviewImage
	}
	cfg, err := decodeConfig(bytes.NewReader(b))
	if err != nil || cfg.Width <= 0 || cfg.Height <= 0 {
		return "", 0, 0, fmt.Errorf("%w: unreadable %s header", errNotPreviewImage, contentType)
	}
	return contentType, cfg.Width, cfg.Height, nil
}

// cacheEntryOverhead approximates an entry's fixed memory (list element,
// map slot, entry struct, a stored image's fields).
const cacheEntryOverhead = 160

// entryCost estimates the memory a cached page holds.
func entryCost(key string, og map[string]any) int64 {
	n := int64(len(key)) + cacheEntryOverhead
	for k, v := range og {
		n += int64(len(k)) + 32
		if s, ok := v.(string); ok {
			n += int64(len(s))
		}
	}
	return n
}

// previewCache is a bounded LRU of previews and failures with expiry
// times. In memory only: it is lost on restart and not shared between
// processes, which at worst fetches a URL once more per process.
type previewCache struct {
	mu         sync.Mutex
	maxEntries int
	maxBytes   int64
	bytes      int64
	byKey      map[string]*list.Element
	lru        list.List // of *cacheEntry, most recently used first
}

type cacheEntry struct {
	key     string
	val     any
	err     error
	expires time.Time
	cost    int64
}

// get returns a live entry's value or error; ok is false on a miss.
func (c *previewCache) get(key string, now time.Time) (val any, err error, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	el := c.byKey[key]
	if el == nil {
		return nil, nil, false
	}
	e := el.Value.(*cacheEntry)
	if !now.Before(e.expires) {
		c.remove(el)
		return nil, nil, false
	}
	c.lru.MoveToFront(el)
	return e.val, e.err, true
}

// put stores an entry, evicting the least recently used beyond the bounds.
// An entry larger than the whole cache is not kept.
func (c *previewCache) put(key string, val any, err error, expires time.Time, cost int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if el := c.byKey[key]; el != nil {
		c.remove(el)
	}
	if cost > c.maxBytes {
		return
	}
	c.byKey[key] = c.lru.PushFront(&cacheEntry{key: key, val: val, err: err, expires: expires, cost: cost})
	c.bytes += cost
	for c.lru.Len() > c.maxEntries || c.bytes > c.maxBytes {
		c.remove(c.lru.Back())
	}
}

func (c *previewCache) remove(el *list.Element) {
	e := c.lru.Remove(el).(*cacheEntry)
	delete(c.byKey, e.key)
	c.bytes -= e.cost
}
