package media

import (
	"context"
	"fmt"
	"time"
)

// PurgeProgress is how far a purge has got.
type PurgeProgress struct {
	// Total is how many media IDs were uploaded (pending ones: created)
	// before the cut-off when the purge started; Deleted how many are gone
	// so far.
	Total, Deleted int64
	// Blobs is how many stored files were removed, Freed their bytes
	// (content still referenced by newer media is kept, so Freed can be
	// less than the purged media's total size).
	Blobs int64
	Freed int64
}

// purgeBatch is how many media rows one purge transaction deletes.
const purgeBatch = 200

// Purge deletes local media uploaded before the cut-off (and pending media
// IDs created before it), with their thumbnails, and removes the stored
// content that nothing references any longer. progress, if not nil, is
// called after every batch.
//
// Each batch first deletes rows, then content: a crash in between leaves
// blobs nothing references, which the next purge removes (it always ends by
// sweeping them). Content that an upload stores again while it is being
// purged is kept: see Store.
func (s *Service) Purge(ctx context.Context, before time.Time, progress func(PurgeProgress)) (PurgeProgress, error) {
	var p PurgeProgress
	total, err := s.store.CountMediaBefore(ctx, before)
	if err != nil {
		return p, fmt.Errorf("counting media to purge: %w", err)
	}
	p.Total = total
	report := func() {
		if progress != nil {
			progress(p)
		}
	}
	for {
		n, hashes, err := s.store.DeleteMediaBefore(ctx, before, purgeBatch)
		if err != nil {
			return p, fmt.Errorf("deleting media rows: %w", err)
		}
		p.Deleted += int64(n)
		if err := s.dropBlobs(ctx, hashes, &p); err != nil {
			return p, err
		}
		if n == 0 {
			break
		}
		// Media created meanwhile with an older timestamp (a clock step)
		// would make Deleted pass Total; keep the line truthful.
		p.Total = max(p.Total, p.Deleted)
		report()
	}
	for {
		hashes, err := s.store.UnusedBlobs(ctx, purgeBatch)
		if err != nil {
			return p, fmt.Errorf("listing unreferenced media content: %w", err)
		}
		if len(hashes) == 0 {
			break
		}
		before := p.Blobs
		if err := s.dropBlobs(ctx, hashes, &p); err != nil {
			return p, err
		}
		if p.Blobs == before {
			break // all referenced again meanwhile: nothing more to do
		}
	}
	report()
	return p, nil
}

// dropBlobs removes each blob that nothing references any longer.
func (s *Service) dropBlobs(ctx context.Context, hashes []string, p *PurgeProgress) error {
	for _, h := range hashes {
		deleted, freed, err := s.store.DeleteBlobIfUnused(ctx, h, func() error { return s.blobs.Delete(ctx, h) })
		if err != nil {
			return fmt.Errorf("deleting media content %s: %w", h, err)
		}
		if deleted {
			p.Blobs++
			p.Freed += freed
		}
	}
	return nil
}
