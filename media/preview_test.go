package media_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"

	"github.com/weftchat/weft/media"
)

// fakePage is what the fake fetcher answers for one URL.
type fakePage struct {
	og    map[string]any
	image []byte
	err   error
}

// fakeFetcher stands in for the network: pages and images by exact URL,
// counting calls. When gate is set, Fetch blocks until it is closed.
type fakeFetcher struct {
	mu     sync.Mutex
	pages  map[string]fakePage
	images map[string]fakePage
	calls  map[string]int
	gate   chan struct{}
}

func newFakeFetcher() *fakeFetcher {
	return &fakeFetcher{pages: map[string]fakePage{}, images: map[string]fakePage{}, calls: map[string]int{}}
}

func (f *fakeFetcher) Fetch(ctx context.Context, rawURL string) (*media.FetchedPage, error) {
	f.mu.Lock()
	f.calls[rawURL]++
	pg, ok := f.pages[rawURL]
	gate := f.gate
	f.mu.Unlock()
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	if !ok {
		return nil, fmt.Errorf("%w: no such host", media.ErrFetchFailed)
	}
	if pg.err != nil {
		return nil, pg.err
	}
	return &media.FetchedPage{URL: rawURL, ContentType: "text/html", OpenGraph: pg.og, Image: pg.image}, nil
}

func (f *fakeFetcher) FetchImage(ctx context.Context, imageURL string, maxBytes int64) ([]byte, error) {
	f.mu.Lock()
	f.calls["image "+imageURL]++
	img, ok := f.images[imageURL]
	f.mu.Unlock()
	switch {
	case !ok:
		return nil, fmt.Errorf("%w: 404", media.ErrFetchFailed)
	case img.err != nil:
		return nil, img.err
	case int64(len(img.image)) > maxBytes:
		return nil, fmt.Errorf("%w: too large", media.ErrFetchFailed)
	}
	return img.image, nil
}

func (f *fakeFetcher) count(key string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls[key]
}

func (f *fakeFetcher) total() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, c := range f.calls {
		n += c
	}
	return n
}

func (f *fakeFetcher) setPage(u string, pg fakePage) {
	f.mu.Lock()
	f.pages[u] = pg
	f.mu.Unlock()
}

func newPreviewer(t *testing.T, e *env, f *fakeFetcher, cfg media.PreviewConfig) *media.Previewer {
	t.Helper()
	p := media.NewPreviewer(e.svc, f, cfg)
	t.Cleanup(p.Close)
	return p
}

func wantPreviewErr(t *testing.T, err error, code string, status int) mautrix.RespError {
	t.Helper()
	var re mautrix.RespError
	if !errors.As(err, &re) || re.ErrCode != code || re.StatusCode != status {
		t.Fatalf("want %s (HTTP %d), got %#v (%v)", code, status, re, err)
	}
	return re
}

func TestPreviewStoresOGImageAsMXC(t *testing.T) {
	ctx := context.Background()
	// A quota smaller than the image: preview images are the server's,
	// not the requester's, so it does not apply.
	e := newEnv(t, media.Config{UserQuota: 10})
	f := newFakeFetcher()
	img := pngImage(t, 40, 30)
	f.setPage("https://news.example/story", fakePage{og: map[string]any{
		"og:title":             "A story",
		"og:description":       "What happened",
		"og:image":             "https://cdn.example/pic.png",
		"og:image:secure_url":  "https://cdn.example/pic.png",
		"og:image:width":       int64(9999), // the page's claim, replaced by the real size
		"og:image:alt":         "a picture",
		"og:url":               "https://news.example/story",
		"og:video:secure_url":  "https://cdn.example/v.mp4",
		"og:image:unknown_key": "kept",
	}})
	f.images["https://cdn.example/pic.png"] = fakePage{image: img}
	p := newPreviewer(t, e, f, media.PreviewConfig{})
	user := id.UserID("@alice:media.test")

	og, err := p.Preview(ctx, user, "https://news.example/story", 0)
	if err != nil {
		t.Fatal(err)
	}
	uri, err := id.ParseContentURI(og["og:image"].(string))
	if err != nil || uri.Homeserver != "media.test" {
		t.Fatalf("og:image = %v (%v), want an mxc URI of this server", og["og:image"], err)
	}
	want := map[string]any{
		"og:title": "A story", "og:description": "What happened", "og:image": uri.String(),
		"og:image:type": "image/png", "og:image:width": int64(40), "og:image:height": int64(30),
		"matrix:image:size": int64(len(img)), "og:image:alt": "a picture",
		"og:url": "https://news.example/story", "og:video:secure_url": "https://cdn.example/v.mp4",
		"og:image:unknown_key": "kept",
	}
	if len(og) != len(want) {
		t.Errorf("preview has %d keys, want %d: %v", len(og), len(want), og)
	}
	for k, v := range want {
		if og[k] != v {
			t.Errorf("%s = %#v, want %#v", k, og[k], v)
		}
	}
	c, err := e.svc.Download(ctx, uri, media.Access{})
	if err != nil {
		t.Fatal(err)
	}
	if got := readAll(t, c); string(got) != string(img) || c.ContentType != "image/png" {
		t.Fatalf("stored image: %d bytes of %s, want the %d fetched bytes", len(got), c.ContentType, len(img))
	}
	rec, err := e.store.Media(ctx, uri.FileID)
	if err != nil || rec.UserID != p.Owner() {
		t.Fatalf("stored image owned by %v (%v), want %s", rec, err, p.Owner())
	}
	if used, err := e.store.Usage(ctx, user); err != nil || used != 0 {
		t.Fatalf("requester's usage %d (%v), want 0", used, err)
	}

	// Changing the answer must not change the cache.
	og["og:title"] = "changed"
	again, err := p.Preview(ctx, "@bob:media.test", "https://news.example/story", 0)
	if err != nil || again["og:title"] != "A story" || again["og:image"] != uri.String() {
		t.Fatalf("second preview = %v, %v", again, err)
	}
	if n := f.total(); n != 2 {
		t.Fatalf("fetcher called %d times for two previews of one page, want 2 (page and image once)", n)
	}

	// A second page with the same og:image reuses the stored copy.
	f.setPage("https://news.example/other", fakePage{og: map[string]any{"og:title": "Other", "og:image": "https://cdn.example/pic.png"}})
	other, err := p.Preview(ctx, user, "https://news.example/other", 0)
	if err != nil || other["og:image"] != uri.String() {
		t.Fatalf("other page = %v, %v; want the same mxc image", other, err)
	}
	if n := f.count("image https://cdn.example/pic.png"); n != 1 {
		t.Fatalf("image fetched %d times, want 1", n)
	}
}

func TestPreviewOfAnImageURL(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, media.Config{})
	f := newFakeFetcher()
	jpg := jpegImage(t, 64, 48)
	f.setPage("https://img.example/photo", fakePage{image: jpg})
	f.setPage("https://img.example/drawing.svg", fakePage{image: []byte(`<svg xmlns="http://www.w3.org/2000/svg"/>`)})
	f.setPage("https://img.example/huge.png", fakePage{image: append(pngImage(t, 8, 8), make([]byte, 5000)...)})
	p := newPreviewer(t, e, f, media.PreviewConfig{MaxImageBytes: 4000})

	og, err := p.Preview(ctx, "@a:media.test", "https://img.example/photo", 0)
	if err != nil {
		t.Fatal(err)
	}
	uri, err := id.ParseContentURI(og["og:image"].(string))
	if err != nil {
		t.Fatalf("og:image %v: %v", og["og:image"], err)
	}
	if og["og:image:type"] != "image/jpeg" || og["og:image:width"] != int64(64) || og["og:image:height"] != int64(48) ||
		og["matrix:image:size"] != int64(len(jpg)) || len(og) != 5 {
		t.Fatalf("image preview = %v", og)
	}
	c, err := e.svc.Download(ctx, uri, media.Access{})
	if err != nil {
		t.Fatal(err)
	}
	if got := readAll(t, c); string(got) != string(jpg) {
		t.Fatal("stored bytes differ from the fetched image")
	}

	// An image type we do not store has no preview: an empty object.
	og, err = p.Preview(ctx, "@a:media.test", "https://img.example/drawing.svg", 0)
	if err != nil || len(og) != 0 {
		t.Fatalf("SVG preview = %v, %v; want {}", og, err)
	}
	// Over the image cap: the remote side's failure.
	before := diskFiles(t, e.dir)
	_, err = p.Preview(ctx, "@a:media.test", "https://img.example/huge.png", 0)
	wantPreviewErr(t, err, "M_UNKNOWN", 502)
	if after := diskFiles(t, e.dir); len(after) != len(before) {
		t.Fatalf("a refused image was stored: %v", after)
	}
}

func TestPreviewDropsAnImageThatCannotBeFetched(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, media.Config{})
	f := newFakeFetcher()
	f.setPage("https://site.example/", fakePage{og: map[string]any{
		"og:title": "Site", "og:image": "http://10.0.0.1/logo.png", "og:image:width": int64(10), "og:image:type": "image/png",
	}})
	f.images["http://10.0.0.1/logo.png"] = fakePage{err: fmt.Errorf("%w: private address", media.ErrFetchRefused)}
	p := newPreviewer(t, e, f, media.PreviewConfig{})

	og, err := p.Preview(ctx, "@a:media.test", "https://site.example/", 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(og) != 1 || og["og:title"] != "Site" {
		t.Fatalf("preview = %v, want only og:title (nothing about the image)", og)
	}
	// The page is kept only for the failure TTL, so its image is tried
	// again soon; within it nothing is fetched.
	e.clk.set(e.clk.now().Add(30 * time.Second))
	if _, err := p.Preview(ctx, "@a:media.test", "https://site.example/", 0); err != nil {
		t.Fatal(err)
	}
	if f.count("https://site.example/") != 1 || f.count("image http://10.0.0.1/logo.png") != 1 {
		t.Fatalf("calls %v within the failure TTL", f.calls)
	}
	f.mu.Lock()
	f.images["http://10.0.0.1/logo.png"] = fakePage{image: pngImage(t, 8, 8)}
	f.mu.Unlock()
	e.clk.set(e.clk.now().Add(media.DefaultPreviewFailureTTL))
	og, err = p.Preview(ctx, "@a:media.test", "https://site.example/", 0)
	if err != nil || !strings.HasPrefix(fmt.Sprint(og["og:image"]), "mxc://media.test/") || og["og:image:width"] != int64(8) {
		t.Fatalf("after the failure TTL: %v, %v; want the image now", og, err)
	}
}

func TestPreviewCachesForTheTTL(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, media.Config{})
	f := newFakeFetcher()
	f.setPage("https://a.example/", fakePage{og: map[string]any{"og:title": "A"}})
	p := newPreviewer(t, e, f, media.PreviewConfig{})
	for _, u := range []id.UserID{"@a:media.test", "@b:media.test", "@c:media.test"} {
		og, err := p.Preview(ctx, u, "https://a.example/", 0)
		if err != nil || og["og:title"] != "A" {
			t.Fatalf("%s: %v, %v", u, og, err)
		}
	}
	if n := f.count("https://a.example/"); n != 1 {
		t.Fatalf("fetched %d times, want 1", n)
	}
	e.clk.set(e.clk.now().Add(media.DefaultPreviewTTL - time.Second))
	if _, err := p.Preview(ctx, "@a:media.test", "https://a.example/", 0); err != nil || f.count("https://a.example/") != 1 {
		t.Fatalf("within the TTL: %v, %d fetches", err, f.count("https://a.example/"))
	}
	e.clk.set(e.clk.now().Add(time.Second))
	f.setPage("https://a.example/", fakePage{og: map[string]any{"og:title": "A, edited"}})
	og, err := p.Preview(ctx, "@a:media.test", "https://a.example/", 0)
	if err != nil || og["og:title"] != "A, edited" || f.count("https://a.example/") != 2 {
		t.Fatalf("after the TTL: %v, %v, %d fetches; want a new fetch", og, err, f.count("https://a.example/"))
	}
}

// waitingCtx reports when a caller starts waiting on it: Preview waits on
// its context only after it has joined (or started) the URL's fetch.
type waitingCtx struct {
	context.Context
	once    sync.Once
	waiting chan struct{}
}

func (c *waitingCtx) Done() <-chan struct{} {
	c.once.Do(func() { close(c.waiting) })
	return c.Context.Done()
}

func TestConcurrentPreviewsShareOneFetch(t *testing.T) {
	e := newEnv(t, media.Config{})
	f := newFakeFetcher()
	f.gate = make(chan struct{})
	f.setPage("https://busy.example/", fakePage{og: map[string]any{"og:title": "Busy"}})
	p := newPreviewer(t, e, f, media.PreviewConfig{})

	const n = 12
	var wg sync.WaitGroup
	ctxs := make([]*waitingCtx, n)
	results := make([]map[string]any, n)
	errs := make([]error, n)
	for i := range n {
		ctxs[i] = &waitingCtx{Context: context.Background(), waiting: make(chan struct{})}
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i], errs[i] = p.Preview(ctxs[i], id.UserID(fmt.Sprintf("@u%d:media.test", i)), "https://busy.example/", 0)
		}()
	}
	// Every caller is past the cache and waiting while the one fetch is
	// held at the gate: without sharing, each would have fetched.
	for _, c := range ctxs {
		<-c.waiting
	}
	close(f.gate)
	wg.Wait()
	for i := range n {
		if errs[i] != nil || results[i]["og:title"] != "Busy" {
			t.Fatalf("caller %d: %v, %v", i, results[i], errs[i])
		}
	}
	if got := f.count("https://busy.example/"); got != 1 {
		t.Fatalf("%d concurrent previews fetched %d times, want 1", n, got)
	}
}

func TestPreviewCallerLeavingDoesNotCancelTheFetch(t *testing.T) {
	e := newEnv(t, media.Config{})
	f := newFakeFetcher()
	f.gate = make(chan struct{})
	f.setPage("https://slow.example/", fakePage{og: map[string]any{"og:title": "Slow"}})
	p := newPreviewer(t, e, f, media.PreviewConfig{})

	ctx, cancel := context.WithCancel(context.Background())
	wc := &waitingCtx{Context: ctx, waiting: make(chan struct{})}
	done := make(chan error, 1)
	go func() {
		_, err := p.Preview(wc, "@a:media.test", "https://slow.example/", 0)
		done <- err
	}()
	<-wc.waiting
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("caller that left: %v, want context.Canceled", err)
	}
	close(f.gate)
	// The fetch finished for the next caller, who joins or hits the cache.
	og, err := p.Preview(context.Background(), "@b:media.test", "https://slow.example/", 0)
	if err != nil || og["og:title"] != "Slow" || f.count("https://slow.example/") != 1 {
		t.Fatalf("after the first caller left: %v, %v, %d fetches", og, err, f.count("https://slow.example/"))
	}
}

func TestPreviewFailuresAreCachedBriefly(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, media.Config{})
	f := newFakeFetcher()
	secret := "refusing to connect to 10.1.2.3: private"
	f.setPage("https://refused.example/", fakePage{err: fmt.Errorf("%w: %s", media.ErrFetchRefused, secret)})
	f.setPage("https://slow.example/", fakePage{err: fmt.Errorf("%w: after 10s", media.ErrFetchTimeout)})
	f.setPage("https://broken.example/", fakePage{err: fmt.Errorf("%w: HTTP 500", media.ErrFetchFailed)})
	p := newPreviewer(t, e, f, media.PreviewConfig{})

	cases := []struct {
		url    string
		code   string
		status int
	}{
		{"https://refused.example/", "M_FORBIDDEN", 403},
		{"https://slow.example/", "M_UNKNOWN", 504},
		{"https://broken.example/", "M_UNKNOWN", 502},
	}
	for round := range 2 {
		for _, c := range cases {
			_, err := p.Preview(ctx, "@a:media.test", c.url, 0)
			re := wantPreviewErr(t, err, c.code, c.status)
			if strings.Contains(re.Err, "10.1.2.3") {
				t.Fatalf("the client's message names the internal address: %q", re.Err)
			}
			if !errors.Is(err, media.ErrFetchRefused) && c.status == 403 {
				t.Fatalf("cause lost from %v", err)
			}
			if n := f.count(c.url); n != 1 {
				t.Fatalf("round %d: %s fetched %d times, want 1 (failure cached)", round, c.url, n)
			}
		}
	}
	e.clk.set(e.clk.now().Add(media.DefaultPreviewFailureTTL))
	f.setPage("https://broken.example/", fakePage{og: map[string]any{"og:title": "Fixed"}})
	og, err := p.Preview(ctx, "@a:media.test", "https://broken.example/", 0)
	if err != nil || og["og:title"] != "Fixed" || f.count("https://broken.example/") != 2 {
		t.Fatalf("after the failure TTL: %v, %v, %d fetches", og, err, f.count("https://broken.example/"))
	}
}

func TestPreviewURLNormalisation(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, media.Config{})
	f := newFakeFetcher()
	f.setPage("http://example.com/a/b?q=1", fakePage{og: map[string]any{"og:title": "AB"}})
	f.setPage("https://example.com/", fakePage{og: map[string]any{"og:title": "Root"}})
	f.setPage("http://[2001:db8::1]:8080/", fakePage{og: map[string]any{"og:title": "Six"}})
	f.setPage("http://example.com/A/b?q=1", fakePage{og: map[string]any{"og:title": "Upper path"}})
	p := newPreviewer(t, e, f, media.PreviewConfig{})

	for _, c := range []struct{ in, title string }{
		{"http://example.com/a/b?q=1", "AB"},
		{"HTTP://EXAMPLE.com/a/b?q=1#section", "AB"},
		{"http://Example.COM:80/a/b?q=1#other", "AB"},
		{"https://example.com", "Root"},
		{"HTTPS://EXAMPLE.COM:443", "Root"},
		{"http://[2001:DB8::1]:8080", "Six"},
		// Paths and queries are case-sensitive: another URL.
		{"http://example.com/A/b?q=1", "Upper path"},
	} {
		og, err := p.Preview(ctx, "@a:media.test", c.in, 0)
		if err != nil || og["og:title"] != c.title {
			t.Errorf("%s: %v, %v; want %q", c.in, og, err, c.title)
		}
	}
	for u, n := range map[string]int{
		"http://example.com/a/b?q=1": 1, "https://example.com/": 1, "http://[2001:db8::1]:8080/": 1, "http://example.com/A/b?q=1": 1,
	} {
		if got := f.count(u); got != n {
			t.Errorf("%s fetched %d times, want %d", u, got, n)
		}
	}
	if n := f.total(); n != 4 {
		t.Errorf("%d fetches in all (%v), want 4", n, f.calls)
	}

	before := f.total()
	for _, bad := range []string{
		"", "example.com", "/relative/path", "ftp://example.com/", "javascript:alert(1)", "file:///etc/passwd",
		"http://user:pass@example.com/", "http:///no-host", "http://%zz/", "mailto:a@example.com",
		"https://example.com/" + strings.Repeat("a", 9000),
	} {
		_, err := p.Preview(ctx, "@a:media.test", bad, 0)
		wantErrcode(t, err, "M_INVALID_PARAM")
	}
	if f.total() != before {
		t.Fatalf("invalid URLs were fetched: %v", f.calls)
	}
}

func TestPreviewFetchesAreRateLimitedPerUser(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, media.Config{})
	f := newFakeFetcher()
	for i := range 4 {
		f.setPage(fmt.Sprintf("https://r.example/%d", i), fakePage{og: map[string]any{"og:title": "t"}})
	}
	p := newPreviewer(t, e, f, media.PreviewConfig{UserRate: 1, UserBurst: 2})
	alice, bob := id.UserID("@alice:media.test"), id.UserID("@bob:media.test")
	for i := range 2 {
		if _, err := p.Preview(ctx, alice, fmt.Sprintf("https://r.example/%d", i), 0); err != nil {
			t.Fatal(err)
		}
	}
	_, err := p.Preview(ctx, alice, "https://r.example/2", 0)
	var re mautrix.RespError
	if !errors.As(err, &re) || re.ErrCode != "M_LIMIT_EXCEEDED" || re.ExtraData["retry_after_ms"] != int64(1000) {
		t.Fatalf("third fetch: %#v (%v), want M_LIMIT_EXCEEDED with retry_after_ms 1000", re, err)
	}
	if f.count("https://r.example/2") != 0 {
		t.Fatal("a rate-limited preview was fetched")
	}
	// Cached previews cost nothing; other users have their own budget.
	if _, err := p.Preview(ctx, alice, "https://r.example/0", 0); err != nil {
		t.Fatalf("cached preview while limited: %v", err)
	}
	if _, err := p.Preview(ctx, bob, "https://r.example/2", 0); err != nil {
		t.Fatalf("another user: %v", err)
	}
	e.clk.set(e.clk.now().Add(time.Second))
	if _, err := p.Preview(ctx, alice, "https://r.example/3", 0); err != nil {
		t.Fatalf("after a token refilled: %v", err)
	}
}

func TestPreviewCacheIsBounded(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, media.Config{})
	f := newFakeFetcher()
	for i := range 3 {
		f.setPage(fmt.Sprintf("https://b.example/%d", i), fakePage{og: map[string]any{"og:title": "t"}})
	}
	p := newPreviewer(t, e, f, media.PreviewConfig{MaxEntries: 2})
	preview := func(i int) {
		t.Helper()
		if _, err := p.Preview(ctx, "@a:media.test", fmt.Sprintf("https://b.example/%d", i), 0); err != nil {
			t.Fatal(err)
		}
	}
	preview(0)
	preview(1)
	preview(0) // 0 is now the most recently used
	preview(2) // evicts 1
	preview(0)
	if f.count("https://b.example/0") != 1 {
		t.Fatalf("recently used entry was evicted: %v", f.calls)
	}
	preview(1)
	if f.count("https://b.example/1") != 2 {
		t.Fatalf("least recently used entry was kept beyond MaxEntries: %v", f.calls)
	}
}

func TestPreviewAfterCloseFails(t *testing.T) {
	e := newEnv(t, media.Config{})
	f := newFakeFetcher()
	f.setPage("https://a.example/", fakePage{og: map[string]any{"og:title": "A"}})
	p := media.NewPreviewer(e.svc, f, media.PreviewConfig{})
	p.Close()
	if _, err := p.Preview(context.Background(), "@a:media.test", "https://a.example/", 0); err == nil {
		t.Fatal("preview after Close succeeded")
	}
	if f.total() != 0 {
		t.Fatal("fetched after Close")
	}
}
