package media

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// BlobStore keeps media bytes under their SHA-256, so identical content is
// stored once however many media IDs and thumbnails point at it. Which blobs
// are still needed is the metadata store's business (Store): a blob store
// only writes, reads and deletes.
//
// The local directory (LocalBlobs) is the only implementation today; an
// S3-compatible one would upload to a temporary key in Put and copy it into
// place in Commit.
type BlobStore interface {
	// Put streams r into a temporary blob, hashing while it writes, and
	// makes the bytes durable. More than limit bytes fails with
	// ErrTooLarge and keeps nothing. The bytes are not reachable by hash
	// until PendingBlob.Commit.
	Put(ctx context.Context, r io.Reader, limit int64) (PendingBlob, error)
	// Open returns the blob for reading (seekable, for range requests).
	// A missing blob is ErrBlobNotFound.
	Open(ctx context.Context, hash string) (Blob, error)
	// Delete removes the blob. A missing blob is not an error.
	Delete(ctx context.Context, hash string) error
}

// PendingBlob is content written by Put and not yet in place.
type PendingBlob interface {
	// Hash is the lowercase hex SHA-256 of the content.
	Hash() string
	Size() int64
	// Commit moves the content to its content-addressed place, durably.
	// Callers run it while the metadata store holds the hash's lock (see
	// Store.AddMedia), so it cannot interleave with a Delete of the same
	// hash by a purge.
	Commit() error
	// Discard drops the temporary copy; after Commit it does nothing.
	Discard()
}

// Blob is stored content opened for reading.
type Blob interface {
	io.ReadSeekCloser
	Size() int64
}

// ErrBlobNotFound means no content is stored under a hash.
var ErrBlobNotFound = errors.New("media: blob not found")

// LocalBlobs stores blobs in a directory:
//
//	<root>/blobs/ab/cd/abcd…  (the full hex SHA-256; two levels of fan-out)
//	<root>/tmp/               uploads in progress
//
// Durability: Put fsyncs the temporary file before returning; Commit
// renames it into place and fsyncs the directory (and the parents of any
// directory it had to create), so once Commit returns the blob survives a
// crash. The metadata row is written after Commit, so no row ever points at
// content that a crash could lose.
type LocalBlobs struct {
	root string
	// dirMu serialises creating fan-out directories, so two commits into a
	// new directory do not both skip the parent fsync.
	dirMu sync.Mutex
}

// tmpMaxAge is how old a temporary file must be before start-up removes it:
// older than any upload still running in another process.
const tmpMaxAge = 24 * time.Hour

// NewLocalBlobs opens (creating if needed) a blob directory and removes
// temporary files left by uploads that a crash interrupted.
func NewLocalBlobs(root string) (*LocalBlobs, error) {
	for _, d := range []string{root, filepath.Join(root, "blobs"), filepath.Join(root, "tmp")} {
		if err := os.MkdirAll(d, 0o750); err != nil {
			return nil, fmt.Errorf("creating media directory %s: %w", d, err)
		}
	}
	l := &LocalBlobs{root: root}
	entries, err := os.ReadDir(l.tmpDir())
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", l.tmpDir(), err)
	}
	for _, e := range entries {
		if info, err := e.Info(); err == nil && time.Since(info.ModTime()) > tmpMaxAge {
			_ = os.Remove(filepath.Join(l.tmpDir(), e.Name()))
		}
	}
	return l, nil
}

func (l *LocalBlobs) tmpDir() string { return filepath.Join(l.root, "tmp") }

// path is where the blob with hash lives. hash must have passed validHash:
// it comes from our own database, but a path is built from it.
func (l *LocalBlobs) path(hash string) string {
	return filepath.Join(l.root, "blobs", hash[:2], hash[2:4], hash)
}

// validHash reports whether s is a lowercase hex SHA-256.
func validHash(s string) bool {
	if len(s) != 2*sha256.Size {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// ErrBody wraps a failure to read the content being stored (the client
// went away, or sent a body over a limit), as opposed to a failure of the
// store itself.
var ErrBody = errors.New("media: reading the content failed")

// sourceReader fails reads once ctx is done, so an upload stops promptly on
// shutdown even if the client keeps sending, and remembers read errors.
type sourceReader struct {
	ctx context.Context
	r   io.Reader
	err error
}

func (s *sourceReader) Read(p []byte) (int, error) {
	if err := s.ctx.Err(); err != nil {
		s.err = err
		return 0, err
	}
	n, err := s.r.Read(p)
	if err != nil && err != io.EOF {
		s.err = err
	}
	return n, err
}

// Put implements BlobStore. The content is streamed: memory use is one copy
// buffer whatever the size.
func (l *LocalBlobs) Put(ctx context.Context, r io.Reader, limit int64) (PendingBlob, error) {
	f, err := os.CreateTemp(l.tmpDir(), "put-*")
	if err != nil {
		return nil, fmt.Errorf("creating a temporary media file: %w", err)
	}
	p := &localPending{store: l, tmp: f.Name()}
	fail := func(err error) (PendingBlob, error) {
		_ = f.Close()
		p.Discard()
		return nil, err
	}
	h := sha256.New()
	// One byte past the limit tells "exactly limit" from "too large"
	// without buffering anything.
	src := &sourceReader{ctx: ctx, r: r}
	n, err := io.Copy(io.MultiWriter(f, h), io.LimitReader(src, limit+1))
	if src.err != nil {
		return fail(fmt.Errorf("%w: %w", ErrBody, src.err))
	}
	if err != nil {
		return fail(fmt.Errorf("writing media: %w", err))
	}
	if n > limit {
		return fail(ErrTooLarge)
	}
	if err := f.Sync(); err != nil {
		return fail(fmt.Errorf("syncing media to disk: %w", err))
	}
	if err := f.Close(); err != nil {
		p.Discard()
		return nil, fmt.Errorf("closing a temporary media file: %w", err)
	}
	p.hash, p.size = hex.EncodeToString(h.Sum(nil)), n
	return p, nil
}

// Open implements BlobStore.
func (l *LocalBlobs) Open(_ context.Context, hash string) (Blob, error) {
	if !validHash(hash) {
		return nil, fmt.Errorf("media: invalid blob hash %q", hash)
	}
	f, err := os.Open(l.path(hash))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, ErrBlobNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("opening media blob: %w", err)
	}
	info, err := f.Stat()
	if err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("reading media blob size: %w", err)
	}
	return localBlob{File: f, size: info.Size()}, nil
}

// Delete implements BlobStore. A reader that has the blob open keeps
// reading it: the inode lives until closed.
func (l *LocalBlobs) Delete(_ context.Context, hash string) error {
	if !validHash(hash) {
		return fmt.Errorf("media: invalid blob hash %q", hash)
	}
	if err := os.Remove(l.path(hash)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("deleting media blob: %w", err)
	}
	return nil
}

// ensureDir creates dir (and its parent, one level up) if missing, fsyncing
// the parent of each directory it creates so the new entry is durable.
func (l *LocalBlobs) ensureDir(dir string) error {
	if _, err := os.Stat(dir); err == nil {
		return nil
	}
	l.dirMu.Lock()
	defer l.dirMu.Unlock()
	for _, d := range []string{filepath.Dir(dir), dir} {
		err := os.Mkdir(d, 0o750)
		if errors.Is(err, fs.ErrExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("creating media directory: %w", err)
		}
		if err := syncDir(filepath.Dir(d)); err != nil {
			return err
		}
	}
	return nil
}

// syncDir makes the directory's entries (a rename, a new file) durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("opening media directory for sync: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("syncing media directory %s: %w", dir, err)
	}
	return nil
}

type localPending struct {
	store     *LocalBlobs
	tmp       string
	hash      string
	size      int64
	committed bool
}

func (p *localPending) Hash() string { return p.hash }
func (p *localPending) Size() int64  { return p.size }

// Commit renames the temporary file over the content-addressed path.
// Renaming over an existing blob replaces it with identical bytes
// atomically (open readers keep the old inode), which also heals a copy
// that was damaged on disk.
func (p *localPending) Commit() error {
	if p.committed {
		return nil
	}
	final := p.store.path(p.hash)
	dir := filepath.Dir(final)
	if err := p.store.ensureDir(dir); err != nil {
		return err
	}
	if err := os.Rename(p.tmp, final); err != nil {
		return fmt.Errorf("moving media into place: %w", err)
	}
	p.committed = true
	return syncDir(dir)
}

func (p *localPending) Discard() {
	if !p.committed && p.tmp != "" {
		_ = os.Remove(p.tmp)
	}
}

type localBlob struct {
	*os.File
	size int64
}

func (b localBlob) Size() int64 { return b.size }

// String describes the store for logs.
func (l *LocalBlobs) String() string { return "local:" + strings.TrimSuffix(l.root, "/") }
