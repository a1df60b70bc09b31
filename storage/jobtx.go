package storage

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/weftchat/weft/room"
)

// jobTx is a batch transaction as its jobs see it.
//
// Writes are not sent one by one: Queue holds them, and they go to Postgres
// as one pipeline when the batch ends or before any read (a read must see
// the writes queued before it). Each job's statements start with its own
// savepoint, SAVEPOINT j<n>, so one failing job can be undone alone:
//   - a job that fails before its statements were sent is simply dropped
//     from the queue;
//   - a job that fails after some were sent is rolled back to its savepoint;
//   - a statement that fails inside a pipeline (a duplicate transaction ID)
//     is reported as *room.FlushError naming the job: the transaction is
//     rolled back to that job's savepoint, and the batcher runs the jobs
//     after it again (their statements never ran).
//
// Savepoints are not released; room/batch.go keeps batches short enough
// (maxBatch) for Postgres's per-backend subtransaction cache.
type jobTx struct {
	tx  pgx.Tx
	job int
	// lockJob is the job during whose savepoint the stream lock was taken
	// (-2: not held). The lock is taken as late as possible, at the head of
	// the first pipeline that carries writes, so that a second batch can
	// build its events while this one waits for its commit; positions are
	// still only taken under it (stream.go). Rolling back that job (or an
	// earlier one) releases the lock with the subtransaction.
	lockJob int
	// pending are the statements not sent yet, in order.
	pending []queued
	// sent[j]: job j's savepoint has reached the server.
	sent map[int]bool
}

type queued struct {
	job  int
	sql  string
	args []any
	// pos, when set, receives the single int8 the statement returns (the
	// stream position of an inserted event).
	pos *int64
}

func newJobTx(tx pgx.Tx) *jobTx { return &jobTx{tx: tx, job: -1, lockJob: -2, sent: map[int]bool{}} }

// lostLockAt notes that jobs from n on were rolled back.
func (j *jobTx) lostLockAt(n int) {
	if j.lockJob >= n {
		j.lockJob = -2
	}
}

func savepointName(job int) string { return fmt.Sprintf("j%d", job) }

// beginJob starts job n: its statements follow its savepoint.
func (j *jobTx) beginJob(n int) {
	j.job = n
	j.pending = append(j.pending, queued{job: n, sql: "SAVEPOINT " + savepointName(n)})
}

// Queue adds a write to the pipeline.
func (j *jobTx) Queue(sql string, args ...any) {
	j.pending = append(j.pending, queued{job: j.job, sql: sql, args: args})
}

// QueuePos adds a write that returns a stream position, stored into pos
// when the pipeline runs.
func (j *jobTx) QueuePos(pos *int64, sql string, args ...any) {
	j.pending = append(j.pending, queued{job: j.job, sql: sql, args: args, pos: pos})
}

// flush sends the queued statements as one pipeline.
func (j *jobTx) flush(ctx context.Context) error {
	if len(j.pending) == 0 {
		return nil
	}
	if j.lockJob == -2 {
		// The stream lock goes first, inside the subtransaction of the
		// job whose statement starts the pipeline.
		j.pending = append([]queued{{job: j.pending[0].job, sql: "SELECT pg_advisory_xact_lock($1)", args: []any{streamLockID}}}, j.pending...)
		j.lockJob = j.pending[0].job
	}
	b := &pgx.Batch{}
	for _, q := range j.pending {
		b.Queue(q.sql, q.args...)
	}
	sent := j.pending
	j.pending = nil
	br := j.tx.SendBatch(ctx, b)
	var failed *room.FlushError
	for _, q := range sent {
		var err error
		if q.pos != nil {
			err = br.QueryRow().Scan(q.pos)
		} else {
			_, err = br.Exec()
		}
		if err == nil && failed == nil {
			j.sent[q.job] = true
		} else if err != nil && failed == nil {
			failed = &room.FlushError{Job: q.job, Err: mapWriteError(err)}
		}
	}
	if err := br.Close(); err != nil && failed == nil {
		return fmt.Errorf("sending queued writes: %w", err)
	}
	if failed == nil {
		return nil
	}
	if !j.sent[failed.Job] {
		// Even the job's savepoint (or the stream lock) failed: nothing
		// can be kept.
		return fmt.Errorf("batch transaction failed: %w", failed.Err)
	}
	j.lostLockAt(failed.Job)
	if _, err := j.tx.Exec(ctx, "ROLLBACK TO SAVEPOINT "+savepointName(failed.Job)); err != nil {
		return fmt.Errorf("rolling back job: %w", err)
	}
	for n := range j.sent {
		if n > failed.Job {
			delete(j.sent, n) // their savepoints are gone with the rollback
		}
	}
	return failed
}

// mapWriteError turns the unique violations a job can cause into the
// domain's errors.
func mapWriteError(err error) error {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "23505" {
		switch pgErr.ConstraintName {
		case "event_txns_pkey":
			return room.ErrDuplicateTxn
		case "rooms_pkey":
			return room.ErrRoomExists
		}
	}
	return err
}

// rollbackJob undoes job n after it failed.
func (j *jobTx) rollbackJob(ctx context.Context, n int) error {
	keep := j.pending[:0]
	for _, q := range j.pending {
		if q.job != n {
			keep = append(keep, q)
		}
	}
	j.pending = keep
	if !j.sent[n] {
		return nil
	}
	delete(j.sent, n)
	j.lostLockAt(n)
	_, err := j.tx.Exec(ctx, "ROLLBACK TO SAVEPOINT "+savepointName(n))
	return err
}

// Reads and immediate writes first send what is queued.

func (j *jobTx) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	if err := j.flush(ctx); err != nil {
		return pgconn.CommandTag{}, err
	}
	return j.tx.Exec(ctx, sql, args...)
}

func (j *jobTx) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	if err := j.flush(ctx); err != nil {
		return nil, err
	}
	return j.tx.Query(ctx, sql, args...)
}

func (j *jobTx) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	if err := j.flush(ctx); err != nil {
		return errRow{err}
	}
	return j.tx.QueryRow(ctx, sql, args...)
}

type errRow struct{ err error }

func (r errRow) Scan(...any) error { return r.err }
