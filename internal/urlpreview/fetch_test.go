package urlpreview_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/weftchat/weft/internal/urlpreview"
	"github.com/weftchat/weft/internal/urlpreview/ssrftest"
)

// allowLoopback lets a fetcher reach the tests' httptest servers, which
// listen on 127.0.0.1; every other loopback address stays refused.
var allowLoopback = []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}

func htmlServer(t *testing.T, mux *http.ServeMux) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv
}

func TestRefusesDeniedAddressesAtDialTime(t *testing.T) {
	tr4 := ssrftest.NewTrap(t, "tcp4", "127.0.0.1:0")
	p4 := tr4.Port()
	var tr6 *ssrftest.Trap
	p6 := 1
	// The refusal is checked on every machine; whether a connection was
	// attempted is only observable where IPv6 loopback exists.
	if ln, err := net.Listen("tcp6", "[::1]:0"); err == nil {
		ln.Close()
		tr6 = ssrftest.NewTrap(t, "tcp6", "[::1]:0")
		p6 = tr6.Port()
	}
	f := urlpreview.New(urlpreview.Config{Timeout: 5 * time.Second})
	for _, u := range []string{
		fmt.Sprintf("http://127.0.0.1:%d/", p4),
		fmt.Sprintf("http://127.1.2.3:%d/", p4),
		"http://10.0.0.1/",
		"http://169.254.169.254/latest/meta-data/",
		fmt.Sprintf("http://[::1]:%d/", p6),
		fmt.Sprintf("http://[::ffff:127.0.0.1]:%d/", p4),
		fmt.Sprintf("http://[::ffff:7f00:1]:%d/", p4),
		fmt.Sprintf("http://0.0.0.0:%d/", p4),
		fmt.Sprintf("http://[::]:%d/", p6),
		"https://192.168.1.1/",
		"http://[fe80::1%25lo]/",
		"http://[64:ff9b::a00:1]/",
	} {
		res, err := f.Fetch(context.Background(), u)
		// A refusal by the dial check, not a timeout or a connection error:
		// 10.0.0.1 and 169.254.169.254 would otherwise hang until Timeout.
		if !errors.Is(err, urlpreview.ErrRefused) {
			t.Errorf("Fetch(%s) = %v, %v; want ErrRefused", u, res, err)
		}
		if _, _, err := f.FetchImage(context.Background(), u, 0); !errors.Is(err, urlpreview.ErrRefused) {
			t.Errorf("FetchImage(%s) = %v; want ErrRefused", u, err)
		}
	}
	if n := tr4.Accepted(); n != 0 {
		t.Errorf("IPv4 loopback trap accepted %d connections, want 0", n)
	}
	if tr6 != nil && tr6.Accepted() != 0 {
		t.Errorf("IPv6 loopback trap accepted %d connections, want 0", tr6.Accepted())
	}

	// The same trap is reachable when allowed: the zero counts above are
	// the check's doing, not an unreachable listener.
	allowed := urlpreview.New(urlpreview.Config{Timeout: 5 * time.Second, AllowedCIDRs: allowLoopback})
	_, err := allowed.Fetch(context.Background(), fmt.Sprintf("http://127.0.0.1:%d/", p4))
	if errors.Is(err, urlpreview.ErrRefused) || tr4.Accepted() == 0 {
		t.Errorf("allowed fetch: err %v, trap accepted %d; want a connection", err, tr4.Accepted())
	}
}

func TestRefusesNamesResolvingToDeniedAddresses(t *testing.T) {
	var hits atomic.Int64
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		fmt.Fprint(w, `<html><head><meta property="og:title" content="reached"></head></html>`)
	})
	srv := htmlServer(t, mux)
	port := srv.Listener.Addr().(*net.TCPAddr).Port

	resolver := ssrftest.DNS(t, map[string][]string{
		"loopback.weft.test": {"127.0.0.1"},
		"mapped.weft.test":   {"::ffff:10.0.0.1"},
		"nat64.weft.test":    {"64:ff9b::a00:1"},
		"metadata.weft.test": {"169.254.169.254"},
		"v6loop.weft.test":   {"::1"},
		"mixed.weft.test":    {"10.0.0.1", "127.0.0.1", "fd00::1"},
	})
	f := urlpreview.New(urlpreview.Config{Timeout: 5 * time.Second, Resolver: resolver})
	for _, name := range []string{"loopback", "mapped", "nat64", "metadata", "v6loop", "mixed"} {
		u := fmt.Sprintf("http://%s.weft.test:%d/", name, port)
		if _, err := f.Fetch(context.Background(), u); !errors.Is(err, urlpreview.ErrRefused) {
			t.Errorf("Fetch(%s) = %v, want ErrRefused", u, err)
		}
	}
	if n := hits.Load(); n != 0 {
		t.Errorf("server was reached %d times through refused names", n)
	}

	// With 127.0.0.1 allowed, the same name through the same resolver
	// reaches the server: the refusal above was the address check.
	allowed := urlpreview.New(urlpreview.Config{Timeout: 5 * time.Second, Resolver: resolver, AllowedCIDRs: allowLoopback})
	res, err := allowed.Fetch(context.Background(), fmt.Sprintf("http://loopback.weft.test:%d/", port))
	if err != nil || res.OpenGraph["og:title"] != "reached" {
		t.Fatalf("allowed Fetch = %+v, %v", res, err)
	}
}

func TestRedirects(t *testing.T) {
	resolver := ssrftest.DNS(t, map[string][]string{"nat64.weft.test": {"64:ff9b::7f00:1"}})
	var loops atomic.Int64
	mux := http.NewServeMux()
	redirect := func(path, to string) {
		mux.HandleFunc(path, func(w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, to, http.StatusFound)
		})
	}
	var srvURL string
	redirect("/to-private", "http://10.0.0.1/")
	redirect("/to-metadata", "http://169.254.169.254/latest/meta-data/")
	redirect("/to-v6-loopback", "http://[::1]/")
	redirect("/to-mapped", "http://[::ffff:127.0.0.2]/")
	redirect("/to-name", "http://nat64.weft.test/")
	redirect("/to-file", "file:///etc/passwd")
	redirect("/to-ftp", "ftp://example.org/x")
	redirect("/to-gopher", "gopher://127.0.0.1:70/")
	mux.HandleFunc("/to-credentials", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, strings.Replace(srvURL, "http://", "http://user:secret@", 1)+"/page/", http.StatusFound)
	})
	mux.HandleFunc("/loop", func(w http.ResponseWriter, r *http.Request) {
		loops.Add(1)
		http.Redirect(w, r, "/loop", http.StatusMovedPermanently)
	})
	redirect("/hop1", "/hop2")
	redirect("/hop2", "/page/index.html")
	mux.HandleFunc("/page/index.html", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		fmt.Fprint(w, `<meta property="og:title" content="Landed"><meta property="og:image" content="img.png">`)
	})
	srv := htmlServer(t, mux)
	srvURL = srv.URL

	f := urlpreview.New(urlpreview.Config{
		Timeout: 5 * time.Second, MaxRedirects: 3, AllowedCIDRs: allowLoopback, Resolver: resolver,
	})
	ctx := context.Background()
	for path, want := range map[string]error{
		"/to-private":     urlpreview.ErrRefused,
		"/to-metadata":    urlpreview.ErrRefused,
		"/to-v6-loopback": urlpreview.ErrRefused,
		"/to-mapped":      urlpreview.ErrRefused,
		"/to-name":        urlpreview.ErrRefused,
		"/to-file":        urlpreview.ErrBadURL,
		"/to-ftp":         urlpreview.ErrBadURL,
		"/to-gopher":      urlpreview.ErrBadURL,
		"/to-credentials": urlpreview.ErrBadURL,
		"/loop":           urlpreview.ErrTooManyRedirects,
	} {
		if _, err := f.Fetch(ctx, srv.URL+path); !errors.Is(err, want) {
			t.Errorf("Fetch(%s) = %v, want %v", path, err, want)
		}
	}
	// MaxRedirects 3: the first request and three redirects, then refusal.
	if n := loops.Load(); n != 4 {
		t.Errorf("/loop served %d times, want 4", n)
	}

	res, err := f.Fetch(ctx, srv.URL+"/hop1")
	if err != nil {
		t.Fatalf("Fetch(/hop1): %v", err)
	}
	if res.URL != srv.URL+"/page/index.html" || res.OpenGraph["og:title"] != "Landed" ||
		res.OpenGraph["og:image"] != srv.URL+"/page/img.png" {
		t.Errorf("Fetch(/hop1) = %+v; want the final URL and og:image resolved against it", res)
	}

	// Two redirects, one allowed: refused at the second.
	tight := urlpreview.New(urlpreview.Config{Timeout: 5 * time.Second, MaxRedirects: 1, AllowedCIDRs: allowLoopback})
	if _, err := tight.Fetch(ctx, srv.URL+"/hop1"); !errors.Is(err, urlpreview.ErrTooManyRedirects) {
		t.Errorf("MaxRedirects 1, two hops: %v, want ErrTooManyRedirects", err)
	}
	none := urlpreview.New(urlpreview.Config{Timeout: 5 * time.Second, MaxRedirects: -1, AllowedCIDRs: allowLoopback})
	if _, err := none.Fetch(ctx, srv.URL+"/hop2"); !errors.Is(err, urlpreview.ErrTooManyRedirects) {
		t.Errorf("MaxRedirects -1: %v, want ErrTooManyRedirects", err)
	}
	if res, err := none.Fetch(ctx, srv.URL+"/page/index.html"); err != nil || res.OpenGraph["og:title"] != "Landed" {
		t.Errorf("MaxRedirects -1, no redirect: %+v, %v", res, err)
	}
}

func TestRefusesBadURLs(t *testing.T) {
	f := urlpreview.New(urlpreview.Config{Timeout: 5 * time.Second, AllowedCIDRs: allowLoopback})
	for _, u := range []string{
		"file:///etc/passwd",
		"ftp://example.org/",
		"gopher://example.org/",
		"javascript:alert(1)",
		"data:text/html,<title>x</title>",
		"//example.org/no-scheme",
		"/relative",
		"http:///no-host",
		"http://user:pass@127.0.0.1/",
		"http://user@127.0.0.1/",
		"http://[::1",
		"",
	} {
		if _, err := f.Fetch(context.Background(), u); !errors.Is(err, urlpreview.ErrBadURL) {
			t.Errorf("Fetch(%q) = %v, want ErrBadURL", u, err)
		}
		if _, _, err := f.FetchImage(context.Background(), u, 0); !errors.Is(err, urlpreview.ErrBadURL) {
			t.Errorf("FetchImage(%q) = %v, want ErrBadURL", u, err)
		}
	}
}

func TestSizeCap(t *testing.T) {
	const capBytes = 8 << 10
	png := append([]byte("\x89PNG\r\n\x1a\n"), bytes.Repeat([]byte{7}, capBytes-8)...) // exactly the cap
	mux := http.NewServeMux()
	mux.HandleFunc("/long.html", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		fmt.Fprint(w, `<html><head><meta property="og:title" content="Early">`)
		fmt.Fprint(w, "<!--"+strings.Repeat("x", 2*capBytes)+"-->")
		fmt.Fprint(w, `<meta property="og:description" content="Beyond the cap"></head></html>`)
	})
	mux.HandleFunc("/endless.html", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		fmt.Fprint(w, `<html><head><title>Endless</title></head><body>`)
		chunk := []byte(strings.Repeat("<p>more</p>", 1000))
		for r.Context().Err() == nil {
			if _, err := w.Write(chunk); err != nil {
				return
			}
		}
	})
	image := func(body []byte, declareLength bool) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "image/png")
			if declareLength {
				w.Header().Set("Content-Length", strconv.Itoa(len(body)))
			} else {
				w.(http.Flusher).Flush() // chunked: no Content-Length
			}
			w.Write(body)
		}
	}
	mux.HandleFunc("/fits.png", image(png, true))
	mux.HandleFunc("/big.png", image(append(png, 0), true))
	mux.HandleFunc("/big-chunked.png", image(append(png, 0), false))
	srv := htmlServer(t, mux)
	ctx := context.Background()

	f := urlpreview.New(urlpreview.Config{Timeout: 10 * time.Second, MaxBytes: capBytes, AllowedCIDRs: allowLoopback})
	res, err := f.Fetch(ctx, srv.URL+"/long.html")
	if err != nil {
		t.Fatalf("long page: %v", err)
	}
	if res.OpenGraph["og:title"] != "Early" || res.OpenGraph["og:description"] != nil {
		t.Errorf("long page parsed to %v; want og:title only (the description is past the cap)", res.OpenGraph)
	}
	roomy := urlpreview.New(urlpreview.Config{Timeout: 10 * time.Second, MaxBytes: 4 * capBytes, AllowedCIDRs: allowLoopback})
	if res, err := roomy.Fetch(ctx, srv.URL+"/long.html"); err != nil || res.OpenGraph["og:description"] != "Beyond the cap" {
		t.Errorf("long page under a larger cap: %v, %v", res, err)
	}

	// Without the cap this would read until the timeout.
	res, err = f.Fetch(ctx, srv.URL+"/endless.html")
	if err != nil || res.OpenGraph["og:title"] != "Endless" {
		t.Errorf("endless page: %+v, %v", res, err)
	}

	res, err = f.Fetch(ctx, srv.URL+"/fits.png")
	if err != nil || res.ContentType != "image/png" || !bytes.Equal(res.Image, png) || res.OpenGraph != nil {
		t.Errorf("image at the cap: %v (type %q, %d bytes)", err, res.ContentType, len(res.Image))
	}
	for _, path := range []string{"/big.png", "/big-chunked.png"} {
		if res, err := f.Fetch(ctx, srv.URL+path); !errors.Is(err, urlpreview.ErrTooLarge) {
			t.Errorf("Fetch(%s) = %+v, %v; want ErrTooLarge", path, res, err)
		}
		if _, _, err := f.FetchImage(ctx, srv.URL+path, 0); !errors.Is(err, urlpreview.ErrTooLarge) {
			t.Errorf("FetchImage(%s) = %v, want ErrTooLarge", path, err)
		}
	}

	img, ct, err := f.FetchImage(ctx, srv.URL+"/fits.png", 0)
	if err != nil || ct != "image/png" || !bytes.Equal(img, png) {
		t.Errorf("FetchImage(fits.png) = %d bytes, %q, %v", len(img), ct, err)
	}
	// A smaller per-call cap applies; a larger one is clamped to MaxBytes.
	if _, _, err := f.FetchImage(ctx, srv.URL+"/fits.png", capBytes-1); !errors.Is(err, urlpreview.ErrTooLarge) {
		t.Errorf("FetchImage under a smaller cap: %v, want ErrTooLarge", err)
	}
	if _, _, err := f.FetchImage(ctx, srv.URL+"/big.png", 10*capBytes); !errors.Is(err, urlpreview.ErrTooLarge) {
		t.Errorf("FetchImage with a cap above MaxBytes: %v, want ErrTooLarge", err)
	}
}

func TestTimeout(t *testing.T) {
	release := make(chan struct{})
	mux := http.NewServeMux()
	mux.HandleFunc("/no-headers", func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-release:
		}
	})
	mux.HandleFunc("/slow-body", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", r.URL.Query().Get("type"))
		fmt.Fprint(w, "<html><head><title>Slow")
		w.(http.Flusher).Flush()
		select {
		case <-r.Context().Done():
		case <-release:
		}
	})
	srv := htmlServer(t, mux)
	defer close(release) // before srv.Close, which waits for handlers

	f := urlpreview.New(urlpreview.Config{Timeout: 300 * time.Millisecond, AllowedCIDRs: allowLoopback})
	ctx := context.Background()
	for _, path := range []string{"/no-headers", "/slow-body?type=text/html", "/slow-body?type=image/png"} {
		if res, err := f.Fetch(ctx, srv.URL+path); !errors.Is(err, urlpreview.ErrTimeout) {
			t.Errorf("Fetch(%s) = %+v, %v; want ErrTimeout", path, res, err)
		}
	}
	if _, _, err := f.FetchImage(ctx, srv.URL+"/slow-body?type=image/png", 0); !errors.Is(err, urlpreview.ErrTimeout) {
		t.Errorf("FetchImage(slow body) = %v, want ErrTimeout", err)
	}

	// The caller giving up is its own error, not our timeout.
	patient := urlpreview.New(urlpreview.Config{Timeout: time.Minute, AllowedCIDRs: allowLoopback})
	cctx, cancel := context.WithCancel(ctx)
	time.AfterFunc(50*time.Millisecond, cancel)
	_, err := patient.Fetch(cctx, srv.URL+"/no-headers")
	if !errors.Is(err, context.Canceled) || errors.Is(err, urlpreview.ErrTimeout) {
		t.Errorf("cancelled fetch = %v, want context.Canceled", err)
	}
}

func TestResponses(t *testing.T) {
	var userAgent, accept atomic.Value
	mux := http.NewServeMux()
	mux.HandleFunc("/latin1", func(w http.ResponseWriter, r *http.Request) {
		userAgent.Store(r.Header.Get("User-Agent"))
		accept.Store(r.Header.Get("Accept"))
		w.Header().Set("Content-Type", "text/html; charset=ISO-8859-1")
		w.Write([]byte("<title>Caf\xe9 cr\xe8me</title>"))
	})
	mux.HandleFunc("/untyped", func(w http.ResponseWriter, r *http.Request) {
		w.Header()["Content-Type"] = nil // stop net/http from adding one
		w.Write([]byte("<!DOCTYPE html><html><head><meta charset=\"windows-1252\"><title>Sniffed \x93quote\x94</title>"))
	})
	mux.HandleFunc("/doc.pdf", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/pdf")
		w.Write([]byte("%PDF-1.7"))
	})
	mux.HandleFunc("/xhtml", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/xhtml+xml")
		fmt.Fprint(w, `<html xmlns="http://www.w3.org/1999/xhtml"><head><meta property="og:title" content="X"/></head></html>`)
	})
	mux.HandleFunc("/missing", http.NotFound)
	mux.HandleFunc("/broken", func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "oops", http.StatusBadGateway)
	})
	srv := htmlServer(t, mux)
	ctx := context.Background()
	f := urlpreview.New(urlpreview.Config{Timeout: 5 * time.Second, AllowedCIDRs: allowLoopback, UserAgent: "WeftTest/1"})

	res, err := f.Fetch(ctx, srv.URL+"/latin1")
	if err != nil || res.OpenGraph["og:title"] != "Café crème" || res.ContentType != "text/html" {
		t.Errorf("latin1 page = %+v, %v", res, err)
	}
	if ua := userAgent.Load(); ua != "WeftTest/1" {
		t.Errorf("User-Agent = %v", ua)
	}
	if a, _ := accept.Load().(string); !strings.HasPrefix(a, "text/html") {
		t.Errorf("Accept = %q", a)
	}
	res, err = f.Fetch(ctx, srv.URL+"/untyped")
	if err != nil || res.ContentType != "text/html" || res.OpenGraph["og:title"] != "Sniffed “quote”" {
		t.Errorf("untyped page = %+v, %v", res, err)
	}
	res, err = f.Fetch(ctx, srv.URL+"/doc.pdf")
	if err != nil || res.ContentType != "application/pdf" || res.OpenGraph == nil || len(res.OpenGraph) != 0 || res.Image != nil {
		t.Errorf("pdf = %+v, %v; want an empty preview", res, err)
	}
	res, err = f.Fetch(ctx, srv.URL+"/xhtml")
	if err != nil || res.OpenGraph["og:title"] != "X" {
		t.Errorf("xhtml = %+v, %v", res, err)
	}
	if _, _, err := f.FetchImage(ctx, srv.URL+"/latin1", 0); !errors.Is(err, urlpreview.ErrUnsupportedType) {
		t.Errorf("FetchImage(html) = %v, want ErrUnsupportedType", err)
	}
	for path, code := range map[string]int{"/missing": 404, "/broken": 502} {
		_, err := f.Fetch(ctx, srv.URL+path)
		var se *urlpreview.StatusError
		if !errors.Is(err, urlpreview.ErrUpstreamStatus) || !errors.As(err, &se) || se.StatusCode != code {
			t.Errorf("Fetch(%s) = %v, want StatusError %d", path, err, code)
		}
		if _, _, err := f.FetchImage(ctx, srv.URL+path, 0); !errors.Is(err, urlpreview.ErrUpstreamStatus) {
			t.Errorf("FetchImage(%s) = %v, want ErrUpstreamStatus", path, err)
		}
	}
}

// TestConcurrentFetches runs fetches in parallel under -race: the Fetcher is
// shared by every request of the media API.
func TestConcurrentFetches(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("/{n}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		fmt.Fprintf(w, `<meta property="og:title" content="page %s">`, r.PathValue("n"))
	})
	srv := htmlServer(t, mux)
	f := urlpreview.New(urlpreview.Config{Timeout: 5 * time.Second, AllowedCIDRs: allowLoopback})
	errs := make(chan error, 16)
	for i := range 16 {
		go func() {
			res, err := f.Fetch(context.Background(), srv.URL+"/"+strconv.Itoa(i))
			if err == nil && res.OpenGraph["og:title"] != "page "+strconv.Itoa(i) {
				err = fmt.Errorf("fetch %d got %v", i, res.OpenGraph)
			}
			errs <- err
		}()
	}
	for range 16 {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	f.CloseIdleConnections()
}

// The refusal error names the address and the reason, for logs.
func TestRefusalErrorDetail(t *testing.T) {
	f := urlpreview.New(urlpreview.Config{Timeout: 5 * time.Second})
	_, err := f.Fetch(context.Background(), "http://169.254.169.254/")
	var refused *urlpreview.RefusedError
	if !errors.As(err, &refused) || refused.Addr != netip.MustParseAddr("169.254.169.254") || refused.Reason != "link-local" {
		t.Fatalf("err = %#v", err)
	}
	if !strings.Contains(err.Error(), "169.254.169.254") {
		t.Errorf("error %q does not name the address", err)
	}
}

// TestIgnoresEnvironmentProxy: a proxy would make the connections in our
// place, to addresses our dialer never sees. (net/http reads the proxy
// variables once per process, so this test must be the first code in the
// binary to consult them; nothing else here does.)
func TestIgnoresEnvironmentProxy(t *testing.T) {
	proxy := ssrftest.NewTrap(t, "tcp4", "127.0.0.1:0")
	proxyURL := fmt.Sprintf("http://127.0.0.1:%d", proxy.Port())
	for _, k := range []string{"HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy"} {
		t.Setenv(k, proxyURL)
	}
	t.Setenv("NO_PROXY", "")
	t.Setenv("no_proxy", "")
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		fmt.Fprint(w, `<title>direct</title>`)
	})
	srv := htmlServer(t, mux)
	port := srv.Listener.Addr().(*net.TCPAddr).Port
	// A name, not an IP literal: net/http never proxies loopback literals.
	resolver := ssrftest.DNS(t, map[string][]string{"direct.weft.test": {"127.0.0.1"}})
	f := urlpreview.New(urlpreview.Config{Timeout: 5 * time.Second, Resolver: resolver, AllowedCIDRs: allowLoopback})
	res, err := f.Fetch(context.Background(), fmt.Sprintf("http://direct.weft.test:%d/", port))
	if err != nil || res.OpenGraph["og:title"] != "direct" || proxy.Accepted() != 0 {
		t.Errorf("Fetch = %+v, %v; proxy saw %d connections", res, err, proxy.Accepted())
	}
}
