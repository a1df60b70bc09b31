package media_test

import (
	"bytes"
	"context"
	"errors"
	"image"
	"image/color"
	"image/jpeg"
	"image/png"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"

	"github.com/weftchat/weft/media"
	"github.com/weftchat/weft/media/thumbnail"
	"github.com/weftchat/weft/storage"
	"github.com/weftchat/weft/storage/pgtest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// clock is a settable time source.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time  { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) set(t time.Time) { c.mu.Lock(); c.t = t; c.mu.Unlock() }

type env struct {
	svc   *media.Service
	store *storage.Media
	dir   string
	clk   *clock
}

func newEnv(t *testing.T, cfg media.Config) *env {
	t.Helper()
	db := pgtest.NewDB(t)
	dir := t.TempDir()
	blobs, err := media.NewLocalBlobs(dir)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.ServerName == "" {
		cfg.ServerName = "media.test"
	}
	if cfg.MaxUploadSize == 0 {
		cfg.MaxUploadSize = 10 << 20
	}
	if cfg.MaxPendingUploads == 0 {
		cfg.MaxPendingUploads = 5
	}
	if cfg.MaxImagePixels == 0 {
		cfg.MaxImagePixels = 10_000_000
	}
	clk := &clock{t: time.Date(2025, 1, 10, 9, 0, 0, 0, time.UTC)}
	svc := media.New(cfg, db.Media(), blobs, nil, clk.now)
	t.Cleanup(svc.Close)
	return &env{svc: svc, store: db.Media(), dir: dir, clk: clk}
}

func (e *env) upload(t *testing.T, user id.UserID, ct string, data []byte) id.ContentURI {
	t.Helper()
	uri, err := e.svc.Upload(context.Background(), media.Upload{User: user, ContentType: ct, Length: int64(len(data)), Body: bytes.NewReader(data)})
	if err != nil {
		t.Fatalf("upload: %v", err)
	}
	return uri
}

// diskFiles maps each stored blob file's name to its size.
func diskFiles(t *testing.T, dir string) map[string]int64 {
	t.Helper()
	out := map[string]int64{}
	err := filepath.WalkDir(filepath.Join(dir, "blobs"), func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		out[d.Name()] = info.Size()
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func pngImage(t *testing.T, w, h int) []byte {
	t.Helper()
	img := image.NewNRGBA(image.Rect(0, 0, w, h))
	for y := range h {
		for x := range w {
			img.Set(x, y, color.NRGBA{uint8(x), uint8(y), 128, 255})
		}
	}
	var b bytes.Buffer
	if err := png.Encode(&b, img); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func jpegImage(t *testing.T, w, h int) []byte {
	t.Helper()
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	for y := range h {
		for x := range w {
			img.Set(x, y, color.RGBA{uint8(x * 3), uint8(y * 5), 60, 255})
		}
	}
	var b bytes.Buffer
	if err := jpeg.Encode(&b, img, nil); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func wantErrcode(t *testing.T, err error, code string) {
	t.Helper()
	var re mautrix.RespError
	if !errors.As(err, &re) || re.ErrCode != code {
		t.Fatalf("want %s, got %v", code, err)
	}
}

func readAll(t *testing.T, c *media.Content) []byte {
	t.Helper()
	defer c.Close()
	b, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// waitThumbnails waits for the background workers to store n thumbnails
// of mediaID.
func waitThumbnails(t *testing.T, e *env, mediaID string, n int) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		ths, err := e.store.Thumbnails(context.Background(), mediaID)
		if err != nil {
			t.Fatal(err)
		}
		if len(ths) == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d thumbnails of %s after 20s", len(ths), n, mediaID)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestPurgeDeletesOldMediaAndUnsharedContent(t *testing.T) {
	ctx := context.Background()
	sizes := []thumbnail.Size{{Width: 32, Height: 32, Method: thumbnail.Crop}, {Width: 64, Height: 48, Method: thumbnail.Scale}}
	e := newEnv(t, media.Config{ThumbnailSizes: sizes})
	t1 := e.clk.now()
	shared := []byte("the same words twice")
	img := pngImage(t, 200, 150)
	oldImage := e.upload(t, "@a:media.test", "image/png", img)
	oldText := e.upload(t, "@a:media.test", "text/plain", shared)
	if _, _, err := e.svc.Create(ctx, "@a:media.test"); err != nil {
		t.Fatal(err)
	}
	waitThumbnails(t, e, oldImage.FileID, len(sizes))
	e.clk.set(t1.Add(48 * time.Hour))
	newText := e.upload(t, "@b:media.test", "text/plain", shared)

	before := diskFiles(t, e.dir)
	if len(before) != 4 { // image, shared text, two thumbnails
		t.Fatalf("files before the purge: %v", before)
	}
	var reports []media.PurgeProgress
	p, err := e.svc.Purge(ctx, t1.Add(24*time.Hour), func(p media.PurgeProgress) { reports = append(reports, p) })
	if err != nil {
		t.Fatal(err)
	}
	after := diskFiles(t, e.dir)
	var freed int64
	for name, size := range before {
		if _, ok := after[name]; !ok {
			freed += size
		}
	}
	if p.Total != 3 || p.Deleted != 3 || p.Blobs != 3 || p.Freed != freed || len(after) != 1 {
		t.Fatalf("purge %+v; files before %v, after %v", p, before, after)
	}
	if len(reports) == 0 || reports[len(reports)-1] != p {
		t.Fatalf("progress reports %+v", reports)
	}
	for _, gone := range []id.ContentURI{oldImage, oldText} {
		_, err := e.svc.Download(ctx, gone, media.Access{})
		wantErrcode(t, err, "M_NOT_FOUND")
	}
	c, err := e.svc.Download(ctx, newText, media.Access{})
	if err != nil {
		t.Fatal(err)
	}
	if got := readAll(t, c); !bytes.Equal(got, shared) {
		t.Fatalf("shared content after purge: %q", got)
	}
}

// A purge that stopped after deleting rows (a crash) left content nothing
// refers to; the next purge removes it.
func TestPurgeFinishesAnInterruptedPurge(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, media.Config{})
	t1 := e.clk.now()
	e.upload(t, "@a:media.test", "application/pdf", []byte("%PDF-1.7 pretend"))
	if n, _, err := e.store.DeleteMediaBefore(ctx, t1.Add(time.Hour), 10); err != nil || n != 1 {
		t.Fatalf("%d %v", n, err)
	}
	if len(diskFiles(t, e.dir)) != 1 {
		t.Fatal("setup: the content should still be on disk")
	}
	p, err := e.svc.Purge(ctx, t1.Add(-time.Hour), nil)
	if err != nil {
		t.Fatal(err)
	}
	if p.Total != 0 || p.Blobs != 1 || p.Freed != int64(len("%PDF-1.7 pretend")) || len(diskFiles(t, e.dir)) != 0 {
		t.Fatalf("purge %+v, files %v", p, diskFiles(t, e.dir))
	}
}

func TestDownloadWaitsForPendingContent(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, media.Config{UnusedExpiry: time.Hour})
	uri, expires, err := e.svc.Create(ctx, "@a:media.test")
	if err != nil {
		t.Fatal(err)
	}
	if !expires.Equal(e.clk.now().Add(time.Hour)) || uri.Homeserver != "media.test" || len(uri.FileID) != 32 {
		t.Fatalf("created %v expiring %v", uri, expires)
	}

	// Nobody uploads: the wait ends with M_NOT_YET_UPLOADED.
	_, err = e.svc.Download(ctx, uri, media.Access{Wait: 30 * time.Millisecond})
	wantErrcode(t, err, "M_NOT_YET_UPLOADED")
	if n := media.WaiterCount(e.svc); n != 0 {
		t.Fatalf("%d waiters left after a timeout", n)
	}

	type result struct {
		data []byte
		err  error
	}
	got := make(chan result, 3)
	for range 3 {
		go func() {
			c, err := e.svc.Download(ctx, uri, media.Access{Wait: time.Minute})
			if err != nil {
				got <- result{err: err}
				return
			}
			defer c.Close()
			b, err := io.ReadAll(c)
			got <- result{b, err}
		}()
	}
	// Let the downloads start waiting (the result is the same if they
	// have not: they then find the content at once).
	time.Sleep(50 * time.Millisecond)
	if err := e.svc.UploadTo(ctx, uri, media.Upload{User: "@a:media.test", ContentType: "text/plain", Length: -1, Body: strings.NewReader("late")}); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		select {
		case r := <-got:
			if r.err != nil || string(r.data) != "late" {
				t.Fatalf("waiting download: %q %v", r.data, r.err)
			}
		case <-time.After(20 * time.Second):
			t.Fatal("a waiting download did not wake")
		}
	}
	if n := media.WaiterCount(e.svc); n != 0 {
		t.Fatalf("%d waiters left", n)
	}
	// Downloads of uploaded media register nothing.
	c, err := e.svc.Download(ctx, uri, media.Access{})
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if n := media.WaiterCount(e.svc); n != 0 {
		t.Fatalf("%d waiters after a plain download", n)
	}

	// An expired ID is gone, with or without the expiry task.
	uri2, _, err := e.svc.Create(ctx, "@a:media.test")
	if err != nil {
		t.Fatal(err)
	}
	e.clk.set(e.clk.now().Add(time.Hour))
	_, err = e.svc.Download(ctx, uri2, media.Access{Wait: time.Minute})
	wantErrcode(t, err, "M_NOT_FOUND")
	err = e.svc.UploadTo(ctx, uri2, media.Upload{User: "@a:media.test", Length: 1, Body: strings.NewReader("x")})
	wantErrcode(t, err, "M_NOT_FOUND")
	if n, err := e.svc.ExpirePending(ctx); err != nil || n != 1 {
		t.Fatalf("expired %d %v", n, err)
	}
}

// Thumbnails at configured sizes are kept; larger requests are made for
// the request and not kept; a JPEG the thumbnail would not shrink is served
// as it is.
func TestThumbnailChoices(t *testing.T) {
	ctx := context.Background()
	sizes := []thumbnail.Size{{Width: 32, Height: 32, Method: thumbnail.Crop}, {Width: 100, Height: 100, Method: thumbnail.Scale}}
	e := newEnv(t, media.Config{ThumbnailSizes: sizes})
	uri := e.upload(t, "@a:media.test", "image/png", pngImage(t, 400, 300))
	waitThumbnails(t, e, uri.FileID, 2)

	bounds := func(c *media.Content) image.Rectangle {
		t.Helper()
		img, _, err := image.Decode(bytes.NewReader(readAll(t, c)))
		if err != nil {
			t.Fatal(err)
		}
		return img.Bounds()
	}
	c, err := e.svc.Thumbnail(ctx, uri, media.ThumbnailRequest{Width: 20, Height: 20, Method: thumbnail.Crop}, media.Access{})
	if err != nil {
		t.Fatal(err)
	}
	if b := bounds(c); b.Dx() != 32 || b.Dy() != 32 {
		t.Fatalf("crop 20x20 served %v, want the 32x32 size", b)
	}
	c, err = e.svc.Thumbnail(ctx, uri, media.ThumbnailRequest{Width: 90, Height: 60, Method: thumbnail.Scale}, media.Access{})
	if err != nil {
		t.Fatal(err)
	}
	if b := bounds(c); b.Dx() != 100 || b.Dy() != 75 {
		t.Fatalf("scale 90x60 served %v, want 100x75", b)
	}
	// Larger than every configured size: never smaller than asked.
	c, err = e.svc.Thumbnail(ctx, uri, media.ThumbnailRequest{Width: 200, Height: 200, Method: thumbnail.Scale}, media.Access{})
	if err != nil {
		t.Fatal(err)
	}
	if b := bounds(c); b.Dx() != 200 || b.Dy() != 150 {
		t.Fatalf("scale 200x200 served %v, want 200x150", b)
	}
	if ths, _ := e.store.Thumbnails(ctx, uri.FileID); len(ths) != 2 {
		t.Fatalf("a request-sized thumbnail was kept: %+v", ths)
	}

	small := jpegImage(t, 24, 24)
	smallURI := e.upload(t, "@a:media.test", "image/jpeg", small)
	c, err = e.svc.Thumbnail(ctx, smallURI, media.ThumbnailRequest{Width: 96, Height: 96, Method: thumbnail.Scale}, media.Access{})
	if err != nil {
		t.Fatal(err)
	}
	if got := readAll(t, c); !bytes.Equal(got, small) || c.ContentType != "image/jpeg" {
		t.Fatalf("a small JPEG should be served as uploaded (%d bytes, %s)", len(got), c.ContentType)
	}

	text := e.upload(t, "@a:media.test", "text/plain", []byte("not a picture"))
	_, err = e.svc.Thumbnail(ctx, text, media.ThumbnailRequest{Width: 32, Height: 32, Method: thumbnail.Crop}, media.Access{})
	wantErrcode(t, err, "M_UNKNOWN")
	liar := e.upload(t, "@a:media.test", "image/png", []byte("not a png at all"))
	_, err = e.svc.Thumbnail(ctx, liar, media.ThumbnailRequest{Width: 32, Height: 32, Method: thumbnail.Crop}, media.Access{})
	wantErrcode(t, err, "M_UNKNOWN")
}

func TestThumbnailRefusesImagesOverThePixelLimit(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, media.Config{MaxImagePixels: 100 * 100, ThumbnailSizes: []thumbnail.Size{{Width: 32, Height: 32, Method: thumbnail.Crop}}})
	uri := e.upload(t, "@a:media.test", "image/png", pngImage(t, 101, 100))
	_, err := e.svc.Thumbnail(ctx, uri, media.ThumbnailRequest{Width: 32, Height: 32, Method: thumbnail.Crop}, media.Access{})
	wantErrcode(t, err, "M_TOO_LARGE")
	if ths, _ := e.store.Thumbnails(ctx, uri.FileID); len(ths) != 0 {
		t.Fatalf("thumbnails of an over-limit image: %+v", ths)
	}
}
