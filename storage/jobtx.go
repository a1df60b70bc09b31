package storage

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/weftchat/weft/room"
)

// stream is a batch transaction shared by jobs that run concurrently (one
// goroutine per room at a time, room/batch.go).
//
// Writes are not sent one by one. Each job queues its statements privately
// (jobConn), behind its own savepoint, SAVEPOINT j<n>, so one failing job
// can be undone alone. A job that ends well hands its statements, whole, to
// the stream's queue, which goes to Postgres as one pipeline when the batch
// ends or before a read. The order in which jobs reach the queue is the
// stream order: the order of their savepoints, of their stream positions
// and of what a rollback undoes. The jobs of one room run one after another
// on one goroutine, so they keep their batch order in the stream; jobs of
// different rooms interleave in whatever order they end.
//
// One goroutine at a time may use the pgx transaction: the holder of tok. A
// job that needs the database while it runs (a read, which must see the
// writes queued before it, or an immediate write) takes tok and keeps it
// until it ends: it sends the queue, then its own savepoint and statements,
// and its later statements follow directly, so that a job's statements stay
// contiguous in the stream and rolling back to its savepoint undoes nothing
// of any other job. Jobs that end meanwhile wait for tok to join the queue,
// after the holder. The holder never waits for another job, so this cannot
// deadlock. Reads are rare (the room caches hold what a send needs), so the
// jobs seldom wait.
//
// When a job fails:
//   - before its statements were sent, they are simply dropped;
//   - after (it held tok), the transaction is rolled back to its savepoint;
//     as it is the last job in the stream, nothing else is undone;
//   - a statement that fails inside a pipeline (a duplicate transaction
//     ID) fails its job Y: the transaction is rolled back to Y's savepoint,
//     which undoes the jobs after Y in the stream, and the stream is aborted
//     until the batcher has seen the *room.FlushError (batchTx.Flush):
//     jobs that end meanwhile are told to run again, and reads fail with
//     errAborted. The batcher runs again the jobs undone (undoneAfter) and
//     those that ended after the abort.
//
// Savepoints are not released; room/batch.go keeps batches short enough
// (maxBatch) for Postgres's per-backend subtransaction cache.
type stream struct {
	tx  txConn
	tok sync.Mutex

	// The transaction is begun and committed by statements in the
	// stream's own pipelines, to spare a round trip each: BEGIN goes
	// ahead of the first statements sent (begun), and COMMIT after the
	// batch's last writes when Flush is told they are the last
	// (commitOnFlush) and the stream lock is already held, so that the
	// commit's ticket (stream.go) can be taken before it is sent. ticket
	// and committed report that commit. While jobs run, these are guarded
	// by tok like the fields below.
	begun, commitOnFlush, committed bool
	ticket                          *streamTicket
	db                              *DB
	// hasPositions reports that the batch took stream positions (a ticket
	// is needed to commit).
	hasPositions func() bool

	// Guarded by tok:

	// queue is the statements waiting to be sent, in stream order.
	queue []queued
	// order is the jobs that entered the stream, in stream order (a job
	// failed and rolled back stays: its savepoint is still there); sent is
	// how many of them have had their savepoint sent.
	order []int
	sent  int
	// failed marks the jobs of order that failed (rolled back).
	failed map[int]bool
	// lockLevel is the index in order of the savepoint inside whose
	// subtransaction the stream lock was taken (-1: outside any; -2: not
	// held). A batch that locks existing rooms takes it with them, outside
	// every savepoint (batchTx.LockRooms), so that its last pipeline can
	// carry the COMMIT; one that only creates rooms takes it at the head
	// of the first pipeline that carries writes. Positions are only taken
	// under it (stream.go). Rolling back to the savepoint it was taken in
	// (or an earlier one) releases the lock with the subtransaction.
	lockLevel int
	// aborted is the FlushError that aborted the stream, until the batcher
	// takes it.
	aborted *room.FlushError
	// broken is the error that makes the whole transaction unusable.
	broken error
	// noBulk: a bulk append failed, so queued events are sent one by one
	// for the rest of the batch, to find the job at fault (bulk.go).
	noBulk bool
	// pending, when set, reads the answers of a pipeline already sent
	// (batchTx.LockRooms): it runs before anything else uses the
	// connection (settle).
	pending func() error
}

// settle runs pending. Caller holds tok.
func (s *stream) settle() error {
	if s.pending == nil {
		return nil
	}
	f := s.pending
	s.pending = nil
	if err := f(); err != nil {
		s.broken = err
		return err
	}
	return nil
}

type queued struct {
	// job is the job the statement belongs to; -1: none (a failure fails
	// the batch).
	job       int
	savepoint bool
	// held marks the savepoint of a job that holds tok: it is rolled back
	// to by name, so it is always sent.
	held bool
	sql  string
	args []any
	// pos, when set, receives the single int8 the statement returns (the
	// stream position of an inserted event).
	pos *int64
	// event, instead of sql, is a message event to append (bulk.go).
	event *bulkEvent
}

// errAborted answers a read of a job that runs while the stream is
// aborted: the batcher runs the job again.
var errAborted = errors.New("batch stream aborted by an earlier job's failed write")

// txConn is the connection a stream's transaction runs on.
type txConn interface {
	SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

func newStream(tx txConn, db *DB, hasPositions func() bool) *stream {
	return &stream{tx: tx, lockLevel: -2, failed: map[int]bool{}, db: db, hasPositions: hasPositions}
}

func savepointName(job int) string { return fmt.Sprintf("j%d", job) }

// jobConn is one job's view of the batch transaction. It is used by the
// goroutine running the job only.
type jobConn struct {
	s *stream
	n int
	// pending are the job's statements not handed to the stream yet; the
	// first is its savepoint until the job enters the stream.
	pending []queued
	// holds: the job holds s.tok, and has entered the stream.
	holds bool
}

// begin starts job n: its statements follow its savepoint.
func (s *stream) begin(n int) *jobConn {
	return &jobConn{s: s, n: n, pending: []queued{{job: n, savepoint: true, sql: "SAVEPOINT " + savepointName(n)}}}
}

// Queue adds a write to the job's statements.
func (c *jobConn) Queue(sql string, args ...any) {
	c.pending = append(c.pending, queued{job: c.n, sql: sql, args: args})
}

// QueuePos adds a write that returns a stream position, stored into pos
// when the pipeline runs.
func (c *jobConn) QueuePos(pos *int64, sql string, args ...any) {
	c.pending = append(c.pending, queued{job: c.n, sql: sql, args: args, pos: pos})
}

// queueEvent adds a message event to append (bulk.go).
func (c *jobConn) queueEvent(e *bulkEvent) {
	c.pending = append(c.pending, queued{job: c.n, event: e})
}

// acquire makes the job the holder of the transaction (for the rest of the
// job) and sends everything queued before it and its own statements.
func (c *jobConn) acquire(ctx context.Context) error {
	s := c.s
	if !c.holds {
		s.tok.Lock()
		if err := s.unusable(); err != nil {
			s.tok.Unlock()
			return err
		}
		c.holds = true
		s.order = append(s.order, c.n)
		if len(c.pending) > 0 && c.pending[0].savepoint {
			c.pending[0].held = true
		}
	}
	s.queue = append(s.queue, c.pending...)
	c.pending = nil
	return s.flush(ctx)
}

// unusable reports why no job may use the transaction now. Caller holds tok.
func (s *stream) unusable() error {
	if s.broken != nil {
		return s.broken
	}
	if s.aborted != nil {
		return errAborted
	}
	return nil
}

// end finishes job c (failed: with an error), releasing tok. The job's
// statements join the stream if it succeeded, or are undone if it failed.
// again reports that the job must run again: the stream was aborted before
// its statements could join it (or they were undone by the abort). A
// non-nil error fails the whole batch.
func (c *jobConn) end(ctx context.Context, failed bool) (again bool, err error) {
	s := c.s
	if !c.holds {
		s.tok.Lock()
	}
	held := c.holds
	c.holds = false
	defer s.tok.Unlock()
	pending := c.pending
	c.pending = nil
	switch {
	case s.broken != nil:
		return false, s.broken
	case s.aborted != nil:
		// A holder's statements were undone by the rollback that aborted
		// the stream (it came after the failed job, or is that job).
		return true, nil
	case !failed:
		if !held {
			s.order = append(s.order, c.n)
		}
		s.queue = append(s.queue, pending...)
		return false, nil
	case held:
		s.failed[c.n] = true
		if err := s.rollbackTo(ctx, len(s.order)-1); err != nil {
			return false, err
		}
	}
	return false, nil
}

// rollbackTo rolls the transaction back to the savepoint of order[i],
// which has been sent. Caller holds tok.
func (s *stream) rollbackTo(ctx context.Context, i int) error {
	if err := s.settle(); err != nil {
		return err
	}
	if s.lockLevel >= i {
		s.lockLevel = -2
	}
	s.sent = i + 1
	if _, err := s.tx.Exec(ctx, "ROLLBACK TO SAVEPOINT "+savepointName(s.order[i])); err != nil {
		s.broken = fmt.Errorf("rolling back job: %w", err)
		return s.broken
	}
	return nil
}

// flush sends the queue as one pipeline. Caller holds tok.
func (s *stream) flush(ctx context.Context) error {
	if err := s.settle(); err != nil {
		return err
	}
	if err := s.unusable(); err != nil {
		return err
	}
	commit := s.commitOnFlush && s.lockLevel != -2
	if len(s.queue) == 0 && !commit {
		if !s.begun {
			// A read comes first: the transaction must be open for it.
			if _, err := s.tx.Exec(ctx, "BEGIN"); err != nil {
				s.broken = fmt.Errorf("beginning the batch transaction: %w", err)
				return s.broken
			}
			s.begun = true
		}
		return nil
	}
	if s.lockLevel == -2 {
		// The stream lock goes first, in the subtransaction of the last
		// savepoint sent.
		s.queue = append([]queued{{job: -1, sql: "SELECT pg_advisory_xact_lock($1)", args: []any{streamLockID}}}, s.queue...)
		s.lockLevel = s.sent - 1
	}
	sent := s.render(s.queue)
	s.queue = nil
	if !s.begun {
		sent = append([]wireStmt{{job: -1, sql: "BEGIN"}}, sent...)
		s.begun = true // if it fails, the stream is broken anyway
	}
	if commit {
		// The stream lock is held, so the ticket is in commit order.
		if s.hasPositions() {
			s.ticket = s.db.gate.take()
		}
		sent = append(sent, wireStmt{job: -1, sql: "COMMIT"})
	}
	b := &pgx.Batch{}
	for _, w := range sent {
		b.Queue(w.sql, w.args...)
	}
	br := s.tx.SendBatch(ctx, b)
	var failed *wireStmt
	var failErr error
	for i := range sent {
		w := &sent[i]
		var err error
		switch {
		case w.events != nil:
			err = readPositions(br, w.events)
		case w.pos != nil:
			err = br.QueryRow().Scan(w.pos)
		default:
			_, err = br.Exec()
		}
		if failed != nil {
			continue
		}
		if err != nil {
			failed, failErr = w, err
		} else {
			s.sent += w.entered
		}
	}
	err := br.Close()
	if commit && (err != nil || failed != nil) && s.ticket != nil {
		// Not committed: the ticket is given back, telling nothing.
		s.db.resolve(s.ticket, nil)
		s.ticket = nil
	}
	if err != nil && failed == nil {
		s.broken = fmt.Errorf("sending queued writes: %w", err)
		return s.broken
	}
	if failed == nil {
		s.committed = commit
		return nil
	}
	if failed.job < 0 || failed.entered > 0 && failed.events == nil {
		// The stream lock, a savepoint or a statement of no job failed:
		// nothing can be kept.
		s.broken = fmt.Errorf("batch transaction failed: %w", failErr)
		return s.broken
	}
	if failed.events != nil {
		// A bulk append failed, and which of its jobs caused it is not
		// known: undo them all (and what followed), and run them again
		// with their events sent one by one, which finds the job.
		if err := s.rollbackTo(ctx, s.index(failed.job)); err != nil {
			return err
		}
		s.noBulk = true
		s.aborted = &room.FlushError{Job: failed.job, Err: mapWriteError(failErr), Retry: true}
		return s.aborted
	}
	i := s.index(failed.job)
	if err := s.rollbackTo(ctx, i); err != nil {
		return err
	}
	s.aborted = &room.FlushError{Job: failed.job, Err: mapWriteError(failErr)}
	return s.aborted
}

// index is the position of job n in the stream (the last, if it entered
// it more than once: a job run again after an abort).
func (s *stream) index(n int) int {
	for i := len(s.order) - 1; i >= 0; i-- {
		if s.order[i] == n {
			return i
		}
	}
	panic(fmt.Sprintf("job %d is not in the stream", n))
}

// takeAborted returns and clears the FlushError that aborted the stream.
func (s *stream) takeAborted() *room.FlushError {
	s.tok.Lock()
	defer s.tok.Unlock()
	fe := s.aborted
	s.aborted = nil
	return fe
}

// undoneAfter forgets the jobs that entered the stream after job n (whose
// write failed): the rollback to n's savepoint undid them. It returns those
// that had not failed, in stream order: they must run again. No job runs.
// With rerun, n was undone without failing (a bulk append failed: bulk.go)
// and runs again too: it is forgotten like them, so that its next entry is
// its only one (failed is kept per job, not per entry).
func (s *stream) undoneAfter(n int, rerun bool) []int {
	s.tok.Lock()
	defer s.tok.Unlock()
	i := s.index(n)
	var undone []int
	for _, j := range s.order[i+1:] {
		if !s.failed[j] {
			undone = append(undone, j)
		}
		delete(s.failed, j)
	}
	if rerun {
		// Its savepoint stays in the transaction, unnamed by any entry:
		// its next entry's savepoint, of the same name, is the one
		// rollbacks find.
		delete(s.failed, n)
		s.order = s.order[:i]
		s.sent = min(s.sent, i)
		return undone
	}
	s.failed[n] = true
	s.order = s.order[:i+1]
	s.sent = min(s.sent, i+1)
	return undone
}

// mapWriteError turns the unique violations a job can cause into the
// domain's errors.
func mapWriteError(err error) error {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "23505" {
		switch pgErr.ConstraintName {
		case "events_txn":
			return room.ErrDuplicateTxn
		case "rooms_pkey":
			return room.ErrRoomExists
		}
	}
	return err
}

// Reads and immediate writes make the job the holder and send what is
// queued first.

func (c *jobConn) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	if err := c.acquire(ctx); err != nil {
		return pgconn.CommandTag{}, err
	}
	return c.s.tx.Exec(ctx, sql, args...)
}

func (c *jobConn) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	if err := c.acquire(ctx); err != nil {
		return nil, err
	}
	return c.s.tx.Query(ctx, sql, args...)
}

func (c *jobConn) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	if err := c.acquire(ctx); err != nil {
		return errRow{err}
	}
	return c.s.tx.QueryRow(ctx, sql, args...)
}

type errRow struct{ err error }

func (r errRow) Scan(...any) error { return r.err }
