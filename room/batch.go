package room

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"maunium.net/go/mautrix/id"
)

// BatchTx is one write transaction shared by a batch of jobs.
type BatchTx interface {
	// LockRooms locks the existing rooms among roomIDs up front (unknown
	// ones are skipped: Room reports them).
	LockRooms(roomIDs []id.RoomID) error
	// Room locks an existing room for this transaction (ErrNotFound).
	Room(roomID id.RoomID) (Tx, error)
	// NewRoom inserts and locks a new room (ErrRoomExists, possibly only
	// as a FlushError when the insert is sent).
	NewRoom(roomID id.RoomID, version id.RoomVersion) (Tx, error)
	// BeginJob starts job n: what it writes can be undone alone.
	BeginJob(n int)
	// RollbackJob undoes job n, which failed.
	RollbackJob(n int) error
	// Restore forgets what jobs after n did to cached room heads, after a
	// FlushError for job n (the store has already undone their writes).
	Restore(n int)
	// Flush sends every queued write. A write that failed is reported as a
	// *FlushError; the transaction is then back at that job's start.
	Flush() error
}

// FlushError reports that job Job's queued writes failed with Err when they
// were sent; the writes of the jobs after it were not applied.
type FlushError struct {
	Job int
	Err error
}

func (e *FlushError) Error() string { return fmt.Sprintf("job %d: %v", e.Job, e.Err) }
func (e *FlushError) Unwrap() error { return e.Err }

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
// requests; a request that finds fewer than maxLeaders batches running
// becomes a leader and runs what is queued in one transaction, one job after
// another, with one COMMIT (one fsync) for all of them; whatever queues
// meanwhile forms the next batch. Every job is acknowledged only after the
// commit that holds it.
//
// Leaders can overlap: while one batch waits for Postgres and its fsync, the
// next builds and signs its events. They cannot deadlock: a batch locks all
// its rooms first, in room ID order, and takes the stream lock only when it
// sends its writes, after which it waits for no row lock. Two batches
// writing one room are serialised by that room's row lock, so a room's
// events keep the order of their batches.
type batcher struct {
	mu      sync.Mutex
	pending []*job
	running int
	run     func(ctx context.Context, fn func(BatchTx) error) error
}

// maxLeaders is how many batches may be in flight at once. Measured on the
// 2-core reference machine, two leaders were slower than one (batches got
// smaller and contended for the same rooms), so today it is one; the
// locking above keeps more than one safe when a machine has cores to spare.
const maxLeaders = 1

func (b *batcher) do(ctx context.Context, j *job) error {
	j.ctx, j.done = ctx, make(chan error, 1)
	b.mu.Lock()
	b.pending = append(b.pending, j)
	if b.running >= maxLeaders {
		b.mu.Unlock()
		return <-j.done
	}
	b.running++
	b.mu.Unlock()
	for {
		b.mu.Lock()
		n := min(len(b.pending), maxBatch)
		batch := b.pending[:n:n]
		b.pending = b.pending[n:]
		if n == 0 {
			b.running--
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
		i := 0
		for {
			for i < len(batch) {
				j := batch[i]
				if err := j.ctx.Err(); err != nil {
					results[i] = err
					i++
					continue
				}
				btx.BeginJob(i)
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
				var fe *FlushError
				switch {
				case errors.As(err, &fe):
					// An earlier job's write failed while this one read:
					// that job fails, and the jobs after it run again.
					results[fe.Job] = fe.Err
					btx.Restore(fe.Job)
					i = fe.Job + 1
				case err != nil:
					results[i] = err
					if rerr := btx.RollbackJob(i); rerr != nil {
						return rerr
					}
					i++
				default:
					results[i] = nil
					i++
				}
			}
			err := btx.Flush()
			var fe *FlushError
			if !errors.As(err, &fe) {
				return err
			}
			results[fe.Job] = fe.Err
			btx.Restore(fe.Job)
			i = fe.Job + 1
		}
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
