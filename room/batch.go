package room

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"maunium.net/go/mautrix/id"
)

// BatchTx is one write transaction shared by a batch of jobs. The jobs of
// different rooms run concurrently (BeginJob, the Tx it returns, EndJob);
// the other methods are called while no job runs.
type BatchTx interface {
	// LockRooms locks the existing rooms among roomIDs, before any job
	// runs (unknown ones are skipped: BeginJob reports them).
	LockRooms(roomIDs []id.RoomID) error
	// BeginJob starts job n on the locked room roomID (ErrNotFound), or,
	// with version set, on the new room roomID, inserted and locked
	// (ErrRoomExists, possibly only as a FlushError when the insert is
	// sent). What the job writes can be undone alone.
	BeginJob(n int, roomID id.RoomID, version id.RoomVersion) (Tx, error)
	// EndJob ends job n, begun with BeginJob (failed: it returned an
	// error, and what it wrote is undone). again reports that it must run
	// again: a FlushError aborted this round of jobs (Flush returns it),
	// and its writes were undone. An error fails the whole batch.
	EndJob(n int, failed bool) (again bool, err error)
	// Flush sends every queued write. A write that failed, now or while
	// the round's jobs ran, is reported as a *FlushError: the transaction
	// is then back at that job's start, and Restore must follow. last: no
	// job is to run again, so these are the batch's last writes (the
	// store may commit with them; nothing is sent after a nil return).
	Flush(last bool) error
	// Restore, after a FlushError for job n, returns the jobs whose
	// writes were undone with n's (those that reached the transaction
	// after n), to run again, and forgets what they and n did to cached
	// room heads. rerun: n runs again too (FlushError.Retry).
	Restore(n int, rerun bool) []int
}

// FlushError reports that job Job's queued writes failed with Err when they
// were sent; the writes of the jobs that reached the transaction after it
// were not applied (BatchTx.Restore names them). With Retry, the writes
// failed together with other jobs' and Job is not known to be at fault:
// it runs again too, and fails alone if it was.
type FlushError struct {
	Job   int
	Err   error
	Retry bool
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
// becomes a leader and runs what is queued in one transaction (the jobs of
// one room one after another, different rooms in parallel: runRound), with
// one COMMIT (one fsync) for all of them; whatever queues meanwhile forms
// the next batch, which a new goroutine leads once the leader's own job is
// committed (lead). Every job is acknowledged only after the commit that
// holds it.
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
// smaller and contended for the same rooms), again after the jobs of a
// batch were spread over the cores (docs/performance.md), so it is one; the
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
	b.lead(j)
	return <-j.done
}

// lead runs batches of the queued jobs until none is queued. Called by the
// request whose job own made it a leader, it runs batches only until own's
// is done, and then hands what is queued to a new goroutine: under
// steady load something is always queued, and the leader's own client
// would otherwise wait for every batch after its own.
func (b *batcher) lead(own *job) {
	for {
		b.mu.Lock()
		n := min(len(b.pending), maxBatch)
		batch := b.pending[:n:n]
		b.pending = b.pending[n:]
		if n == 0 {
			b.running--
			b.mu.Unlock()
			return
		}
		b.mu.Unlock()
		b.runBatch(batch)
		if own != nil && len(own.done) > 0 { // own's answer is waiting
			go b.lead(nil) // keeps the running slot; ends when the queue is empty
			return
		}
	}
}

// runBatch runs jobs in one transaction. The transaction does not use any
// job's context: one client going away must not abort the others' writes.
//
// The jobs run in rounds (runRound): the first round runs them all; when a
// write fails in the pipeline (FlushError), that job fails, and the jobs
// its rollback undid, or that ended after it, run in the next round.
func (b *batcher) runBatch(batch []*job) {
	var results []error
	ctx, cancel := context.WithTimeout(context.Background(), batchTimeout)
	defer cancel()
	var err error
	for attempt := 0; ; attempt++ {
		results = make([]error, len(batch))
		err = b.run(ctx, func(btx BatchTx) error { return b.runJobs(btx, batch, results) })
		// Built on stale cached heads: nothing was written, and the
		// store now reads the heads before the jobs run.
		if !errors.Is(err, ErrStaleHeads) || attempt == 2 {
			break
		}
	}
	for i, j := range batch {
		if err != nil && results[i] == nil {
			results[i] = err // the commit failed: nothing of the batch was written
		}
		j.done <- results[i]
	}
}

// runJobs runs the batch's jobs in btx, round after round, recording each
// job's outcome in results.
func (b *batcher) runJobs(btx BatchTx, batch []*job, results []error) error {
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
	todo := make([]int, len(batch))
	for i := range todo {
		todo[i] = i
	}
	for {
		var again []int
		if len(todo) > 0 {
			var err error
			if again, err = runRound(btx, batch, todo, results); err != nil {
				return err
			}
		}
		// Flush even when no job is left to run again: the room heads
		// are written last, and a failed pipeline did not write them.
		err := btx.Flush(len(again) == 0)
		var fe *FlushError
		if errors.As(err, &fe) {
			undone := btx.Restore(fe.Job, fe.Retry)
			if fe.Retry {
				again = append(append(again, fe.Job), undone...)
			} else {
				results[fe.Job] = fe.Err
				again = append(again, undone...)
				again = slices.DeleteFunc(again, func(n int) bool { return n == fe.Job })
			}
		} else if err != nil || len(again) == 0 {
			return err
		}
		slices.Sort(again)
		todo = slices.Compact(again)
	}
}

// runRound runs the jobs todo (batch indices, ascending) on up to
// GOMAXPROCS goroutines, the caller's included. Building, signing and
// authorising events is most of a job's work, and it needs no lock: jobs of
// different rooms run in parallel. The jobs of one room run in batch order
// on one goroutine, each on the room head its predecessor left, so a room's
// events keep the order of the batch; BatchTx makes each job's writes reach
// the transaction whole, in the order the jobs end. It returns the jobs to
// run again, after a FlushError aborted the round: those that ended after
// it and those not run.
func runRound(btx BatchTx, batch []*job, todo []int, results []error) (again []int, err error) {
	var groups [][]int
	group := map[id.RoomID]int{}
	for _, n := range todo {
		g, ok := group[batch[n].roomID]
		if !ok {
			g = len(groups)
			group[batch[n].roomID] = g
			groups = append(groups, nil)
		}
		groups[g] = append(groups[g], n)
	}
	var (
		mu      sync.Mutex // guards next, again, err
		next    int
		stopped atomic.Bool // a job must run again, or the batch failed
	)
	work := func() {
		for {
			mu.Lock()
			if next == len(groups) || stopped.Load() {
				mu.Unlock()
				return
			}
			g := groups[next]
			next++
			mu.Unlock()
			for k, n := range g {
				rerun, jerr := false, error(nil)
				if !stopped.Load() {
					rerun, jerr = runJob(btx, n, batch[n], results)
				} else {
					rerun = true
				}
				if rerun || jerr != nil {
					stopped.Store(true)
					mu.Lock()
					again = append(again, g[k:]...)
					if err == nil {
						err = jerr
					}
					mu.Unlock()
					break
				}
			}
		}
	}
	var wg sync.WaitGroup
	for range min(len(groups), runtime.GOMAXPROCS(0)) - 1 {
		wg.Go(work)
	}
	work()
	wg.Wait()
	for _, g := range groups[next:] {
		again = append(again, g...)
	}
	return again, err
}

// runJob runs job n. rerun: it must run again (see BatchTx.EndJob).
func runJob(btx BatchTx, n int, j *job, results []error) (rerun bool, err error) {
	if err := j.ctx.Err(); err != nil {
		results[n] = err
		return false, nil
	}
	tx, err := btx.BeginJob(n, j.roomID, j.version)
	if err == nil {
		err = j.fn(tx)
	}
	rerun, ferr := btx.EndJob(n, err != nil)
	if ferr != nil {
		return false, ferr
	}
	if !rerun {
		results[n] = err
	}
	return rerun, nil
}

// inRoom runs fn with the room locked, as part of the next batch, mapping
// an unknown room to M_NOT_FOUND. fn must not keep the Tx after returning.
func (s *Service) inRoom(ctx context.Context, roomID id.RoomID, fn func(Tx) error) error {
	s.warmPush(ctx, roomID)
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
