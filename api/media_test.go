package api_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"image"
	"image/color"
	"image/color/palette"
	"image/gif"
	"image/jpeg"
	"image/png"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	_ "golang.org/x/image/webp" // image.Decode of WebP thumbnails' sources in checks
	"maunium.net/go/mautrix"

	"github.com/weftchat/weft/account"
	"github.com/weftchat/weft/api"
	"github.com/weftchat/weft/internal/urlpreview"
	"github.com/weftchat/weft/internal/urlpreview/ssrftest"
	"github.com/weftchat/weft/media"
	"github.com/weftchat/weft/media/thumbnail"
	"github.com/weftchat/weft/storage"
	"github.com/weftchat/weft/storage/pgtest"
)

const mediaServer = "media.example"

// mediaClock is a settable clock for the media service.
type mediaClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *mediaClock) now() time.Time      { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *mediaClock) add(d time.Duration) { c.mu.Lock(); c.t = c.t.Add(d); c.mu.Unlock() }

// mediaStack is the server with accounts and media over real Postgres and
// a real blob directory.
type mediaStack struct {
	srv      *httptest.Server
	db       *storage.DB
	accounts *account.Service
	dir      string
	clock    *mediaClock
	svc      *media.Service
}

type mediaOpts struct {
	cfg        media.Config
	maxBody    int64
	rateLimits api.RateLimits
	// share reuses another stack's database, accounts and blob directory
	// (a second server configuration over the same data).
	share *mediaStack
}

func newMediaStack(t *testing.T, o mediaOpts) *mediaStack {
	t.Helper()
	st := &mediaStack{clock: &mediaClock{t: time.Now()}}
	if o.share != nil {
		st.db, st.accounts, st.dir, st.clock = o.share.db, o.share.accounts, o.share.dir, o.share.clock
	} else {
		st.db = pgtest.NewDB(t)
		st.accounts = account.New(account.Config{
			ServerName: mediaServer, RegistrationMode: "open",
			Password:            account.PasswordPolicy{MinLength: 8, BcryptCost: 4},
			AccessTokenLifetime: time.Hour,
		}, st.db.Accounts(), nil, nil)
		st.dir = t.TempDir()
	}
	cfg := o.cfg
	cfg.ServerName = mediaServer
	if cfg.MaxUploadSize == 0 {
		cfg.MaxUploadSize = 1 << 20
	}
	if cfg.MaxPendingUploads == 0 {
		cfg.MaxPendingUploads = 10
	}
	if cfg.UnusedExpiry == 0 {
		cfg.UnusedExpiry = time.Hour
	}
	if cfg.MaxImagePixels == 0 {
		cfg.MaxImagePixels = 4_000_000
	}
	blobs, err := media.NewLocalBlobs(st.dir)
	if err != nil {
		t.Fatal(err)
	}
	st.svc = media.New(cfg, st.db.Media(), blobs, nil, st.clock.now)
	maxBody := o.maxBody
	if maxBody == 0 {
		maxBody = 64 << 10
	}
	st.srv = httptest.NewServer(api.NewRouter(api.Options{
		ServerName: mediaServer, MaxBodyBytes: maxBody, Accounts: st.accounts, Media: st.svc,
		RegistrationMode: "open", Health: st.db, RateLimits: o.rateLimits,
	}))
	t.Cleanup(func() { st.srv.Close(); st.svc.Close() })
	return st
}

// register creates a user and returns their access token.
func (st *mediaStack) register(t *testing.T, user string) string {
	t.Helper()
	cli, err := mautrix.NewClient(st.srv.URL, "", "")
	if err != nil {
		t.Fatal(err)
	}
	resp, err := cli.RegisterDummy(context.Background(), &mautrix.ReqRegister[any]{Username: user, Password: "password " + user})
	if err != nil {
		t.Fatalf("register %s: %v", user, err)
	}
	return resp.AccessToken
}

type mediaResp struct {
	status int
	header http.Header
	body   []byte
}

func (r mediaResp) json(t *testing.T) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(r.body, &m); err != nil {
		t.Fatalf("status %d, body %q is not JSON: %v", r.status, r.body, err)
	}
	return m
}

func (r mediaResp) wantErr(t *testing.T, status int, errcode string) {
	t.Helper()
	if r.status != status {
		t.Fatalf("status %d, want %d (%s)", r.status, status, r.body)
	}
	if got, _ := r.json(t)["errcode"].(string); got != errcode {
		t.Fatalf("errcode %q, want %s (%s)", got, errcode, r.body)
	}
}

func (r mediaResp) wantStatus(t *testing.T, status int) {
	t.Helper()
	if r.status != status {
		t.Fatalf("status %d, want %d (%s)", r.status, status, r.body)
	}
}

// do sends a request; body may be nil. A body that is not a bytes.Reader
// goes out chunked (no Content-Length).
func (st *mediaStack) do(t *testing.T, method, path, token string, body io.Reader, header map[string]string) mediaResp {
	t.Helper()
	req, err := http.NewRequest(method, st.srv.URL+path, body)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return mediaResp{status: resp.StatusCode, header: resp.Header, body: b}
}

// upload posts data and returns the mxc URI's server name and media ID.
func (st *mediaStack) upload(t *testing.T, token, contentType, query string, data []byte) (string, string) {
	t.Helper()
	h := map[string]string{}
	if contentType != "" {
		h["Content-Type"] = contentType
	}
	r := st.do(t, "POST", "/_matrix/media/v3/upload"+query, token, bytes.NewReader(data), h)
	r.wantStatus(t, 200)
	return splitMXC(t, r.json(t)["content_uri"])
}

func splitMXC(t *testing.T, v any) (string, string) {
	t.Helper()
	s, _ := v.(string)
	rest, ok := strings.CutPrefix(s, "mxc://")
	server, mediaID, ok2 := strings.Cut(rest, "/")
	if !ok || !ok2 || server != mediaServer || !media.ValidMediaID(mediaID) || len(mediaID) < 32 {
		t.Fatalf("content_uri %q", s)
	}
	return server, mediaID
}

func authed(server, mediaID string) string {
	return "/_matrix/client/v1/media/download/" + server + "/" + mediaID
}

func legacy(version, server, mediaID string) string {
	return "/_matrix/media/" + version + "/download/" + server + "/" + mediaID
}

// blobFiles lists the stored content files and the temporary files.
func (st *mediaStack) blobFiles(t *testing.T) (blobs, tmp []string) {
	t.Helper()
	_ = filepath.WalkDir(filepath.Join(st.dir, "blobs"), func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			blobs = append(blobs, d.Name())
		}
		return err
	})
	entries, err := os.ReadDir(filepath.Join(st.dir, "tmp"))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		tmp = append(tmp, e.Name())
	}
	return blobs, tmp
}

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

const wantCSP = "sandbox; default-src 'none'; script-src 'none'; plugin-types application/pdf; style-src 'unsafe-inline'; media-src 'self'; object-src 'self';"

func TestMediaUploadDownloadRoundTrip(t *testing.T) {
	st := newMediaStack(t, mediaOpts{})
	tok := st.register(t, "alice")
	data := []byte("Hello, media repository!")
	server, mediaID := st.upload(t, tok, "text/plain; charset=utf-8", "?filename=hello.txt", data)

	r := st.do(t, "GET", authed(server, mediaID), tok, nil, nil)
	r.wantStatus(t, 200)
	if !bytes.Equal(r.body, data) {
		t.Fatalf("downloaded %q", r.body)
	}
	h := r.header
	for k, want := range map[string]string{
		"Content-Type":                 "text/plain; charset=utf-8",
		"Content-Disposition":          `inline; filename="hello.txt"`,
		"Content-Security-Policy":      wantCSP,
		"X-Content-Type-Options":       "nosniff",
		"Cross-Origin-Resource-Policy": "cross-origin",
		"Cache-Control":                "private, max-age=31536000, immutable",
		"ETag":                         `"` + sha(data) + `"`,
		"Content-Length":               strconv.Itoa(len(data)),
	} {
		if got := h.Get(k); got != want {
			t.Errorf("%s: %q, want %q", k, got, want)
		}
	}
	if lm, err := http.ParseTime(h.Get("Last-Modified")); err != nil || time.Since(lm) > time.Minute {
		t.Errorf("Last-Modified %q", h.Get("Last-Modified"))
	}

	// The path's file name replaces the upload's; a name outside plain
	// ASCII is sent RFC 8187-encoded.
	r = st.do(t, "GET", authed(server, mediaID)+"/other.txt", tok, nil, nil)
	if r.status != 200 || r.header.Get("Content-Disposition") != `inline; filename="other.txt"` {
		t.Fatalf("with fileName: %d %q", r.status, r.header.Get("Content-Disposition"))
	}
	r = st.do(t, "GET", authed(server, mediaID)+"/"+"r%C3%A9sum%C3%A9%20%22x%22.txt", tok, nil, nil)
	if got := r.header.Get("Content-Disposition"); got != `inline; filename*=utf-8''r%C3%A9sum%C3%A9%20%22x%22.txt` {
		t.Fatalf("encoded file name: %q", got)
	}
	r = st.do(t, "GET", authed(server, mediaID)+"/"+"a%2Fb%0A.txt", tok, nil, nil)
	if got := r.header.Get("Content-Disposition"); got != `inline; filename*=utf-8''a%2Fb%0A.txt` {
		t.Fatalf("file name with an escaped slash and a newline: %q", got)
	}

	// r0 upload, no Content-Type, no filename: octet-stream, attachment,
	// no file name.
	r = st.do(t, "POST", "/_matrix/media/r0/upload", tok, bytes.NewReader([]byte{0, 1, 2}), nil)
	r.wantStatus(t, 200)
	server2, id2 := splitMXC(t, r.json(t)["content_uri"])
	r = st.do(t, "GET", authed(server2, id2), tok, nil, nil)
	if r.status != 200 || r.header.Get("Content-Type") != "application/octet-stream" || r.header.Get("Content-Disposition") != "attachment" {
		t.Fatalf("defaults: %d %q %q", r.status, r.header.Get("Content-Type"), r.header.Get("Content-Disposition"))
	}

	// The authenticated endpoints need a token; the upload needs one too.
	st.do(t, "GET", authed(server, mediaID), "", nil, nil).wantErr(t, 401, "M_MISSING_TOKEN")
	st.do(t, "GET", authed(server, mediaID), "wat_bogus", nil, nil).wantErr(t, 401, "M_UNKNOWN_TOKEN")
	st.do(t, "POST", "/_matrix/media/v3/upload", "", bytes.NewReader(data), nil).wantErr(t, 401, "M_MISSING_TOKEN")

	// Unknown IDs, IDs of other servers (no federation yet) and IDs that
	// are not media IDs at all are M_NOT_FOUND.
	st.do(t, "GET", authed(server, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"), tok, nil, nil).wantErr(t, 404, "M_NOT_FOUND")
	st.do(t, "GET", authed("elsewhere.example", mediaID), tok, nil, nil).wantErr(t, 404, "M_NOT_FOUND")
	st.do(t, "GET", authed(server, "..%2F..%2Fetc"), tok, nil, nil).wantErr(t, 404, "M_NOT_FOUND")
	st.do(t, "GET", authed(server, mediaID)+"?timeout_ms=soon", tok, nil, nil).wantErr(t, 400, "M_INVALID_PARAM")
}

func TestMediaContentDispositionFollowsTheSpecsInlineList(t *testing.T) {
	st := newMediaStack(t, mediaOpts{})
	tok := st.register(t, "alice")
	for ct, want := range map[string]string{
		"image/png":              "inline",
		"video/mp4":              "inline",
		"audio/ogg":              "inline",
		"text/plain":             "inline",
		"application/json":       "inline",
		"text/html":              "attachment",
		"image/svg+xml":          "attachment",
		"application/pdf":        "attachment",
		"application/javascript": "attachment",
		"text/javascript":        "attachment",
		"application/xhtml+xml":  "attachment",
	} {
		server, mediaID := st.upload(t, tok, ct, "?filename=f", []byte("<script>alert(1)</script>"))
		r := st.do(t, "GET", authed(server, mediaID), tok, nil, nil)
		if got := r.header.Get("Content-Disposition"); got != want+`; filename="f"` {
			t.Errorf("%s: Content-Disposition %q, want %s", ct, got, want)
		}
		// Content-Type is what was uploaded, even when it is dangerous:
		// attachment and the sandbox CSP make it safe.
		if got := r.header.Get("Content-Type"); got != ct {
			t.Errorf("%s: Content-Type %q", ct, got)
		}
		if r.header.Get("Content-Security-Policy") != wantCSP || r.header.Get("X-Content-Type-Options") != "nosniff" {
			t.Errorf("%s: security headers %v", ct, r.header)
		}
	}
}

func TestMediaRangesAndValidators(t *testing.T) {
	st := newMediaStack(t, mediaOpts{})
	tok := st.register(t, "alice")
	data := []byte("0123456789abcdefghij")
	server, mediaID := st.upload(t, tok, "application/octet-stream", "", data)
	path := authed(server, mediaID)

	r := st.do(t, "GET", path, tok, nil, map[string]string{"Range": "bytes=5-9"})
	if r.status != 206 || string(r.body) != "56789" || r.header.Get("Content-Range") != "bytes 5-9/20" {
		t.Fatalf("range: %d %q %q", r.status, r.body, r.header.Get("Content-Range"))
	}
	r = st.do(t, "GET", path, tok, nil, map[string]string{"Range": "bytes=-3"})
	if r.status != 206 || string(r.body) != "hij" || r.header.Get("Content-Range") != "bytes 17-19/20" {
		t.Fatalf("suffix range: %d %q %q", r.status, r.body, r.header.Get("Content-Range"))
	}
	r = st.do(t, "GET", path, tok, nil, map[string]string{"Range": "bytes=50-60"})
	if r.status != 416 {
		t.Fatalf("unsatisfiable range: %d", r.status)
	}
	etag := `"` + sha(data) + `"`
	r = st.do(t, "GET", path, tok, nil, map[string]string{"If-None-Match": etag})
	if r.status != 304 || len(r.body) != 0 {
		t.Fatalf("If-None-Match: %d %q", r.status, r.body)
	}
	r = st.do(t, "GET", path, tok, nil, map[string]string{"If-None-Match": `"` + strings.Repeat("0", 64) + `"`})
	if r.status != 200 {
		t.Fatalf("other ETag: %d", r.status)
	}
	// If-Range with the strong ETag honours the range.
	r = st.do(t, "GET", path, tok, nil, map[string]string{"Range": "bytes=0-1", "If-Range": etag})
	if r.status != 206 || string(r.body) != "01" {
		t.Fatalf("If-Range: %d %q", r.status, r.body)
	}
}

func TestMediaSizeLimits(t *testing.T) {
	// The general body limit is far below the upload limit: uploads are
	// exempt from it, everything else is not.
	st := newMediaStack(t, mediaOpts{cfg: media.Config{MaxUploadSize: 200 << 10}, maxBody: 4 << 10})
	tok := st.register(t, "alice")
	big := bytes.Repeat([]byte("x"), 200<<10)
	st.upload(t, tok, "text/plain", "", big) // exactly the limit, 50x the body limit

	blobsBefore, _ := st.blobFiles(t)
	tooBig := append(big, 'y')
	// Refused on Content-Length, before reading.
	st.do(t, "POST", "/_matrix/media/v3/upload", tok, bytes.NewReader(tooBig), nil).wantErr(t, 413, "M_TOO_LARGE")
	// Chunked: no length known; refused while streaming.
	st.do(t, "POST", "/_matrix/media/v3/upload", tok, io.MultiReader(bytes.NewReader(tooBig)), nil).wantErr(t, 413, "M_TOO_LARGE")
	st.do(t, "POST", "/_matrix/media/r0/upload", tok, io.MultiReader(bytes.NewReader(tooBig)), nil).wantErr(t, 413, "M_TOO_LARGE")
	// The same for PUT to a created ID.
	r := st.do(t, "POST", "/_matrix/media/v1/create", tok, nil, nil)
	r.wantStatus(t, 200)
	server, mediaID := splitMXC(t, r.json(t)["content_uri"])
	put := "/_matrix/media/v3/upload/" + server + "/" + mediaID
	st.do(t, "PUT", put, tok, io.MultiReader(bytes.NewReader(tooBig)), nil).wantErr(t, 413, "M_TOO_LARGE")
	st.do(t, "PUT", put, tok, bytes.NewReader(tooBig), nil).wantErr(t, 413, "M_TOO_LARGE")
	blobsAfter, tmp := st.blobFiles(t)
	if len(blobsAfter) != len(blobsBefore) || len(tmp) != 0 {
		t.Fatalf("refused uploads left files: %v, tmp %v", blobsAfter, tmp)
	}
	// A chunked upload under the limit works.
	r = st.do(t, "POST", "/_matrix/media/v3/upload", tok, io.MultiReader(strings.NewReader("chunked body")), nil)
	r.wantStatus(t, 200)
	// JSON endpoints keep the general limit.
	st.do(t, "PUT", "/_matrix/client/v3/user/@alice:"+mediaServer+"/account_data/x", tok,
		bytes.NewReader(append([]byte(`{"a":"`), append(bytes.Repeat([]byte("z"), 5<<10), '"', '}')...)), nil).wantErr(t, 413, "M_TOO_LARGE")

	for _, path := range []string{"/_matrix/client/v1/media/config", "/_matrix/media/v3/config", "/_matrix/media/r0/config"} {
		r := st.do(t, "GET", path, tok, nil, nil)
		r.wantStatus(t, 200)
		if got := r.json(t)["m.upload.size"]; got != float64(200<<10) {
			t.Fatalf("%s: m.upload.size %v", path, got)
		}
		st.do(t, "GET", path, "", nil, nil).wantErr(t, 401, "M_MISSING_TOKEN")
	}
}

func TestMediaQuota(t *testing.T) {
	st := newMediaStack(t, mediaOpts{cfg: media.Config{UserQuota: 1000}})
	alice, bob := st.register(t, "alice"), st.register(t, "bob")
	st.upload(t, alice, "text/plain", "", bytes.Repeat([]byte("a"), 600))
	// By Content-Length, and while streaming a chunked body.
	st.do(t, "POST", "/_matrix/media/v3/upload", alice, bytes.NewReader(bytes.Repeat([]byte("b"), 401)), nil).wantErr(t, 403, "M_FORBIDDEN")
	st.do(t, "POST", "/_matrix/media/v3/upload", alice, io.MultiReader(bytes.NewReader(bytes.Repeat([]byte("c"), 401))), nil).wantErr(t, 403, "M_FORBIDDEN")
	// Bob has his own quota; alice can still use the rest of hers.
	st.upload(t, bob, "text/plain", "", bytes.Repeat([]byte("d"), 900))
	st.upload(t, alice, "text/plain", "", bytes.Repeat([]byte("e"), 400))
	st.do(t, "POST", "/_matrix/media/v3/upload", alice, bytes.NewReader([]byte("f")), nil).wantErr(t, 403, "M_FORBIDDEN")
	// Async uploads count too.
	r := st.do(t, "POST", "/_matrix/media/v1/create", alice, nil, nil)
	server, mediaID := splitMXC(t, r.json(t)["content_uri"])
	st.do(t, "PUT", "/_matrix/media/v3/upload/"+server+"/"+mediaID, alice, io.MultiReader(strings.NewReader("g")), nil).wantErr(t, 403, "M_FORBIDDEN")
	if _, tmp := st.blobFiles(t); len(tmp) != 0 {
		t.Fatalf("temporary files left: %v", tmp)
	}
}

func TestMediaAsyncUpload(t *testing.T) {
	st := newMediaStack(t, mediaOpts{cfg: media.Config{MaxPendingUploads: 3, UnusedExpiry: time.Hour}})
	alice, bob := st.register(t, "alice"), st.register(t, "bob")

	r := st.do(t, "POST", "/_matrix/media/v1/create", alice, nil, nil)
	r.wantStatus(t, 200)
	body := r.json(t)
	server, mediaID := splitMXC(t, body["content_uri"])
	expires, _ := body["unused_expires_at"].(float64)
	if want := st.clock.now().Add(time.Hour).UnixMilli(); int64(expires) != want {
		t.Fatalf("unused_expires_at %v, want %d", body["unused_expires_at"], want)
	}
	put := "/_matrix/media/v3/upload/" + server + "/" + mediaID

	// Not uploaded yet: a download waits up to timeout_ms, then 504.
	st.do(t, "GET", authed(server, mediaID)+"?timeout_ms=50", alice, nil, nil).wantErr(t, 504, "M_NOT_YET_UPLOADED")
	st.do(t, "GET", "/_matrix/client/v1/media/thumbnail/"+server+"/"+mediaID+"?width=32&height=32&timeout_ms=0", alice, nil, nil).
		wantErr(t, 504, "M_NOT_YET_UPLOADED")

	// Only the creator may upload.
	st.do(t, "PUT", put, bob, strings.NewReader("bob's"), nil).wantErr(t, 403, "M_FORBIDDEN")

	// A download waiting when the content arrives gets it.
	got := make(chan mediaResp, 1)
	go func() { got <- st.do(t, "GET", authed(server, mediaID)+"?timeout_ms=20000", bob, nil, nil) }()
	time.Sleep(50 * time.Millisecond) // let it start waiting; the outcome is the same if not
	r = st.do(t, "PUT", put+"?filename=late.txt", alice, strings.NewReader("arrived"), map[string]string{"Content-Type": "text/plain"})
	r.wantStatus(t, 200)
	if string(r.body) != "{}" {
		t.Fatalf("PUT answered %q", r.body)
	}
	select {
	case r := <-got:
		if r.status != 200 || string(r.body) != "arrived" || r.header.Get("Content-Disposition") != `inline; filename="late.txt"` {
			t.Fatalf("waiting download: %d %q %v", r.status, r.body, r.header)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("the waiting download did not wake")
	}

	// Once uploaded, the ID cannot be overwritten.
	st.do(t, "PUT", put, alice, strings.NewReader("again"), nil).wantErr(t, 409, "M_CANNOT_OVERWRITE_MEDIA")
	// Unknown IDs, other servers' IDs, bad IDs: 404.
	st.do(t, "PUT", "/_matrix/media/v3/upload/"+server+"/BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB", alice, strings.NewReader("x"), nil).wantErr(t, 404, "M_NOT_FOUND")
	st.do(t, "PUT", "/_matrix/media/v3/upload/elsewhere.example/"+mediaID, alice, strings.NewReader("x"), nil).wantErr(t, 404, "M_NOT_FOUND")
	st.do(t, "PUT", "/_matrix/media/v3/upload/"+server+"/bad.id", alice, strings.NewReader("x"), nil).wantErr(t, 404, "M_NOT_FOUND")

	// The pending limit: three unexpired, unfilled IDs.
	var pending []string
	for range 3 {
		r := st.do(t, "POST", "/_matrix/media/v1/create", alice, nil, nil)
		r.wantStatus(t, 200)
		_, id := splitMXC(t, r.json(t)["content_uri"])
		pending = append(pending, id)
		st.clock.add(time.Minute)
	}
	r = st.do(t, "POST", "/_matrix/media/v1/create", alice, nil, nil)
	r.wantErr(t, 429, "M_LIMIT_EXCEEDED")
	// retry_after_ms: until the oldest pending ID expires (created 3 min ago).
	if ms, _ := r.json(t)["retry_after_ms"].(float64); int64(ms) != (57 * time.Minute).Milliseconds() {
		t.Fatalf("retry_after_ms %v", r.json(t)["retry_after_ms"])
	}
	if r.header.Get("Retry-After") != strconv.Itoa(57*60) {
		t.Fatalf("Retry-After %q", r.header.Get("Retry-After"))
	}
	st.do(t, "POST", "/_matrix/media/v1/create", bob, nil, nil).wantStatus(t, 200)

	// Expiry: an hour later the oldest is gone; its slot is free again.
	st.clock.add(57 * time.Minute)
	st.do(t, "PUT", "/_matrix/media/v3/upload/"+server+"/"+pending[0], alice, strings.NewReader("too late"), nil).wantErr(t, 404, "M_NOT_FOUND")
	st.do(t, "GET", authed(server, pending[0])+"?timeout_ms=10000", alice, nil, nil).wantErr(t, 404, "M_NOT_FOUND")
	st.do(t, "POST", "/_matrix/media/v1/create", alice, nil, nil).wantStatus(t, 200)
	if n, err := st.svc.ExpirePending(context.Background()); err != nil || n != 1 {
		t.Fatalf("expiry task deleted %d: %v", n, err)
	}
	// The others still take content.
	st.do(t, "PUT", "/_matrix/media/v3/upload/"+server+"/"+pending[1], alice, strings.NewReader("in time"), nil).wantStatus(t, 200)
}

// Spec v1.11 freeze: media uploaded while the freeze is on is served only
// by the authenticated endpoints; media from before stays reachable on
// the legacy ones; without the freeze they serve everything.
func TestMediaLegacyEndpointsAndTheFreeze(t *testing.T) {
	open := newMediaStack(t, mediaOpts{cfg: media.Config{FreezeUnauthenticated: false}})
	tok := open.register(t, "alice")
	img := pngBytes(t, 64, 64, true)
	server, before := open.upload(t, tok, "image/png", "?filename=before.png", img)

	frozen := newMediaStack(t, mediaOpts{cfg: media.Config{FreezeUnauthenticated: true, ThumbnailSizes: media.DefaultThumbnailSizes}, share: open})
	_, during := frozen.upload(t, tok, "image/png", "?filename=during.png", img)

	for _, v := range []string{"v3", "r0"} {
		// No token needed for media from before the freeze.
		r := frozen.do(t, "GET", legacy(v, server, before), "", nil, nil)
		if r.status != 200 || !bytes.Equal(r.body, img) || r.header.Get("Cache-Control") != "public, max-age=31536000, immutable" ||
			r.header.Get("Content-Security-Policy") != wantCSP || r.header.Get("Content-Disposition") != `inline; filename="before.png"` {
			t.Fatalf("%s legacy download of pre-freeze media: %d %v", v, r.status, r.header)
		}
		r = frozen.do(t, "GET", legacy(v, server, before)+"/renamed.png", "", nil, nil)
		if r.status != 200 || r.header.Get("Content-Disposition") != `inline; filename="renamed.png"` {
			t.Fatalf("%s legacy download with fileName: %d %v", v, r.status, r.header)
		}
		r = frozen.do(t, "GET", "/_matrix/media/"+v+"/thumbnail/"+server+"/"+before+"?width=32&height=32&method=crop", "", nil, nil)
		if r.status != 200 || !strings.HasPrefix(r.header.Get("Content-Type"), "image/") {
			t.Fatalf("%s legacy thumbnail of pre-freeze media: %d %s", v, r.status, r.body)
		}
		// Not for media uploaded during the freeze, with or without a token.
		frozen.do(t, "GET", legacy(v, server, during), "", nil, nil).wantErr(t, 404, "M_NOT_FOUND")
		frozen.do(t, "GET", legacy(v, server, during), tok, nil, nil).wantErr(t, 404, "M_NOT_FOUND")
		frozen.do(t, "GET", "/_matrix/media/"+v+"/thumbnail/"+server+"/"+during+"?width=32&height=32", "", nil, nil).wantErr(t, 404, "M_NOT_FOUND")
	}
	// The authenticated endpoints serve both.
	for _, mediaID := range []string{before, during} {
		frozen.do(t, "GET", authed(server, mediaID), tok, nil, nil).wantStatus(t, 200)
	}
	// A pending ID is refused at once on the legacy endpoints: its
	// content will arrive during the freeze.
	r := frozen.do(t, "POST", "/_matrix/media/v1/create", tok, nil, nil)
	_, pending := splitMXC(t, r.json(t)["content_uri"])
	frozen.do(t, "GET", legacy("v3", server, pending)+"?timeout_ms=20000", "", nil, nil).wantErr(t, 404, "M_NOT_FOUND")

	// Freeze lifted: the legacy endpoints serve everything again.
	open.do(t, "GET", legacy("v3", server, during), "", nil, nil).wantStatus(t, 200)
	open.do(t, "GET", "/_matrix/media/r0/thumbnail/"+server+"/"+during+"?width=32&height=32", "", nil, nil).wantStatus(t, 200)
}

func TestMediaDeduplicatesContent(t *testing.T) {
	st := newMediaStack(t, mediaOpts{})
	alice, bob := st.register(t, "alice"), st.register(t, "bob")
	data := []byte("identical bytes")
	_, a := st.upload(t, alice, "text/plain", "?filename=a.txt", data)
	_, b := st.upload(t, bob, "application/octet-stream", "?filename=b.bin", data)
	if a == b {
		t.Fatal("two uploads got the same media ID")
	}
	blobs, tmp := st.blobFiles(t)
	if len(blobs) != 1 || blobs[0] != sha(data) || len(tmp) != 0 {
		t.Fatalf("files %v, tmp %v; want one, named by its SHA-256", blobs, tmp)
	}
	// Each keeps its own metadata.
	r := st.do(t, "GET", authed(mediaServer, b), alice, nil, nil)
	if r.header.Get("Content-Type") != "application/octet-stream" || r.header.Get("Content-Disposition") != `attachment; filename="b.bin"` {
		t.Fatalf("second upload's metadata: %v", r.header)
	}
}

// --- thumbnails ---------------------------------------------------------------

func gradient(w, h int, alpha bool) *image.NRGBA {
	img := image.NewNRGBA(image.Rect(0, 0, w, h))
	a := uint8(255)
	if alpha {
		a = 200 // translucent everywhere, so every crop keeps alpha
	}
	for y := range h {
		for x := range w {
			i := img.PixOffset(x, y)
			copy(img.Pix[i:i+4], []uint8{uint8(x * 255 / w), uint8(y * 255 / h), 100, a})
		}
	}
	return img
}

func pngBytes(t *testing.T, w, h int, alpha bool) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := png.Encode(&b, gradient(w, h, alpha)); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func jpegBytes(t *testing.T, w, h int) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := jpeg.Encode(&b, gradient(w, h, false), nil); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// gifBytes is a two-frame GIF; thumbnails show the first frame.
func gifBytes(t *testing.T, w, h int) []byte {
	t.Helper()
	frame := func(c uint8) *image.Paletted {
		p := image.NewPaletted(image.Rect(0, 0, w, h), palette.Plan9)
		for y := range h {
			for x := range w {
				p.Set(x, y, color.RGBA{c, uint8(x), uint8(y), 255})
			}
		}
		return p
	}
	var b bytes.Buffer
	if err := gif.EncodeAll(&b, &gif.GIF{Image: []*image.Paletted{frame(0), frame(255)}, Delay: []int{10, 10}}); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// scaleDims is the largest size within boxW x boxH with the aspect ratio
// of srcW x srcH, never larger than the source.
func scaleDims(srcW, srcH, boxW, boxH int) (int, int) {
	if srcW <= boxW && srcH <= boxH {
		return srcW, srcH
	}
	if srcW*boxH >= srcH*boxW { // width limits
		return boxW, max(1, (srcH*boxW+srcW/2)/srcW)
	}
	return max(1, (srcW*boxH+srcH/2)/srcH), boxH
}

func decodeThumb(t *testing.T, r mediaResp) image.Image {
	t.Helper()
	img, _, err := image.Decode(bytes.NewReader(r.body))
	if err != nil {
		t.Fatalf("thumbnail (%s) does not decode: %v", r.header.Get("Content-Type"), err)
	}
	return img
}

func TestMediaThumbnailsOfEachFormat(t *testing.T) {
	st := newMediaStack(t, mediaOpts{cfg: media.Config{ThumbnailSizes: media.DefaultThumbnailSizes}})
	tok := st.register(t, "alice")
	webp, err := os.ReadFile("../media/thumbnail/testdata/lossy.webp")
	if err != nil {
		t.Fatal(err)
	}
	wcfg, _, err := image.DecodeConfig(bytes.NewReader(webp))
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name, contentType string
		data              []byte
		w, h              int
		wantType          string // "" when either JPEG or PNG will do
	}{
		{"png", "image/png", pngBytes(t, 900, 450, false), 900, 450, "image/jpeg"}, // opaque: JPEG thumbnails
		{"png-alpha", "image/png", pngBytes(t, 900, 450, true), 900, 450, "image/png"},
		{"jpeg", "image/jpeg", jpegBytes(t, 960, 720), 960, 720, "image/jpeg"},
		{"gif", "image/gif", gifBytes(t, 400, 300), 400, 300, ""},
		{"webp", "image/webp", webp, wcfg.Width, wcfg.Height, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			server, mediaID := st.upload(t, tok, c.contentType, "", c.data)
			base := "/_matrix/client/v1/media/thumbnail/" + server + "/" + mediaID
			for _, q := range []struct {
				query string
				w, h  int
			}{
				{"width=32&height=32&method=crop", 32, 32},
				{"width=90&height=90&method=crop", 96, 96},
				{"width=300&height=200&method=scale", 320, 240},
				{"width=800&height=600&method=scale", 800, 600},
			} {
				r := st.do(t, "GET", base+"?"+q.query, tok, nil, nil)
				r.wantStatus(t, 200)
				ct := r.header.Get("Content-Type")
				if (c.wantType != "" && ct != c.wantType) || (ct != "image/jpeg" && ct != "image/png") {
					t.Fatalf("%s: Content-Type %q", q.query, ct)
				}
				ext := map[string]string{"image/jpeg": ".jpg", "image/png": ".png"}[ct]
				if got := r.header.Get("Content-Disposition"); got != `inline; filename="thumbnail`+ext+`"` {
					t.Fatalf("%s: Content-Disposition %q", q.query, got)
				}
				if r.header.Get("Content-Security-Policy") != wantCSP || r.header.Get("X-Content-Type-Options") != "nosniff" ||
					r.header.Get("Cross-Origin-Resource-Policy") != "cross-origin" || r.header.Get("ETag") != `"`+sha(r.body)+`"` {
					t.Fatalf("%s: headers %v", q.query, r.header)
				}
				b := decodeThumb(t, r).Bounds()
				var w, h int
				if q.h == q.w { // square crop: square, no larger than the source's short side
					w = min(q.w, c.w, c.h)
					h = w
				} else {
					w, h = scaleDims(c.w, c.h, q.w, q.h)
				}
				if b.Dx() != w || b.Dy() != h {
					t.Fatalf("%s: %dx%d thumbnail of %dx%d, want %dx%d", q.query, b.Dx(), b.Dy(), c.w, c.h, w, h)
				}
			}
			// Default method is scale; animated=true gets a still image.
			r := st.do(t, "GET", base+"?width=320&height=240&animated=true", tok, nil, nil)
			r.wantStatus(t, 200)
			if b := decodeThumb(t, r).Bounds(); b.Dx() > 320 || b.Dy() > 240 || (b.Dx() != 320 && b.Dy() != 240 && b.Dx() != c.w) {
				t.Fatalf("default scale: %v", b)
			}
		})
	}
}

func TestMediaThumbnailErrors(t *testing.T) {
	st := newMediaStack(t, mediaOpts{cfg: media.Config{ThumbnailSizes: media.DefaultThumbnailSizes, MaxImagePixels: 200 * 200}})
	tok := st.register(t, "alice")
	server, img := st.upload(t, tok, "image/png", "", pngBytes(t, 100, 100, false))
	_, text := st.upload(t, tok, "text/plain", "", []byte("words"))
	_, liar := st.upload(t, tok, "image/jpeg", "", []byte("this is no picture at all"))
	_, truncated := st.upload(t, tok, "image/png", "", pngBytes(t, 100, 100, false)[:200])
	_, huge := st.upload(t, tok, "image/png", "", pngBytes(t, 201, 200, false))
	thumb := func(mediaID, q string) mediaResp {
		return st.do(t, "GET", "/_matrix/client/v1/media/thumbnail/"+server+"/"+mediaID+"?"+q, tok, nil, nil)
	}
	thumb(img, "height=32").wantErr(t, 400, "M_MISSING_PARAM")
	thumb(img, "width=32").wantErr(t, 400, "M_MISSING_PARAM")
	thumb(img, "width=0&height=32").wantErr(t, 400, "M_INVALID_PARAM")
	thumb(img, "width=-5&height=32").wantErr(t, 400, "M_INVALID_PARAM")
	thumb(img, "width=3.5&height=32").wantErr(t, 400, "M_INVALID_PARAM")
	thumb(img, "width=32&height=32&method=stretch").wantErr(t, 400, "M_INVALID_PARAM")
	thumb(img, "width=32&height=32&animated=maybe").wantErr(t, 400, "M_INVALID_PARAM")
	// The spec's answers for content that cannot be thumbnailed: 400
	// M_UNKNOWN; for an image too large to thumbnail: 413 M_TOO_LARGE.
	thumb(text, "width=32&height=32").wantErr(t, 400, "M_UNKNOWN")
	thumb(liar, "width=32&height=32").wantErr(t, 400, "M_UNKNOWN")
	thumb(truncated, "width=32&height=32").wantErr(t, 400, "M_UNKNOWN")
	thumb(huge, "width=32&height=32").wantErr(t, 413, "M_TOO_LARGE")
	thumb("CCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCC", "width=32&height=32").wantErr(t, 404, "M_NOT_FOUND")
	st.do(t, "GET", "/_matrix/client/v1/media/thumbnail/"+server+"/"+img+"?width=32&height=32", "", nil, nil).wantErr(t, 401, "M_MISSING_TOKEN")
	// A request larger than the image gets the image's own size, never more.
	r := thumb(img, "width=2000&height=2000&method=scale")
	r.wantStatus(t, 200)
	if b := decodeThumb(t, r).Bounds(); b.Dx() != 100 || b.Dy() != 100 {
		t.Fatalf("upscaled to %v", b)
	}
}

func TestMediaPreviewURLIsOffByDefault(t *testing.T) {
	st := newMediaStack(t, mediaOpts{})
	tok := st.register(t, "alice")
	for _, p := range []string{"/_matrix/client/v1/media/preview_url", "/_matrix/media/v3/preview_url", "/_matrix/media/r0/preview_url"} {
		st.do(t, "GET", p+"?url=https%3A%2F%2Fexample.org", tok, nil, nil).wantErr(t, 404, "M_UNRECOGNIZED")
		st.do(t, "GET", p+"?url=https%3A%2F%2Fexample.org", "", nil, nil).wantErr(t, 401, "M_MISSING_TOKEN")
	}
}

// Uploads and creates count against the per-user write limit.
func TestMediaUploadsAreRateLimited(t *testing.T) {
	st := newMediaStack(t, mediaOpts{rateLimits: api.RateLimits{
		Enabled: true, Login: api.Bucket{PerSecond: 100, Burst: 100}, Register: api.Bucket{PerSecond: 100, Burst: 100},
		Writes: api.Bucket{PerSecond: 0.001, Burst: 2},
	}})
	tok := st.register(t, "alice")
	st.upload(t, tok, "text/plain", "", []byte("one"))
	st.do(t, "POST", "/_matrix/media/v1/create", tok, nil, nil).wantStatus(t, 200)
	r := st.do(t, "POST", "/_matrix/media/v3/upload", tok, strings.NewReader("three"), nil)
	r.wantErr(t, 429, "M_LIMIT_EXCEEDED")
	if _, ok := r.json(t)["retry_after_ms"].(float64); !ok {
		t.Fatalf("no retry_after_ms: %s", r.body)
	}
	// Downloads are reads, not limited.
	st.do(t, "GET", "/_matrix/client/v1/media/config", tok, nil, nil).wantStatus(t, 200)
}

var _ = thumbnail.Crop

// URL previews, through the real router, Postgres, blob store and the real
// safe fetcher (internal/urlpreview).

// newPreviewStack is a media stack whose router serves previews fetched
// with fcfg.
func newPreviewStack(t *testing.T, fcfg urlpreview.Config) *mediaStack {
	t.Helper()
	st := newMediaStack(t, mediaOpts{})
	if fcfg.Timeout == 0 {
		fcfg.Timeout = 5 * time.Second
	}
	p := media.NewPreviewer(st.svc, urlpreview.ForMedia(urlpreview.New(fcfg)), media.PreviewConfig{})
	st.srv.Close()
	st.srv = httptest.NewServer(api.NewRouter(api.Options{
		ServerName: mediaServer, MaxBodyBytes: 64 << 10, Accounts: st.accounts, Media: st.svc,
		URLPreview: p, RegistrationMode: "open", Health: st.db,
	}))
	t.Cleanup(p.Close) // runs before the stack's cleanup closes the service
	return st
}

func previewPath(target string) string {
	return "/_matrix/client/v1/media/preview_url?url=" + url.QueryEscape(target)
}

// mediaCount is how many media rows exist.
func (st *mediaStack) mediaCount(t *testing.T) int64 {
	t.Helper()
	n, err := st.db.Media().CountMediaBefore(context.Background(), time.Now().Add(24*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// previewSite serves an OpenGraph page at / whose og:image is /logo.png,
// the image, and a few failure cases; hits counts requests by path.
type previewSite struct {
	srv  *httptest.Server
	logo []byte
	mu   sync.Mutex
	hits map[string]int
	// imageURL, when set, replaces /logo.png as the page's og:image.
	imageURL string
}

func newPreviewSite(t *testing.T, ln net.Listener) *previewSite {
	t.Helper()
	site := &previewSite{logo: pngBytes(t, 60, 40, false), hits: map[string]int{}}
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		img := site.imageURL
		if img == "" {
			img = "/logo.png"
		}
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		io.WriteString(w, `<!doctype html><html><head><title>fallback</title>
<meta property="og:title" content="Weft &amp; friends">
<meta property="og:description" content="A homeserver">
<meta property="og:type" content="website">
<meta property="og:image" content="`+img+`">
<meta property="og:image:width" content="1200">
</head><body>hello</body></html>`)
	})
	mux.HandleFunc("/logo.png", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "image/png")
		w.Write(site.logo)
	})
	mux.HandleFunc("/photo", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "image/png")
		w.Write(site.logo)
	})
	mux.HandleFunc("/data.json", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"a": 1}`)
	})
	mux.HandleFunc("/missing", http.NotFound)
	mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-time.After(10 * time.Second):
		}
	})
	mux.HandleFunc("/loop", func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, "/loop", http.StatusFound) })
	counted := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		site.mu.Lock()
		site.hits[r.URL.Path]++
		site.mu.Unlock()
		mux.ServeHTTP(w, r)
	})
	site.srv = httptest.NewUnstartedServer(counted)
	if ln != nil {
		site.srv.Listener.Close()
		site.srv.Listener = ln
	}
	site.srv.Start()
	t.Cleanup(site.srv.Close)
	return site
}

func (s *previewSite) count(path string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.hits[path]
}

var loopback4 = []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}

func TestMediaPreviewURL(t *testing.T) {
	site := newPreviewSite(t, nil)
	st := newPreviewStack(t, urlpreview.Config{AllowedCIDRs: loopback4})
	tok := st.register(t, "alice")

	r := st.do(t, "GET", previewPath(site.srv.URL+"/"), tok, nil, nil)
	r.wantStatus(t, 200)
	og := r.json(t)
	if og["og:title"] != "Weft & friends" || og["og:description"] != "A homeserver" || og["og:type"] != "website" {
		t.Fatalf("preview = %s", r.body)
	}
	server, mediaID := splitMXC(t, og["og:image"])
	if og["matrix:image:size"] != float64(len(site.logo)) || og["og:image:type"] != "image/png" ||
		og["og:image:width"] != float64(60) || og["og:image:height"] != float64(40) {
		t.Fatalf("image properties: %s", r.body)
	}
	dl := st.do(t, "GET", authed(server, mediaID), tok, nil, nil)
	dl.wantStatus(t, 200)
	if !bytes.Equal(dl.body, site.logo) {
		t.Fatalf("og:image downloads %d bytes, not the %d bytes of the page's image", len(dl.body), len(site.logo))
	}
	if site.count("/") != 1 || site.count("/logo.png") != 1 {
		t.Fatalf("site hits %v", site.hits)
	}

	// Another user, the legacy path, and a fragment: the cached preview.
	bob := st.register(t, "bob")
	again := st.do(t, "GET", "/_matrix/media/v3/preview_url?url="+url.QueryEscape(site.srv.URL+"/#top")+"&ts=1510610716656", bob, nil, nil)
	again.wantStatus(t, 200)
	if again.json(t)["og:image"] != og["og:image"] || site.count("/") != 1 || site.count("/logo.png") != 1 {
		t.Fatalf("second preview %s, site hits %v; want the cached one", again.body, site.hits)
	}

	// A URL that is an image: the image is the preview.
	r = st.do(t, "GET", previewPath(site.srv.URL+"/photo"), tok, nil, nil)
	r.wantStatus(t, 200)
	img := r.json(t)
	if _, id2 := splitMXC(t, img["og:image"]); id2 == mediaID || img["matrix:image:size"] != float64(len(site.logo)) {
		t.Fatalf("image URL preview: %s", r.body)
	}
	// A type with no preview: an empty object, as the spec allows.
	r = st.do(t, "GET", previewPath(site.srv.URL+"/data.json"), tok, nil, nil)
	r.wantStatus(t, 200)
	if len(r.json(t)) != 0 {
		t.Fatalf("JSON preview: %s", r.body)
	}

	st.do(t, "GET", "/_matrix/client/v1/media/preview_url", tok, nil, nil).wantErr(t, 400, "M_MISSING_PARAM")
	st.do(t, "GET", previewPath("ftp://example.org/file"), tok, nil, nil).wantErr(t, 400, "M_INVALID_PARAM")
	st.do(t, "GET", previewPath("not a url"), tok, nil, nil).wantErr(t, 400, "M_INVALID_PARAM")
	st.do(t, "GET", previewPath(site.srv.URL+"/")+"&ts=soon", tok, nil, nil).wantErr(t, 400, "M_INVALID_PARAM")
	st.do(t, "GET", previewPath(site.srv.URL+"/"), "", nil, nil).wantErr(t, 401, "M_MISSING_TOKEN")
}

func TestMediaPreviewURLFailures(t *testing.T) {
	site := newPreviewSite(t, nil)
	st := newPreviewStack(t, urlpreview.Config{AllowedCIDRs: loopback4, Timeout: 500 * time.Millisecond, MaxRedirects: 3})
	tok := st.register(t, "alice")
	st.do(t, "GET", previewPath(site.srv.URL+"/missing"), tok, nil, nil).wantErr(t, 502, "M_UNKNOWN")
	st.do(t, "GET", previewPath(site.srv.URL+"/loop"), tok, nil, nil).wantErr(t, 502, "M_UNKNOWN")
	st.do(t, "GET", previewPath(site.srv.URL+"/slow"), tok, nil, nil).wantErr(t, 504, "M_UNKNOWN")
	// A failure is remembered: asking again does not reach the site.
	st.do(t, "GET", previewPath(site.srv.URL+"/missing"), tok, nil, nil).wantErr(t, 502, "M_UNKNOWN")
	st.do(t, "GET", previewPath(site.srv.URL+"/slow"), tok, nil, nil).wantErr(t, 504, "M_UNKNOWN")
	if site.count("/missing") != 1 || site.count("/slow") != 1 {
		t.Fatalf("site hits %v; failures should be cached", site.hits)
	}
}

// THE SSRF TEST: with no allow-list, nothing private is fetched, whatever
// form the address takes, and nothing is stored.
func TestMediaPreviewURLRefusesPrivateAddresses(t *testing.T) {
	trap4 := ssrftest.NewTrap(t, "tcp4", "127.0.0.1:0")
	var trap6 *ssrftest.Trap
	p6 := 1
	if ln, err := net.Listen("tcp6", "[::1]:0"); err == nil {
		ln.Close()
		trap6 = ssrftest.NewTrap(t, "tcp6", "[::1]:0")
		p6 = trap6.Port()
	}
	resolver := ssrftest.DNS(t, map[string][]string{
		"intranet.weft.test": {"127.0.0.1"},
		"six.weft.test":      {"::1"},
		"meta.weft.test":     {"169.254.169.254"},
	})
	// The stub answers, so a refusal below is the dial check's doing, not
	// a name that failed to resolve.
	if got, err := resolver.LookupNetIP(context.Background(), "ip4", "intranet.weft.test"); err != nil || len(got) != 1 {
		t.Fatalf("DNS stub: %v, %v", got, err)
	}
	st := newPreviewStack(t, urlpreview.Config{Resolver: resolver, Timeout: 3 * time.Second})
	tok := st.register(t, "mallory")
	p4 := trap4.Port()
	targets := []string{
		fmt.Sprintf("http://127.0.0.1:%d/", p4),
		"http://10.0.0.1/",
		"http://169.254.169.254/latest/meta-data/",
		fmt.Sprintf("http://[::1]:%d/", p6),
		fmt.Sprintf("http://[::ffff:127.0.0.1]:%d/", p4),
		fmt.Sprintf("http://intranet.weft.test:%d/", p4),
		fmt.Sprintf("http://six.weft.test:%d/", p6),
		"http://meta.weft.test/latest/meta-data/",
		fmt.Sprintf("http://0.0.0.0:%d/", p4),
		"http://[fd00::1]/",
	}
	for _, target := range targets {
		for _, path := range []string{previewPath(target), "/_matrix/media/r0/preview_url?url=" + url.QueryEscape(target)} {
			r := st.do(t, "GET", path, tok, nil, nil)
			if r.status != 403 {
				t.Errorf("%s: status %d (%s), want 403", target, r.status, r.body)
				continue
			}
			r.wantErr(t, 403, "M_FORBIDDEN")
			for _, leak := range []string{"127.0", "10.0.0.1", "169.254", "::1", "fd00", "refus", "loopback", "private"} {
				if strings.Contains(string(r.body), leak) {
					t.Errorf("%s: the answer %s mentions %q", target, r.body, leak)
				}
			}
		}
	}
	if n := trap4.Accepted(); n != 0 {
		t.Errorf("the IPv4 loopback trap accepted %d connections", n)
	}
	trap4.WantReachable(t)
	if trap6 != nil {
		if n := trap6.Accepted(); n != 0 {
			t.Errorf("the IPv6 loopback trap accepted %d connections", n)
		}
		trap6.WantReachable(t)
	}
	if blobs, tmp := st.blobFiles(t); len(blobs) != 0 || len(tmp) != 0 {
		t.Errorf("refused previews stored files: %v %v", blobs, tmp)
	}
	if n := st.mediaCount(t); n != 0 {
		t.Errorf("refused previews stored %d media rows", n)
	}
}

// A page the operator allows cannot redirect, or point its og:image, at an
// address that is not allowed.
func TestMediaPreviewURLRefusesRedirectsToPrivateAddresses(t *testing.T) {
	trap := ssrftest.NewTrap(t, "tcp4", "127.0.0.1:0")
	trapURL := fmt.Sprintf("http://127.0.0.1:%d/secret.png", trap.Port())
	// The allowed site lives on 127.0.0.2; 127.0.0.1 stays refused.
	ln, err := net.Listen("tcp4", "127.0.0.2:0")
	if err != nil {
		t.Fatalf("listening on 127.0.0.2: %v", err)
	}
	site := newPreviewSite(t, ln)
	site.imageURL = trapURL
	redirector := http.NewServeMux()
	redirector.HandleFunc("/go", func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, trapURL, http.StatusFound) })
	ln2, err := net.Listen("tcp4", "127.0.0.2:0")
	if err != nil {
		t.Fatal(err)
	}
	var redirects atomic.Int64
	rs := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		redirects.Add(1)
		redirector.ServeHTTP(w, r)
	}))
	rs.Listener.Close()
	rs.Listener = ln2
	rs.Start()
	t.Cleanup(rs.Close)

	st := newPreviewStack(t, urlpreview.Config{AllowedCIDRs: []netip.Prefix{netip.MustParsePrefix("127.0.0.2/32")}})
	tok := st.register(t, "mallory")
	r := st.do(t, "GET", previewPath(rs.URL+"/go"), tok, nil, nil)
	r.wantErr(t, 403, "M_FORBIDDEN")
	if redirects.Load() != 1 {
		t.Fatalf("the allowed server saw %d requests, want 1 (the redirect was never tried)", redirects.Load())
	}
	// The page itself is fine; its og:image on a refused address is left
	// out, not fetched.
	r = st.do(t, "GET", previewPath(site.srv.URL+"/"), tok, nil, nil)
	r.wantStatus(t, 200)
	og := r.json(t)
	if og["og:title"] != "Weft & friends" {
		t.Fatalf("page preview: %s", r.body)
	}
	for k := range og {
		if strings.HasPrefix(k, "og:image") || k == "matrix:image:size" {
			t.Errorf("preview keeps %s although its image was refused: %s", k, r.body)
		}
	}
	if n := trap.Accepted(); n != 0 {
		t.Errorf("the trap accepted %d connections", n)
	}
	trap.WantReachable(t)
	if n := st.mediaCount(t); n != 0 {
		t.Errorf("%d media rows stored", n)
	}
}
