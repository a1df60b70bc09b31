package e2e

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
)

// previewConfig turns URL previews on for a server whose test sites listen
// on 127.0.0.1 (every other private address stays refused).
const previewConfig = `media:
  url_preview:
    enabled: true
    timeout: 3s
    ip_range_allowlist: [127.0.0.1/32]
`

func TestURLPreview(t *testing.T) {
	ctx := context.Background()
	logo := encodeImage(t, "png", 48, 32)
	var pageHits atomic.Int64
	mux := http.NewServeMux()
	mux.HandleFunc("/article", func(w http.ResponseWriter, r *http.Request) {
		pageHits.Add(1)
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		io.WriteString(w, `<html><head>
<meta property="og:title" content="Previews in Weft">
<meta property="og:description" content="Fetched safely">
<meta property="og:image" content="/logo.png">
</head><body></body></html>`)
	})
	mux.HandleFunc("/logo.png", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "image/png")
		w.Write(logo)
	})
	site := httptest.NewServer(mux)
	t.Cleanup(site.Close)

	srv := Start(t, Options{Env: mediaEnv(nil), Config: previewConfig})
	alice := registerUser(t, srv, "alice", "alice password")

	preview, err := alice.GetURLPreview(ctx, site.URL+"/article")
	if err != nil {
		t.Fatal(err)
	}
	if preview.Title != "Previews in Weft" || preview.Description != "Fetched safely" {
		t.Fatalf("preview %+v", preview)
	}
	uri, err := preview.ImageURL.Parse()
	if err != nil || uri.Homeserver != "localhost" {
		t.Fatalf("og:image %q (%v), want an mxc URI of this server", preview.ImageURL, err)
	}
	if preview.ImageType != "image/png" || int(preview.ImageWidth) != 48 || int(preview.ImageHeight) != 32 ||
		int(preview.ImageSize) != len(logo) {
		t.Fatalf("image properties %+v, want image/png 48x32 of %d bytes", preview, len(logo))
	}
	got, err := alice.DownloadBytes(ctx, uri)
	if err != nil || !bytes.Equal(got, logo) {
		t.Fatalf("downloading og:image: %d bytes, %v; want the site's %d bytes", len(got), err, len(logo))
	}

	// The raw answer matches the spec's schema, and comes from the cache.
	r := doJSON(t, "GET", clientURL(srv, "v1", "media", "preview_url")+"?url="+url.QueryEscape(site.URL+"/article"),
		alice.AccessToken, nil)
	r.wantOK(t)
	specValidate(t, r.Body, "authed-content-repo.yaml", "/media/preview_url", "get", "200")
	if r.Body["og:image"] != uri.String() || pageHits.Load() != 1 {
		t.Fatalf("second preview %s after %d page fetches; want the cached one", r.Raw, pageHits.Load())
	}

	// The binary's fetcher refuses what the allow-list does not cover
	// (::1, another loopback address), answers 403 without naming it, and
	// maps a remote failure to 502.
	trap, err := net.Listen("tcp4", "127.0.0.2:0")
	if err != nil {
		t.Fatal(err)
	}
	defer trap.Close()
	var trapped atomic.Int64
	go func() {
		for {
			c, err := trap.Accept()
			if err != nil {
				return
			}
			trapped.Add(1)
			c.Close()
		}
	}()
	for _, target := range []string{
		"http://" + trap.Addr().String() + "/",
		"http://[::1]:" + strings.Split(site.Listener.Addr().String(), ":")[1] + "/article",
		"http://169.254.169.254/latest/meta-data/",
	} {
		r := doJSON(t, "GET", clientURL(srv, "v1", "media", "preview_url")+"?url="+url.QueryEscape(target), alice.AccessToken, nil)
		r.wantErr(t, 403, "M_FORBIDDEN")
		specValidateErr(t, r)
		if strings.Contains(string(r.Raw), "127.0.0.2") || strings.Contains(string(r.Raw), "::1") {
			t.Fatalf("the answer names the address: %s", r.Raw)
		}
	}
	if n := trapped.Load(); n != 0 {
		t.Fatalf("a refused preview connected to 127.0.0.2 (%d connections)", n)
	}
	r = doJSON(t, "GET", clientURL(srv, "v1", "media", "preview_url")+"?url="+url.QueryEscape(site.URL+"/nothing-here"), alice.AccessToken, nil)
	r.wantErr(t, 502, "M_UNKNOWN")
	r = doJSON(t, "GET", clientURL(srv, "v1", "media", "preview_url")+"?url="+url.QueryEscape("gopher://"+site.Listener.Addr().String()), alice.AccessToken, nil)
	r.wantErr(t, 400, "M_INVALID_PARAM")
}

func TestURLPreviewIsOffByDefault(t *testing.T) {
	srv := Start(t, Options{Env: mediaEnv(nil)})
	alice := registerUser(t, srv, "alice", "alice password")
	_, err := alice.GetURLPreview(context.Background(), "https://example.org/")
	wantHTTPErr(t, err, 404, "M_UNRECOGNIZED")
	r := doJSON(t, "GET", srv.URL+"/_matrix/media/v3/preview_url?url="+url.QueryEscape("https://example.org/"), alice.AccessToken, nil)
	r.wantErr(t, 404, "M_UNRECOGNIZED")
}
