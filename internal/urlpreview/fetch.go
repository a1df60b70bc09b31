// Package urlpreview fetches URLs that users give the server (for
// GET /_matrix/client/v1/media/preview_url) without letting them reach the
// server's own network, and extracts OpenGraph metadata from HTML.
//
// Safety rests on one check: every TCP connection the client makes, for the
// first request and every redirect, is vetted by the dialer's Control hook on
// the IP address actually being connected to, after DNS resolution. A name
// that resolves to a private address (or re-resolves to one later: DNS
// rebinding) is refused at that point, and nothing but the dialer opens
// connections (no proxy from the environment).
package urlpreview

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"syscall"
	"time"
)

// Defaults used for zero Config fields.
const (
	DefaultTimeout      = 10 * time.Second
	DefaultMaxBytes     = 10 << 20
	DefaultMaxRedirects = 5
	DefaultUserAgent    = "Mozilla/5.0 (compatible; Weft URL preview; +https://github.com/weftchat/weft)"

	// maxHeaderBytes bounds the response headers a remote server can make us
	// buffer; MaxBytes only covers the body.
	maxHeaderBytes = 64 << 10
)

var (
	// ErrBadURL: the URL (or a redirect target) is not absolute http(s),
	// has no host, or carries credentials.
	ErrBadURL = errors.New("urlpreview: URL not allowed")
	// ErrTooLarge: an image body (or one whose Content-Length says so) is
	// over the size cap. HTML over the cap is parsed up to it instead.
	ErrTooLarge = errors.New("urlpreview: response too large")
	// ErrTimeout: the fetch, body included, took longer than Config.Timeout.
	ErrTimeout = errors.New("urlpreview: timed out")
	// ErrTooManyRedirects: more than Config.MaxRedirects redirects.
	ErrTooManyRedirects = errors.New("urlpreview: too many redirects")
	// ErrUpstreamStatus is matched by every *StatusError.
	ErrUpstreamStatus = errors.New("urlpreview: remote server answered with an error")
	// ErrUnsupportedType: FetchImage got something that is not an image.
	ErrUnsupportedType = errors.New("urlpreview: unsupported content type")
)

// StatusError is a final (post-redirect) response outside 2xx.
type StatusError struct {
	URL        string
	StatusCode int
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("urlpreview: %s answered HTTP %d", e.URL, e.StatusCode)
}

// Is makes errors.Is(err, ErrUpstreamStatus) true for every *StatusError.
func (e *StatusError) Is(target error) bool { return target == ErrUpstreamStatus }

// Config tunes a Fetcher. Zero fields take the defaults above.
type Config struct {
	// Timeout bounds a whole fetch: DNS, connecting, every redirect and
	// reading the body.
	Timeout time.Duration
	// MaxBytes caps the body read. HTML is parsed up to the cap; an image
	// over it is refused with ErrTooLarge.
	MaxBytes int64
	// MaxRedirects is how many redirects are followed; negative follows none.
	MaxRedirects int
	UserAgent    string
	// AllowedCIDRs are connected to even when the built-in or extra deny
	// list covers them (an operator's internal sites; the tests' loopback
	// servers). They win over DeniedCIDRs, and match the address dialled
	// (IPv4-mapped addresses as IPv4), never the IPv4 address inside a
	// NAT64/6to4/Teredo address.
	AllowedCIDRs []netip.Prefix
	// DeniedCIDRs are refused on top of the built-in list of non-global
	// ranges.
	DeniedCIDRs []netip.Prefix
	// Resolver resolves host names; nil uses net.DefaultResolver. Whatever it
	// answers, the address dialled is checked.
	Resolver *net.Resolver
}

// Fetcher fetches URLs through a client that only connects to addresses its
// Policy allows. It is safe for concurrent use.
type Fetcher struct {
	cfg    Config
	policy *Policy
	client *http.Client
}

// Result is what Fetch found at a URL.
type Result struct {
	// URL is the final URL, after redirects.
	URL string
	// ContentType is the media type, lower case, without parameters.
	ContentType string
	// OpenGraph holds the og:* properties of an HTML page (see
	// ParseOpenGraph); it is empty, not nil, for a type that is neither HTML
	// nor an image. Nil when Image is set.
	OpenGraph map[string]any
	// Image is the body of an image/* response: the preview is the image.
	Image []byte
}

// New returns a Fetcher for cfg.
func New(cfg Config) *Fetcher {
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.MaxBytes <= 0 {
		cfg.MaxBytes = DefaultMaxBytes
	}
	if cfg.MaxRedirects == 0 {
		cfg.MaxRedirects = DefaultMaxRedirects
	}
	if cfg.UserAgent == "" {
		cfg.UserAgent = DefaultUserAgent
	}
	policy := NewPolicy(cfg.AllowedCIDRs, cfg.DeniedCIDRs)
	dialer := &net.Dialer{
		Timeout:  cfg.Timeout,
		Resolver: cfg.Resolver,
		// Called for each address the dialer tries, after resolution and
		// before connect(2): the only place the real peer is known. A
		// refusal here means no packet was sent to that address.
		ControlContext: func(_ context.Context, network, address string, _ syscall.RawConn) error {
			if network != "tcp4" && network != "tcp6" && network != "tcp" {
				return fmt.Errorf("%w: network %s", ErrRefused, network)
			}
			ap, err := netip.ParseAddrPort(address)
			if err != nil {
				return fmt.Errorf("%w: unparsable address %q", ErrRefused, address)
			}
			return policy.Check(ap.Addr())
		},
	}
	transport := &http.Transport{
		Proxy:                  nil, // an environment proxy would dial for us, unchecked
		DialContext:            dialer.DialContext,
		ForceAttemptHTTP2:      true,
		TLSHandshakeTimeout:    cfg.Timeout,
		ResponseHeaderTimeout:  cfg.Timeout,
		MaxResponseHeaderBytes: maxHeaderBytes,
		MaxIdleConns:           16,
		MaxIdleConnsPerHost:    2,
		IdleConnTimeout:        30 * time.Second,
	}
	maxRedirects := cfg.MaxRedirects
	client := &http.Client{
		Transport: transport,
		// via holds the requests already made; the next one is redirect
		// number len(via). The target's address is checked when it is
		// dialled, like any other connection.
		CheckRedirect: func(req *http.Request, via []*http.Request) error {
			if len(via) > maxRedirects {
				return fmt.Errorf("%w: more than %d", ErrTooManyRedirects, max(maxRedirects, 0))
			}
			return checkURL(req.URL)
		},
	}
	return &Fetcher{cfg: cfg, policy: policy, client: client}
}

// Policy returns the address policy the Fetcher dials with, for callers that
// want to reject an IP-literal URL before queueing work.
func (f *Fetcher) Policy() *Policy { return f.policy }

// CloseIdleConnections closes kept-alive connections (at shutdown).
func (f *Fetcher) CloseIdleConnections() { f.client.CloseIdleConnections() }

// checkURL refuses everything but absolute http(s) URLs with a host and no
// credentials (which would be sent to the remote server and logged there).
func checkURL(u *url.URL) error {
	if u.Scheme != "http" && u.Scheme != "https" {
		return fmt.Errorf("%w: scheme %q", ErrBadURL, u.Scheme)
	}
	if u.User != nil {
		return fmt.Errorf("%w: credentials in URL", ErrBadURL)
	}
	if u.Hostname() == "" {
		return fmt.Errorf("%w: no host", ErrBadURL)
	}
	return nil
}

func parseURL(rawURL string) (*url.URL, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadURL, err)
	}
	if err := checkURL(u); err != nil {
		return nil, err
	}
	return u, nil
}

// response is an open 2xx response with its body already capped and its
// timeout still running; close must be called.
type response struct {
	finalURL    *url.URL
	contentType string
	params      map[string]string
	length      int64
	body        *bufio.Reader
	close       func()
}

// open sends a GET and follows redirects. ctx is the fetch's own context
// (the caller's plus Timeout); errors are mapped by f.mapErr.
func (f *Fetcher) open(ctx context.Context, rawURL, accept string) (*response, error) {
	u, err := parseURL(rawURL)
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadURL, err)
	}
	req.Header.Set("User-Agent", f.cfg.UserAgent)
	req.Header.Set("Accept", accept)
	resp, err := f.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("fetching %s: %w", u.Redacted(), err)
	}
	final := resp.Request.URL
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		resp.Body.Close()
		return nil, &StatusError{URL: final.Redacted(), StatusCode: resp.StatusCode}
	}
	body := bufio.NewReader(io.LimitReader(resp.Body, f.cfg.MaxBytes+1))
	mediaType, params, err := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	if err != nil || mediaType == "" || mediaType == "application/octet-stream" {
		// No usable declared type: sniff, as a browser would. Peek waits
		// for at most 512 bytes (or the end of a shorter body).
		// The sniffer's charset parameter is a guess (always utf-8 for
		// HTML) that would override the page's own <meta charset>.
		sniff, _ := body.Peek(512)
		mediaType, _, _ = mime.ParseMediaType(http.DetectContentType(sniff))
		params = nil
	}
	return &response{
		finalURL:    final,
		contentType: strings.ToLower(mediaType),
		params:      params,
		length:      resp.ContentLength,
		body:        body,
		close:       func() { resp.Body.Close() },
	}, nil
}

// withTimeout derives the fetch's context. mapErr uses the parent to tell
// our Timeout (ErrTimeout) from the caller giving up (its own error).
func (f *Fetcher) withTimeout(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, f.cfg.Timeout)
}

func (f *Fetcher) mapErr(parent, ctx context.Context, rawURL string, err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, ErrRefused) || errors.Is(err, ErrBadURL) || errors.Is(err, ErrTooManyRedirects) ||
		errors.Is(err, ErrTooLarge) || errors.Is(err, ErrUpstreamStatus) || errors.Is(err, ErrUnsupportedType) {
		return err
	}
	if parent.Err() != nil {
		return fmt.Errorf("urlpreview: fetching %s: %w", redact(rawURL), parent.Err())
	}
	var netErr net.Error
	if errors.Is(ctx.Err(), context.DeadlineExceeded) || (errors.As(err, &netErr) && netErr.Timeout()) {
		return fmt.Errorf("%w: fetching %s after %s: %v", ErrTimeout, redact(rawURL), f.cfg.Timeout, err)
	}
	return fmt.Errorf("urlpreview: %w", err)
}

func redact(rawURL string) string {
	if u, err := url.Parse(rawURL); err == nil {
		return u.Redacted()
	}
	return "(unparsable URL)"
}

// readCapped reads the whole body, refusing one over max bytes. The body
// reader returns at most MaxBytes+1 bytes, so max must be <= MaxBytes.
func readCapped(r *response, max int64) ([]byte, error) {
	if r.length > max {
		return nil, fmt.Errorf("%w: Content-Length %d over %d bytes", ErrTooLarge, r.length, max)
	}
	b, err := io.ReadAll(io.LimitReader(r.body, max+1))
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", r.finalURL.Redacted(), err)
	}
	if int64(len(b)) > max {
		return nil, fmt.Errorf("%w: body over %d bytes", ErrTooLarge, max)
	}
	return b, nil
}

func isHTML(mediaType string) bool {
	return mediaType == "text/html" || mediaType == "application/xhtml+xml"
}

// Fetch fetches rawURL and describes it: the OpenGraph properties of an HTML
// page (parsed from at most MaxBytes of it), or the bytes of an image. Any
// other type gives an empty OpenGraph map without reading the body.
//
// For a page, og:image (if any) is an absolute http(s) URL, still to be
// fetched with FetchImage and replaced by an mxc:// URI by the caller.
func (f *Fetcher) Fetch(ctx context.Context, rawURL string) (*Result, error) {
	fctx, cancel := f.withTimeout(ctx)
	defer cancel()
	res, err := f.fetch(fctx, rawURL)
	return res, f.mapErr(ctx, fctx, rawURL, err)
}

func (f *Fetcher) fetch(ctx context.Context, rawURL string) (*Result, error) {
	r, err := f.open(ctx, rawURL, "text/html,application/xhtml+xml;q=0.9,image/*;q=0.8,*/*;q=0.1")
	if err != nil {
		return nil, err
	}
	defer r.close()
	res := &Result{URL: r.finalURL.String(), ContentType: r.contentType}
	switch {
	case isHTML(r.contentType):
		// Reading stops at the cap; what was read is a page prefix, which
		// the tokenizer handles like any truncated document.
		og, err := ParseOpenGraph(io.LimitReader(r.body, f.cfg.MaxBytes), contentTypeHeader(r), r.finalURL)
		if err != nil {
			return nil, fmt.Errorf("reading %s: %w", r.finalURL.Redacted(), err)
		}
		res.OpenGraph = og
	case strings.HasPrefix(r.contentType, "image/"):
		img, err := readCapped(r, f.cfg.MaxBytes)
		if err != nil {
			return nil, err
		}
		res.Image = img
	default:
		res.OpenGraph = map[string]any{}
	}
	return res, nil
}

// contentTypeHeader rebuilds the declared type with only its charset, which
// is all ParseOpenGraph looks at.
func contentTypeHeader(r *response) string {
	if cs := r.params["charset"]; cs != "" {
		return mime.FormatMediaType(r.contentType, map[string]string{"charset": cs})
	}
	return r.contentType
}

// FetchImage downloads an image (a page's og:image) through the same checked
// client, with the same Timeout and redirect rules. maxBytes <= 0, or above
// the Fetcher's MaxBytes, means MaxBytes. A body that is not image/* is
// ErrUnsupportedType; one over the cap is ErrTooLarge.
func (f *Fetcher) FetchImage(ctx context.Context, imageURL string, maxBytes int64) ([]byte, string, error) {
	if maxBytes <= 0 || maxBytes > f.cfg.MaxBytes {
		maxBytes = f.cfg.MaxBytes
	}
	fctx, cancel := f.withTimeout(ctx)
	defer cancel()
	img, ct, err := f.fetchImage(fctx, imageURL, maxBytes)
	if err != nil {
		return nil, "", f.mapErr(ctx, fctx, imageURL, err)
	}
	return img, ct, nil
}

func (f *Fetcher) fetchImage(ctx context.Context, imageURL string, maxBytes int64) ([]byte, string, error) {
	r, err := f.open(ctx, imageURL, "image/*")
	if err != nil {
		return nil, "", err
	}
	defer r.close()
	if !strings.HasPrefix(r.contentType, "image/") {
		return nil, "", fmt.Errorf("%w: %s is %q", ErrUnsupportedType, r.finalURL.Redacted(), r.contentType)
	}
	img, err := readCapped(r, maxBytes)
	if err != nil {
		return nil, "", err
	}
	return img, r.contentType, nil
}
