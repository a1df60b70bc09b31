package media

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/iotest"
	"time"
)

func files(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			out = append(out, p)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestLocalBlobsPutCommitOpenDelete(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	l, err := NewLocalBlobs(root)
	if err != nil {
		t.Fatal(err)
	}
	data := []byte("hello media")
	sum := sha256.Sum256(data)
	want := hex.EncodeToString(sum[:])

	p, err := l.Put(ctx, bytes.NewReader(data), int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	if p.Hash() != want || p.Size() != int64(len(data)) {
		t.Fatalf("hash %s size %d", p.Hash(), p.Size())
	}
	// Not reachable before Commit.
	if _, err := l.Open(ctx, want); !errors.Is(err, ErrBlobNotFound) {
		t.Fatalf("open before commit: %v", err)
	}
	if err := p.Commit(); err != nil {
		t.Fatal(err)
	}
	p.Discard() // a no-op after Commit
	path := filepath.Join(root, "blobs", want[:2], want[2:4], want)
	if fs := files(t, root); len(fs) != 1 || fs[0] != path {
		t.Fatalf("files after commit: %v", fs)
	}

	// The same bytes again are stored once.
	p2, err := l.Put(ctx, bytes.NewReader(data), 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if err := p2.Commit(); err != nil {
		t.Fatal(err)
	}
	if fs := files(t, root); len(fs) != 1 {
		t.Fatalf("files after the same content twice: %v", fs)
	}

	b, err := l.Open(ctx, want)
	if err != nil {
		t.Fatal(err)
	}
	if b.Size() != int64(len(data)) {
		t.Fatalf("size %d", b.Size())
	}
	if _, err := b.Seek(6, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	rest, _ := io.ReadAll(b)
	if string(rest) != "media" {
		t.Fatalf("read after seek: %q", rest)
	}
	// Deleting while open: the reader keeps its bytes.
	if err := l.Delete(ctx, want); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Seek(0, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	all, _ := io.ReadAll(b)
	b.Close()
	if !bytes.Equal(all, data) {
		t.Fatalf("open blob changed by delete: %q", all)
	}
	if _, err := l.Open(ctx, want); !errors.Is(err, ErrBlobNotFound) {
		t.Fatalf("open after delete: %v", err)
	}
	if err := l.Delete(ctx, want); err != nil {
		t.Fatalf("deleting a missing blob: %v", err)
	}
	for _, bad := range []string{"", "../../etc/passwd", strings.Repeat("A", 64), strings.Repeat("a", 63)} {
		if _, err := l.Open(ctx, bad); err == nil || errors.Is(err, ErrBlobNotFound) {
			t.Errorf("Open(%q) = %v, want an invalid-hash error", bad, err)
		}
		if err := l.Delete(ctx, bad); err == nil {
			t.Errorf("Delete(%q) accepted", bad)
		}
	}
}

func TestLocalBlobsLimitAndFailuresKeepNothing(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	l, err := NewLocalBlobs(root)
	if err != nil {
		t.Fatal(err)
	}
	// Exactly at the limit is fine; one byte over is not.
	p, err := l.Put(ctx, strings.NewReader("12345"), 5)
	if err != nil {
		t.Fatal(err)
	}
	p.Discard()
	if _, err := l.Put(ctx, strings.NewReader("123456"), 5); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("over the limit: %v", err)
	}
	// A body that fails mid-way is the client's error, marked as such.
	broken := io.MultiReader(strings.NewReader("abc"), iotest.ErrReader(io.ErrUnexpectedEOF))
	if _, err := l.Put(ctx, broken, 100); !errors.Is(err, ErrBody) || !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("broken body: %v", err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := l.Put(cctx, strings.NewReader("abc"), 100); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled: %v", err)
	}
	if fs := files(t, root); len(fs) != 0 {
		t.Fatalf("files left behind: %v", fs)
	}
}

func TestNewLocalBlobsRemovesOnlyStaleTemporaries(t *testing.T) {
	root := t.TempDir()
	if _, err := NewLocalBlobs(root); err != nil {
		t.Fatal(err)
	}
	stale := filepath.Join(root, "tmp", "put-stale")
	fresh := filepath.Join(root, "tmp", "put-fresh")
	for _, f := range []string{stale, fresh} {
		if err := os.WriteFile(f, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	old := time.Now().Add(-2 * tmpMaxAge)
	if err := os.Chtimes(stale, old, old); err != nil {
		t.Fatal(err)
	}
	if _, err := NewLocalBlobs(root); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Errorf("stale temporary kept: %v", err)
	}
	if _, err := os.Stat(fresh); err != nil {
		t.Errorf("fresh temporary (an upload in progress elsewhere) removed: %v", err)
	}
}

func TestMediaIDs(t *testing.T) {
	seen := map[string]bool{}
	counts := map[rune]int{}
	for range 2000 {
		s, err := newMediaID()
		if err != nil {
			t.Fatal(err)
		}
		if len(s) != idLength || !ValidMediaID(s) || seen[s] {
			t.Fatalf("bad or repeated ID %q", s)
		}
		seen[s] = true
		for _, r := range s {
			counts[r]++
		}
	}
	// 64000 characters over 62 symbols: each about 1032 times. A biased
	// generator (b % 62 over all 256 byte values) would give the first
	// eight symbols about 1.25 times the others.
	for _, r := range idAlphabet {
		if n := counts[r]; n < 850 || n > 1220 {
			t.Errorf("symbol %q appeared %d times", r, n)
		}
	}
	for s, want := range map[string]bool{
		"abcXYZ019_-": true, "a": true, strings.Repeat("a", 255): true,
		"": false, strings.Repeat("a", 256): false, "a/b": false, "..": false, "a.b": false,
		"%2e": false, "é": false, "a b": false,
	} {
		if ValidMediaID(s) != want {
			t.Errorf("ValidMediaID(%q) = %v", s, !want)
		}
	}
}

func TestFormatBytes(t *testing.T) {
	for n, want := range map[int64]string{
		0: "0 bytes", 1023: "1023 bytes", 1024: "1 KiB", 1536: "1.5 KiB",
		100 << 20: "100 MiB", 3435973837: "3.2 GiB",
	} {
		if got := FormatBytes(n); got != want {
			t.Errorf("FormatBytes(%d) = %q, want %q", n, got, want)
		}
	}
}

func TestInlineSafe(t *testing.T) {
	for ct, want := range map[string]bool{
		"image/png": true, "IMAGE/PNG": true, "text/plain; charset=utf-8": true, "video/mp4": true, "audio/x-flac": true,
		"text/html": false, "image/svg+xml": false, "application/pdf": false, "application/javascript": false,
		"application/octet-stream": false, "": false, "garbage": false, "text/xml": false,
	} {
		if InlineSafe(ct) != want {
			t.Errorf("InlineSafe(%q) = %v", ct, !want)
		}
	}
}
