package storage_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"maunium.net/go/mautrix/id"

	"github.com/weftchat/weft/media"
	"github.com/weftchat/weft/storage"
	"github.com/weftchat/weft/storage/pgtest"
)

var t0 = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

func hashN(n int) string { return fmt.Sprintf("%064x", n) }

func uploaded(mediaID string, user id.UserID, hash string, size int64, at time.Time) media.Record {
	return media.Record{MediaID: mediaID, UserID: user, ContentType: "image/png", FileName: "a.png",
		Size: size, SHA256: hash, CreatedAt: at, UploadedAt: at, Frozen: true}
}

func noPlace() error { return nil }

func TestMediaRecordsRoundTrip(t *testing.T) {
	ctx := context.Background()
	m := pgtest.NewDB(t).Media()
	placed := 0
	rec := uploaded("m1", "@a:x", hashN(1), 100, t0)
	if err := m.AddMedia(ctx, rec, 0, func() error { placed++; return nil }); err != nil {
		t.Fatal(err)
	}
	if placed != 1 {
		t.Fatalf("place ran %d times", placed)
	}
	got, err := m.Media(ctx, "m1")
	if err != nil {
		t.Fatal(err)
	}
	if got.MediaID != "m1" || got.UserID != "@a:x" || got.ContentType != "image/png" || got.FileName != "a.png" ||
		got.Size != 100 || got.SHA256 != hashN(1) || !got.CreatedAt.Equal(t0) || !got.UploadedAt.Equal(t0) ||
		!got.Frozen || got.Pending() || !got.ExpiresAt.IsZero() {
		t.Fatalf("record %+v", got)
	}
	if _, err := m.Media(ctx, "nope"); !errors.Is(err, media.ErrNotFound) {
		t.Fatalf("unknown media: %v", err)
	}
	// A failing place writes nothing.
	boom := errors.New("disk full")
	if err := m.AddMedia(ctx, uploaded("m2", "@a:x", hashN(2), 5, t0), 0, func() error { return boom }); !errors.Is(err, boom) {
		t.Fatalf("place error: %v", err)
	}
	if _, err := m.Media(ctx, "m2"); !errors.Is(err, media.ErrNotFound) {
		t.Fatalf("media kept after place failed: %v", err)
	}
	if hs, err := m.UnusedBlobs(ctx, 10); err != nil || len(hs) != 0 {
		t.Fatalf("blob row kept after place failed: %v %v", hs, err)
	}
}

func TestMediaQuota(t *testing.T) {
	ctx := context.Background()
	m := pgtest.NewDB(t).Media()
	if err := m.AddMedia(ctx, uploaded("a1", "@a:x", hashN(1), 600, t0), 1000, noPlace); err != nil {
		t.Fatal(err)
	}
	// Another user's uploads do not count.
	if err := m.AddMedia(ctx, uploaded("b1", "@b:x", hashN(1), 900, t0), 1000, noPlace); err != nil {
		t.Fatal(err)
	}
	placed := false
	err := m.AddMedia(ctx, uploaded("a2", "@a:x", hashN(2), 401, t0), 1000, func() error { placed = true; return nil })
	if !errors.Is(err, media.ErrQuotaExceeded) || placed {
		t.Fatalf("over quota: %v (placed %v)", err, placed)
	}
	if err := m.AddMedia(ctx, uploaded("a3", "@a:x", hashN(3), 400, t0), 1000, noPlace); err != nil {
		t.Fatalf("exactly at quota: %v", err)
	}
	if used, err := m.Usage(ctx, "@a:x"); err != nil || used != 1000 {
		t.Fatalf("usage %d %v", used, err)
	}
}

// Concurrent uploads of one user cannot together pass the quota: the check
// and the insert are serialised per user.
func TestMediaQuotaUnderConcurrency(t *testing.T) {
	ctx := context.Background()
	m := pgtest.NewDB(t).Media()
	var wg sync.WaitGroup
	var ok atomic.Int32
	for i := range 20 {
		wg.Go(func() {
			err := m.AddMedia(ctx, uploaded(fmt.Sprintf("c%d", i), "@a:x", hashN(i), 100, t0), 1000, noPlace)
			switch {
			case err == nil:
				ok.Add(1)
			case !errors.Is(err, media.ErrQuotaExceeded):
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if used, _ := m.Usage(ctx, "@a:x"); ok.Load() != 10 || used != 1000 {
		t.Fatalf("%d uploads accepted, %d bytes used; want 10 and 1000", ok.Load(), used)
	}
}

func TestMediaPendingLifecycle(t *testing.T) {
	ctx := context.Background()
	m := pgtest.NewDB(t).Media()
	pending := func(mediaID string, at time.Time) media.Record {
		return media.Record{MediaID: mediaID, UserID: "@a:x", CreatedAt: at, ExpiresAt: at.Add(time.Hour)}
	}
	for i := range 3 {
		if err := m.CreatePending(ctx, pending(fmt.Sprintf("p%d", i), t0.Add(time.Duration(i)*time.Minute)), 3); err != nil {
			t.Fatal(err)
		}
	}
	err := m.CreatePending(ctx, pending("p3", t0.Add(5*time.Minute)), 3)
	var tooMany *media.TooManyPendingError
	if !errors.As(err, &tooMany) || !tooMany.NextExpiry.Equal(t0.Add(time.Hour)) {
		t.Fatalf("fourth pending: %v", err)
	}
	// Others are not limited by a's pending IDs.
	if err := m.CreatePending(ctx, media.Record{MediaID: "q0", UserID: "@b:x", CreatedAt: t0, ExpiresAt: t0.Add(time.Hour)}, 3); err != nil {
		t.Fatal(err)
	}
	rec, err := m.Media(ctx, "p0")
	if err != nil || !rec.Pending() || !rec.ExpiresAt.Equal(t0.Add(time.Hour)) || rec.ContentType != "application/octet-stream" {
		t.Fatalf("pending record %+v %v", rec, err)
	}

	finish := func(mediaID string, user id.UserID, at time.Time) error {
		return m.FinishPending(ctx, media.Record{MediaID: mediaID, UserID: user, ContentType: "text/plain", FileName: "n.txt",
			Size: 7, SHA256: hashN(7), UploadedAt: at, Frozen: false}, 0, noPlace)
	}
	if err := finish("nope", "@a:x", t0); !errors.Is(err, media.ErrNotFound) {
		t.Fatalf("unknown: %v", err)
	}
	if err := finish("p0", "@b:x", t0.Add(time.Minute)); !errors.Is(err, media.ErrNotOwner) {
		t.Fatalf("other user: %v", err)
	}
	if err := finish("p0", "@a:x", t0.Add(time.Hour)); !errors.Is(err, media.ErrNotFound) {
		t.Fatalf("at expiry: %v", err)
	}
	if err := finish("p0", "@a:x", t0.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	if err := finish("p0", "@a:x", t0.Add(2*time.Minute)); !errors.Is(err, media.ErrAlreadyUploaded) {
		t.Fatalf("second upload: %v", err)
	}
	rec, err = m.Media(ctx, "p0")
	if err != nil || rec.Pending() || rec.ContentType != "text/plain" || rec.FileName != "n.txt" || rec.Size != 7 ||
		rec.SHA256 != hashN(7) || !rec.UploadedAt.Equal(t0.Add(time.Minute)) || !rec.CreatedAt.Equal(t0) || !rec.ExpiresAt.IsZero() {
		t.Fatalf("finished record %+v %v", rec, err)
	}
	// The filled ID frees a slot; then a's limit counts only unexpired
	// pending IDs.
	if err := m.CreatePending(ctx, pending("p4", t0.Add(6*time.Minute)), 3); err != nil {
		t.Fatalf("after one was filled: %v", err)
	}
	if err := m.CreatePending(ctx, pending("p5", t0.Add(61*time.Minute)), 3); err != nil {
		t.Fatalf("after p1 expired: %v", err)
	}

	// Expiry deletes pending IDs past their time, and only those.
	n, err := m.DeleteExpiredPending(ctx, t0.Add(61*time.Minute+30*time.Second))
	if err != nil || n != 2 { // q0 (t0+60m) and p1 (t0+61m); p2 lasts until t0+62m
		t.Fatalf("expired %d %v", n, err)
	}
	for _, gone := range []string{"p1", "q0"} {
		if _, err := m.Media(ctx, gone); !errors.Is(err, media.ErrNotFound) {
			t.Errorf("%s not expired: %v", gone, err)
		}
	}
	for _, kept := range []string{"p0", "p2", "p4", "p5"} {
		if _, err := m.Media(ctx, kept); err != nil {
			t.Errorf("%s deleted: %v", kept, err)
		}
	}
}

func TestMediaFinishPendingQuota(t *testing.T) {
	ctx := context.Background()
	m := pgtest.NewDB(t).Media()
	if err := m.AddMedia(ctx, uploaded("a1", "@a:x", hashN(1), 900, t0), 1000, noPlace); err != nil {
		t.Fatal(err)
	}
	if err := m.CreatePending(ctx, media.Record{MediaID: "p", UserID: "@a:x", CreatedAt: t0, ExpiresAt: t0.Add(time.Hour)}, 5); err != nil {
		t.Fatal(err)
	}
	rec := media.Record{MediaID: "p", UserID: "@a:x", ContentType: "x/y", Size: 101, SHA256: hashN(2), UploadedAt: t0}
	if err := m.FinishPending(ctx, rec, 1000, noPlace); !errors.Is(err, media.ErrQuotaExceeded) {
		t.Fatalf("over quota: %v", err)
	}
	rec.Size = 100
	if err := m.FinishPending(ctx, rec, 1000, noPlace); err != nil {
		t.Fatal(err)
	}
}

func TestMediaThumbnails(t *testing.T) {
	ctx := context.Background()
	m := pgtest.NewDB(t).Media()
	if err := m.AddMedia(ctx, uploaded("m", "@a:x", hashN(1), 100, t0), 0, noPlace); err != nil {
		t.Fatal(err)
	}
	th := media.Thumbnail{MediaID: "m", Width: 32, Height: 32, Method: "crop", ContentType: "image/jpeg", SHA256: hashN(2), Size: 10}
	if err := m.AddThumbnail(ctx, th, noPlace); err != nil {
		t.Fatal(err)
	}
	// A thumbnail may be the original itself (a small JPEG).
	if err := m.AddThumbnail(ctx, media.Thumbnail{MediaID: "m", Width: 96, Height: 96, Method: "crop", ContentType: "image/png", SHA256: hashN(1), Size: 100}, noPlace); err != nil {
		t.Fatal(err)
	}
	// The same size again replaces it.
	th.SHA256, th.Size = hashN(3), 11
	if err := m.AddThumbnail(ctx, th, noPlace); err != nil {
		t.Fatal(err)
	}
	got, err := m.Thumbnails(ctx, "m")
	if err != nil || len(got) != 2 || got[0] != th || got[1].SHA256 != hashN(1) {
		t.Fatalf("thumbnails %+v %v", got, err)
	}
	if err := m.AddThumbnail(ctx, media.Thumbnail{MediaID: "gone", Width: 1, Height: 1, Method: "crop", ContentType: "image/png", SHA256: hashN(4), Size: 1}, noPlace); !errors.Is(err, media.ErrNotFound) {
		t.Fatalf("thumbnail of unknown media: %v", err)
	}
	// hashN(2) is no longer referenced: the replaced thumbnail's blob.
	if hs, err := m.UnusedBlobs(ctx, 10); err != nil || !slices.Equal(hs, []string{hashN(2)}) {
		t.Fatalf("unused blobs %v %v", hs, err)
	}
}

func TestMediaPurgePrimitives(t *testing.T) {
	ctx := context.Background()
	m := pgtest.NewDB(t).Media()
	// old1 and new share content hashN(1); old2 has its own, and a
	// thumbnail with content hashN(3).
	for _, r := range []media.Record{
		uploaded("old1", "@a:x", hashN(1), 100, t0),
		uploaded("old2", "@a:x", hashN(2), 200, t0.Add(time.Minute)),
		uploaded("new", "@b:x", hashN(1), 100, t0.Add(48*time.Hour)),
	} {
		if err := m.AddMedia(ctx, r, 0, noPlace); err != nil {
			t.Fatal(err)
		}
	}
	if err := m.CreatePending(ctx, media.Record{MediaID: "pend", UserID: "@a:x", CreatedAt: t0.Add(2 * time.Minute), ExpiresAt: t0.Add(time.Hour)}, 5); err != nil {
		t.Fatal(err)
	}
	if err := m.AddThumbnail(ctx, media.Thumbnail{MediaID: "old2", Width: 32, Height: 32, Method: "crop", ContentType: "image/jpeg", SHA256: hashN(3), Size: 30}, noPlace); err != nil {
		t.Fatal(err)
	}
	// Created before the cut-off, uploaded after it: kept.
	if err := m.CreatePending(ctx, media.Record{MediaID: "late", UserID: "@a:x", CreatedAt: t0, ExpiresAt: t0.Add(72 * time.Hour)}, 5); err != nil {
		t.Fatal(err)
	}
	if err := m.FinishPending(ctx, media.Record{MediaID: "late", UserID: "@a:x", ContentType: "x/y", Size: 4, SHA256: hashN(4), UploadedAt: t0.Add(48 * time.Hour)}, 0, noPlace); err != nil {
		t.Fatal(err)
	}
	cut := t0.Add(24 * time.Hour)
	if n, err := m.CountMediaBefore(ctx, cut); err != nil || n != 3 {
		t.Fatalf("count %d %v", n, err)
	}
	n, hashes, err := m.DeleteMediaBefore(ctx, cut, 2)
	if err != nil || n != 2 {
		t.Fatalf("first batch: %d %v", n, err)
	}
	slices.Sort(hashes)
	if !slices.Equal(hashes, []string{hashN(1), hashN(2), hashN(3)}) {
		t.Fatalf("hashes of the first batch: %v", hashes)
	}
	n, hashes, err = m.DeleteMediaBefore(ctx, cut, 2)
	if err != nil || n != 1 || len(hashes) != 0 { // the pending ID has no content
		t.Fatalf("second batch: %d %v %v", n, hashes, err)
	}
	if n, _, err := m.DeleteMediaBefore(ctx, cut, 2); err != nil || n != 0 {
		t.Fatalf("third batch: %d %v", n, err)
	}
	for _, kept := range []string{"new", "late"} {
		if _, err := m.Media(ctx, kept); err != nil {
			t.Fatalf("%s purged: %v", kept, err)
		}
	}

	removed := map[string]bool{}
	remove := func(h string) func() error { return func() error { removed[h] = true; return nil } }
	// hashN(1) is still used by "new".
	if del, size, err := m.DeleteBlobIfUnused(ctx, hashN(1), remove(hashN(1))); err != nil || del || size != 0 || removed[hashN(1)] {
		t.Fatalf("referenced blob: %v %d %v", del, size, err)
	}
	// A failing removal keeps the row for the next attempt.
	if _, _, err := m.DeleteBlobIfUnused(ctx, hashN(2), func() error { return errors.New("EACCES") }); err == nil {
		t.Fatal("removal error swallowed")
	}
	if hs, _ := m.UnusedBlobs(ctx, 10); !slices.Equal(hs, []string{hashN(2), hashN(3)}) {
		t.Fatalf("unused blobs after a failed removal: %v", hs)
	}
	if del, size, err := m.DeleteBlobIfUnused(ctx, hashN(2), remove(hashN(2))); err != nil || !del || size != 200 || !removed[hashN(2)] {
		t.Fatalf("unused blob: %v %d %v", del, size, err)
	}
	// Already gone: nothing to do.
	if del, _, err := m.DeleteBlobIfUnused(ctx, hashN(2), remove(hashN(2))); err != nil || del {
		t.Fatalf("deleted twice: %v %v", del, err)
	}
	if hs, _ := m.UnusedBlobs(ctx, 10); !slices.Equal(hs, []string{hashN(3)}) {
		t.Fatalf("unused blobs: %v", hs)
	}
}

// A purge deleting a blob and an upload of the same bytes exclude each
// other: while the purge holds the blob (and is deleting the file), the
// upload's place callback must not run; it runs after, so the upload puts
// the file back and its row never points at a deleted file.
func TestMediaBlobDeleteExcludesPlacingTheSameContent(t *testing.T) {
	ctx := context.Background()
	m := pgtest.NewDB(t).Media()
	if err := m.AddMedia(ctx, uploaded("old", "@a:x", hashN(9), 9, t0), 0, noPlace); err != nil {
		t.Fatal(err)
	}
	if _, _, err := m.DeleteMediaBefore(ctx, t0.Add(time.Hour), 10); err != nil {
		t.Fatal(err)
	}
	var events []string
	var mu sync.Mutex
	note := func(s string) { mu.Lock(); events = append(events, s); mu.Unlock() }
	removing := make(chan struct{})
	release := make(chan struct{})
	purged := make(chan error, 1)
	go func() {
		_, _, err := m.DeleteBlobIfUnused(ctx, hashN(9), func() error {
			note("remove start")
			close(removing)
			<-release
			note("remove end")
			return nil
		})
		purged <- err
	}()
	<-removing
	uploadedCh := make(chan error, 1)
	go func() {
		uploadedCh <- m.AddMedia(ctx, uploaded("again", "@b:x", hashN(9), 9, t0.Add(2*time.Hour)), 0, func() error {
			note("place")
			return nil
		})
	}()
	// Give the upload every chance to run place too early.
	select {
	case err := <-uploadedCh:
		t.Fatalf("upload finished while the purge held the blob: %v", err)
	case <-time.After(300 * time.Millisecond):
	}
	close(release)
	if err := <-purged; err != nil {
		t.Fatal(err)
	}
	if err := <-uploadedCh; err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(events, ", "); got != "remove start, remove end, place" {
		t.Fatalf("order: %s", got)
	}
	// The new row's blob entry exists again and is in use.
	if del, _, err := m.DeleteBlobIfUnused(ctx, hashN(9), func() error { t.Error("removed a used blob"); return nil }); err != nil || del {
		t.Fatalf("%v %v", del, err)
	}
}

var _ media.Store = (*storage.Media)(nil)
