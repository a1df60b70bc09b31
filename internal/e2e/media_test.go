package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"image"
	"image/gif"
	"image/jpeg"
	"image/png"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	_ "golang.org/x/image/webp" // decoding WebP sources in checks
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"

	"github.com/weftchat/weft/storage/pgtest"
)

// mediaEnv is a media server's environment: accountsEnv plus media limits.
func mediaEnv(extra map[string]string) map[string]string {
	env := map[string]string{
		"WEFT_MEDIA_MAX_UPLOAD_SIZE": strconv.Itoa(1 << 20),
	}
	for k, v := range extra {
		env[k] = v
	}
	return accountsEnv(env)
}

// mediaGet fetches path with an optional token and headers.
func mediaGet(t *testing.T, srv *Server, path, token string, header map[string]string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest("GET", srv.URL+path, nil)
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
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, body
}

func mediaImage(w, h int) *image.RGBA {
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	for y := range h {
		for x := range w {
			i := img.PixOffset(x, y)
			copy(img.Pix[i:i+4], []uint8{uint8(x * 255 / w), uint8(y * 255 / h), 90, 255})
		}
	}
	return img
}

func encodeImage(t *testing.T, format string, w, h int) []byte {
	t.Helper()
	var b bytes.Buffer
	var err error
	switch format {
	case "png":
		err = png.Encode(&b, mediaImage(w, h))
	case "jpeg":
		err = jpeg.Encode(&b, mediaImage(w, h), nil)
	case "gif":
		err = gif.Encode(&b, mediaImage(w, h), nil)
	case "webp":
		return readWebP(t)
	}
	if err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func readWebP(t *testing.T) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot(t), "media", "thumbnail", "testdata", "photo_1920x1080.webp"))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

const mediaCSP = "sandbox; default-src 'none'; script-src 'none'; plugin-types application/pdf; style-src 'unsafe-inline'; media-src 'self'; object-src 'self';"

// Upload and download with mautrix's client through the authenticated
// media API, thumbnails of every format, ranges, validators, the security
// headers, and content stored once.
func TestMediaUploadDownloadAndThumbnails(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	srv := Start(t, Options{Env: mediaEnv(nil)})
	alice := registerUser(t, srv, "alice", "alice-password")
	bob := registerUser(t, srv, "bob", "bob-password")

	cfg, err := alice.GetMediaConfig(ctx)
	if err != nil || cfg.UploadSize != 1<<20 {
		t.Fatalf("media config %+v %v", cfg, err)
	}
	r := doJSON(t, "GET", clientURL(srv, "v1", "media", "config"), alice.AccessToken, nil)
	specValidate(t, r.Body, "authed-content-repo.yaml", "/media/config", "get", "200")

	doc := []byte("minutes of the meeting\n")
	up, err := alice.UploadBytesWithName(ctx, doc, "text/plain", "minutes.txt")
	if err != nil {
		t.Fatal(err)
	}
	if up.ContentURI.Homeserver != "localhost" || len(up.ContentURI.FileID) < 32 {
		t.Fatalf("content URI %v", up.ContentURI)
	}
	got, err := bob.DownloadBytes(ctx, up.ContentURI)
	if err != nil || !bytes.Equal(got, doc) {
		t.Fatalf("download %q %v", got, err)
	}
	path := "/_matrix/client/v1/media/download/localhost/" + up.ContentURI.FileID
	resp, _ := mediaGet(t, srv, path, bob.AccessToken, nil)
	sum := sha256.Sum256(doc)
	for k, want := range map[string]string{
		"Content-Type":                 "text/plain",
		"Content-Disposition":          `inline; filename="minutes.txt"`,
		"Content-Security-Policy":      mediaCSP,
		"X-Content-Type-Options":       "nosniff",
		"Cross-Origin-Resource-Policy": "cross-origin",
		"Cache-Control":                "private, max-age=31536000, immutable",
		"ETag":                         `"` + hex.EncodeToString(sum[:]) + `"`,
	} {
		if got := resp.Header.Get(k); got != want {
			t.Errorf("%s: %q, want %q", k, got, want)
		}
	}
	resp, body := mediaGet(t, srv, path, bob.AccessToken, map[string]string{"Range": "bytes=4-9"})
	if resp.StatusCode != 206 || string(body) != "tes of" || resp.Header.Get("Content-Range") != "bytes 4-9/"+strconv.Itoa(len(doc)) {
		t.Fatalf("range: %d %q %q", resp.StatusCode, body, resp.Header.Get("Content-Range"))
	}
	resp, _ = mediaGet(t, srv, path, bob.AccessToken, map[string]string{"If-None-Match": resp.Header.Get("ETag")})
	if resp.StatusCode != 304 {
		t.Fatalf("If-None-Match: %d", resp.StatusCode)
	}
	resp, _ = mediaGet(t, srv, path, "", nil)
	if resp.StatusCode != 401 {
		t.Fatalf("unauthenticated download: %d", resp.StatusCode)
	}
	// HTML is served as an attachment, never rendered inline.
	page, err := alice.UploadBytes(ctx, []byte("<script>alert(1)</script>"), "text/html")
	if err != nil {
		t.Fatal(err)
	}
	resp, _ = mediaGet(t, srv, "/_matrix/client/v1/media/download/localhost/"+page.ContentURI.FileID, bob.AccessToken, nil)
	if resp.Header.Get("Content-Disposition") != "attachment" || resp.Header.Get("Content-Type") != "text/html" {
		t.Fatalf("html: %v", resp.Header)
	}

	// The same bytes uploaded again are stored once.
	again, err := bob.UploadBytes(ctx, doc, "application/octet-stream")
	if err != nil {
		t.Fatal(err)
	}
	if again.ContentURI == up.ContentURI {
		t.Fatal("second upload got the same media ID")
	}
	if n := countBlobs(t, srv.DataDir, hex.EncodeToString(sum[:])); n != 1 {
		t.Fatalf("%d files hold the same content", n)
	}

	for _, format := range []string{"png", "jpeg", "gif", "webp"} {
		data := encodeImage(t, format, 900, 600)
		src, _, err := image.DecodeConfig(bytes.NewReader(data))
		if err != nil {
			t.Fatal(err)
		}
		up, err := alice.UploadBytes(ctx, data, "image/"+format)
		if err != nil {
			t.Fatalf("%s: %v", format, err)
		}
		for _, c := range []struct {
			w, h   int
			method string
		}{{32, 32, "crop"}, {96, 96, "crop"}, {320, 240, "scale"}, {640, 480, "scale"}} {
			resp, err := bob.DownloadThumbnail(ctx, up.ContentURI, c.h, c.w, mautrix.DownloadThumbnailExtra{Method: c.method})
			if err != nil {
				t.Fatalf("%s %dx%d %s: %v", format, c.w, c.h, c.method, err)
			}
			thumb, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil {
				t.Fatal(err)
			}
			img, _, err := image.Decode(bytes.NewReader(thumb))
			if err != nil {
				t.Fatalf("%s %dx%d: thumbnail does not decode: %v", format, c.w, c.h, err)
			}
			w, h := c.w, c.h
			if c.method == "scale" { // the box's limiting side, the source's aspect ratio
				if src.Width*c.h >= src.Height*c.w {
					h = (src.Height*c.w + src.Width/2) / src.Width
				} else {
					w = (src.Width*c.h + src.Height/2) / src.Height
				}
			}
			if b := img.Bounds(); b.Dx() != w || b.Dy() != h {
				t.Fatalf("%s %s %dx%d: got %dx%d, want %dx%d", format, c.method, c.w, c.h, b.Dx(), b.Dy(), w, h)
			}
			if ct := resp.Header.Get("Content-Type"); ct != "image/jpeg" && ct != "image/png" {
				t.Fatalf("%s: thumbnail type %q", format, ct)
			}
			if !strings.HasPrefix(resp.Header.Get("Content-Disposition"), "inline") || resp.Header.Get("Content-Security-Policy") != mediaCSP {
				t.Fatalf("%s: thumbnail headers %v", format, resp.Header)
			}
		}
	}
	_, err = bob.DownloadThumbnail(ctx, up.ContentURI, 32, 32)
	wantHTTPErr(t, err, 400, "M_UNKNOWN") // text cannot be thumbnailed
}

// countBlobs counts the stored files named hash under the data directory.
func countBlobs(t *testing.T, dataDir, hash string) int {
	t.Helper()
	n := 0
	_ = filepath.WalkDir(filepath.Join(dataDir, "media"), func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && d.Name() == hash {
			n++
		}
		return err
	})
	return n
}

// Size limit, quota, and asynchronous uploads (create, upload, overwrite,
// other users, the pending limit, expiry, waiting downloads).
func TestMediaLimitsAndAsyncUploads(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	srv := Start(t, Options{Env: mediaEnv(map[string]string{
		"WEFT_MEDIA_USER_QUOTA":          strconv.Itoa(3 << 19), // 1.5 MiB
		"WEFT_MEDIA_MAX_PENDING_UPLOADS": "2",
		"WEFT_MEDIA_UNUSED_EXPIRY":       "2s",
	})})
	alice := registerUser(t, srv, "alice", "alice-password")
	bob := registerUser(t, srv, "bob", "bob-password")

	_, err := alice.UploadBytes(ctx, bytes.Repeat([]byte("x"), 1<<20+1), "application/octet-stream")
	wantHTTPErr(t, err, 413, "M_TOO_LARGE")
	if _, err := alice.UploadBytes(ctx, bytes.Repeat([]byte("y"), 1<<20), "application/octet-stream"); err != nil {
		t.Fatalf("an upload at the limit: %v", err)
	}
	// Streamed with no length given: refused while reading.
	_, err = alice.UploadMedia(ctx, mautrix.ReqUploadMedia{Content: io.MultiReader(bytes.NewReader(bytes.Repeat([]byte("z"), 1<<20+10))), ContentLength: -1, ContentType: "application/octet-stream"})
	wantHTTPErr(t, err, 413, "M_TOO_LARGE")
	// Quota: 1 MiB used of 1.5 MiB.
	_, err = alice.UploadBytes(ctx, bytes.Repeat([]byte("w"), 600<<10), "application/octet-stream")
	wantHTTPErr(t, err, 403, "M_FORBIDDEN")
	if _, err := bob.UploadBytes(ctx, bytes.Repeat([]byte("w"), 600<<10), "application/octet-stream"); err != nil {
		t.Fatalf("bob's own quota: %v", err)
	}

	created, err := alice.CreateMXC(ctx)
	if err != nil {
		t.Fatal(err)
	}
	r := doJSON(t, "POST", srv.URL+"/_matrix/media/v1/create", alice.AccessToken, nil)
	r.wantOK(t)
	specValidate(t, r.Body, "content-repo.yaml", "/media/v1/create", "post", "200")
	if exp := created.UnusedExpiresAt.Time; exp.Before(time.Now()) || exp.After(time.Now().Add(3*time.Second)) {
		t.Fatalf("unused_expires_at %v", exp)
	}
	// Two pending: the limit.
	_, err = alice.CreateMXC(ctx)
	wantHTTPErr(t, err, 429, "M_LIMIT_EXCEEDED")

	// Not uploaded yet: a download waits, then gives up with 504.
	_, err = bob.DownloadWithParams(ctx, created.ContentURI, mautrix.DownloadExtra{Query: map[string]string{"timeout_ms": "100"}})
	wantHTTPErr(t, err, 504, "M_NOT_YET_UPLOADED")
	// One waiting now gets the content when it arrives.
	waited := make(chan []byte, 1)
	go func() {
		resp, err := bob.DownloadWithParams(ctx, created.ContentURI, mautrix.DownloadExtra{Query: map[string]string{"timeout_ms": "10000"}})
		if err != nil {
			t.Error(err)
			waited <- nil
			return
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		waited <- b
	}()
	_, err = bob.UploadMedia(ctx, mautrix.ReqUploadMedia{MXC: created.ContentURI, ContentBytes: []byte("bob's"), ContentType: "text/plain"})
	wantHTTPErr(t, err, 403, "M_FORBIDDEN")
	if _, err := alice.UploadMedia(ctx, mautrix.ReqUploadMedia{MXC: created.ContentURI, ContentBytes: []byte("async content"), ContentType: "text/plain", FileName: "a.txt"}); err != nil {
		t.Fatal(err)
	}
	select {
	case b := <-waited:
		if string(b) != "async content" {
			t.Fatalf("waiting download got %q", b)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("the waiting download did not get the content")
	}
	_, err = alice.UploadMedia(ctx, mautrix.ReqUploadMedia{MXC: created.ContentURI, ContentBytes: []byte("again"), ContentType: "text/plain"})
	wantHTTPErr(t, err, 409, "M_CANNOT_OVERWRITE_MEDIA")

	// Expiry: the other pending ID dies after 2 s, freeing its slot.
	pendingURI := strings.TrimPrefix(r.Body["content_uri"].(string), "mxc://")
	time.Sleep(2100 * time.Millisecond)
	r = doJSON(t, "PUT", srv.URL+"/_matrix/media/v3/upload/"+pendingURI, alice.AccessToken, []byte("late"))
	r.wantErr(t, 404, "M_NOT_FOUND")
	if _, err := alice.CreateMXC(ctx); err != nil {
		t.Fatalf("create after expiry: %v", err)
	}

	// mautrix's UploadAsync: the URI comes back at once, the content
	// follows; a download started meanwhile waits for it.
	done := make(chan struct{})
	async, err := alice.UploadAsync(ctx, mautrix.ReqUploadMedia{ContentBytes: []byte("sent in the background"), ContentType: "text/plain", DoneCallback: func() { close(done) }})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := bob.DownloadWithParams(ctx, async.ContentURI, mautrix.DownloadExtra{Query: map[string]string{"timeout_ms": "15000"}})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(b) != "sent in the background" {
		t.Fatalf("async upload downloaded as %q", b)
	}
	<-done
}

// The unauthenticated legacy endpoints serve media from before the freeze
// and not media from during it; `weft media purge` deletes old media beside
// the running server.
func TestMediaFreezeAndPurge(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dbURL := pgtest.NewDatabase(t)
	dataDir := TempDir(t)
	first := Start(t, Options{DataDir: dataDir, Env: mediaEnv(map[string]string{"WEFT_DATABASE_URL": dbURL, "WEFT_MEDIA_FREEZE_UNAUTHENTICATED": "false"})})
	alice := registerUser(t, first, "alice", "alice-password")
	img := encodeImage(t, "png", 200, 100)
	up, err := alice.UploadBytesWithName(ctx, img, "image/png", "before.png")
	if err != nil {
		t.Fatal(err)
	}
	before := up.ContentURI
	first.Stop()

	srv := Start(t, Options{DataDir: dataDir, Env: mediaEnv(map[string]string{"WEFT_DATABASE_URL": dbURL})}) // the freeze is the default
	token := alice.AccessToken
	alice = srv.Client() // the same session, on the restarted server
	alice.SetCredentials("@alice:localhost", token)
	up, err = alice.UploadBytesWithName(ctx, img, "image/png", "during.png")
	if err != nil {
		t.Fatal(err)
	}
	during := up.ContentURI
	legacyDL := func(v string, uri id.ContentURI) int {
		resp, _ := mediaGet(t, srv, "/_matrix/media/"+v+"/download/"+uri.Homeserver+"/"+uri.FileID, "", nil)
		return resp.StatusCode
	}
	legacyThumb := func(v string, uri id.ContentURI) int {
		resp, _ := mediaGet(t, srv, "/_matrix/media/"+v+"/thumbnail/"+uri.Homeserver+"/"+uri.FileID+"?width=32&height=32", "", nil)
		return resp.StatusCode
	}
	for _, v := range []string{"v3", "r0"} {
		if legacyDL(v, before) != 200 || legacyThumb(v, before) != 200 {
			t.Fatalf("%s: media from before the freeze is not served unauthenticated", v)
		}
		if legacyDL(v, during) != 404 || legacyThumb(v, during) != 404 {
			t.Fatalf("%s: media from during the freeze is served unauthenticated", v)
		}
	}
	for _, uri := range []id.ContentURI{before, during} {
		if b, err := alice.DownloadBytes(ctx, uri); err != nil || !bytes.Equal(b, img) {
			t.Fatalf("authenticated download of %v: %v", uri, err)
		}
	}
	up, err = alice.UploadBytes(ctx, []byte("a document uploaded before the cut-off"), "text/plain")
	if err != nil {
		t.Fatal(err)
	}
	oldDoc := up.ContentURI

	// Purge everything uploaded so far. RFC 3339 has whole seconds: step
	// past the second of the last upload to purge, then upload the one to
	// keep after the cut-off.
	time.Sleep(1100 * time.Millisecond)
	cut := time.Now().UTC().Format(time.RFC3339)
	time.Sleep(1100 * time.Millisecond)
	up, err = alice.UploadBytes(ctx, img, "image/png") // same bytes as the purged ones: that content stays
	if err != nil {
		t.Fatal(err)
	}
	kept := up.ContentURI
	cliEnv := map[string]string{"WEFT_DATABASE_URL": dbURL, "WEFT_DATA_DIR": dataDir, "WEFT_SERVER_NAME": "localhost"}
	out, code := Run(t, cliEnv, "media", "purge", "--before", cut)
	if code != 0 {
		t.Fatalf("purge: %d %s", code, out)
	}
	if !regexp.MustCompile(`(?m)^purged 3/3 media, [0-9.]+ (bytes|KiB|MiB) freed$`).MatchString(out) || !strings.Contains(out, "done: purged 3/3 media") {
		t.Fatalf("purge output %q", out)
	}
	for _, uri := range []id.ContentURI{before, during, oldDoc} {
		_, err := alice.DownloadBytes(ctx, uri)
		wantHTTPErr(t, err, 404, "M_NOT_FOUND")
	}
	if b, err := alice.DownloadBytes(ctx, kept); err != nil || !bytes.Equal(b, img) {
		t.Fatalf("media after the cut-off: %v", err)
	}
	// Operator mistakes are explained.
	for args, want := range map[string]string{
		"media purge":                     "--before is required",
		"media purge --before yesterday":  "is not a date",
		"media purge --before 2999-01-01": "in the future",
		"media prune --before 2020-01-01": "unknown command",
	} {
		out, code := Run(t, cliEnv, strings.Fields(args)...)
		if code == 0 || !strings.Contains(out, want) {
			t.Errorf("%s: %d %q, want an error saying %q", args, code, out, want)
		}
	}
}
