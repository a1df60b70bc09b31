package room

import (
	"context"
	"errors"
	"sync"
	"time"

	"maunium.net/go/mautrix/id"
)

// BatchTx is one write transaction shared by a batch of jobs.
type BatchTx interface {
	// Room locks an existing room for this transaction (ErrNotFound).
	Room(roomID id.RoomID) (Tx, error)
	// LockRooms locks the existing rooms among roomIDs up front (unknown
	// ones are skipped: Room reports them).
	LockRooms(roomIDs []id.RoomID) error
	// NewRoom inserts and locks a new room (ErrRoomExists).
	NewRoom(roomID id.RoomID, version id.RoomVersion) (Tx, error)
	// Savepoint, Release and Rollback bracket one job, so that a failing
	// job leaves no trace and the others still commit.
	Savepoint() error
	Release() error
	Rollback() error
}

// maxBatch bounds the jobs that share one commit. Each job is a savepoint
// (a subtransaction); Postgres tracks up to 64 of them per transaction
// cheaply, so batches stay below that.
const maxBatch = 48

// batchTimeout bounds one batch transaction.
const batchTimeout = 30 * time.Second

// job is one room write waiting for a batch.
type job struct {
	ctx     context.Context
	roomID  id.RoomID
	version id.RoomVersion // set: create the room
	fn      func(Tx) error
	done    chan error
}

// batcher is group commit for every room write. Writes arrive from many
// requests; the first to find no batch running becomes the leader and runs
// what is queued in one transaction, one job after another, with one
// COMMIT (one fsync) for all of them; whatever queued meanwhile forms the
// next batch. Every job is acknowledged only after the commit that holds it.
//
// Routing every write through this one queue also fixes the lock order:
// room row locks are only ever taken inside a batch, so a batch never waits
// for a room held by another writer that in turn waits for the stream lock.
type batcher struct {
	mu      sync.Mutex
	pending []*job
	running bool
	run     func(ctx context.Context, fn func(BatchTx) error) error
}

func (b *batcher) do(ctx context.Context, j *job) error {
	j.ctx, j.done = ctx, make(chan error, 1)
	b.mu.Lock()
	b.pending = append(b.pending, j)
	if b.running {
		b.mu.Unlock()
		return <-j.done
	}
	b.running = true
	b.mu.Unlock()
	for {
		b.mu.Lock()
		n := min(len(b.pending), maxBatch)
		batch := b.pending[:n:n]
		b.pending = b.pending[n:]
		if n == 0 {
			b.running = false
			b.mu.Unlock()
			break
		}
		b.mu.Unlock()
		b.runBatch(batch)
	}
	return <-j.done
}

// runBatch runs jobs in one transaction. The transaction does not use any
// job's context: one client going away must not abort the others' writes.
func (b *batcher) runBatch(batch []*job) {
	results := make([]error, len(batch))
	ctx, cancel := context.WithTimeout(context.Background(), batchTimeout)
	defer cancel()
	err := b.run(ctx, func(btx BatchTx) error {
		// Lock every room the batch will write, in one round trip.
		var rooms []id.RoomID
		for _, j := range batch {
			if j.version == "" {
				rooms = append(rooms, j.roomID)
			}
		}
		if err := btx.LockRooms(rooms); err != nil {
			return err
		}
		for i, j := range batch {
			if err := j.ctx.Err(); err != nil {
				results[i] = err
				continue
			}
			if err := btx.Savepoint(); err != nil {
				return err
			}
			var tx Tx
			var err error
			if j.version != "" {
				tx, err = btx.NewRoom(j.roomID, j.version)
			} else {
				tx, err = btx.Room(j.roomID)
			}
			if err == nil {
				err = j.fn(tx)
			}
			if err != nil {
				results[i] = err
				if rerr := btx.Rollback(); rerr != nil {
					return rerr
				}
				continue
			}
			if err := btx.Release(); err != nil {
				return err
			}
		}
		return nil
	})
	for i, j := range batch {
		if err != nil && results[i] == nil {
			results[i] = err // the commit failed: nothing of the batch was written
		}
		j.done <- results[i]
	}
}

// inRoom runs fn with the room locked, as part of the next batch, mapping
// an unknown room to M_NOT_FOUND. fn must not keep the Tx after returning.
func (s *Service) inRoom(ctx context.Context, roomID id.RoomID, fn func(Tx) error) error {
	err := s.batch.do(ctx, &job{roomID: roomID, fn: fn})
	if errors.Is(err, ErrNotFound) {
		return errNotFound("Unknown room")
	}
	return err
}

// inNewRoom creates roomID and runs fn on it, as part of the next batch.
func (s *Service) inNewRoom(ctx context.Context, roomID id.RoomID, version id.RoomVersion, fn func(Tx) error) error {
	return s.batch.do(ctx, &job{roomID: roomID, version: version, fn: fn})
}
