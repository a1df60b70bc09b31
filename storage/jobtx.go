package storage

import (
	"context"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// jobTx is a batch transaction as its jobs see it. Each job runs under a
// savepoint, so a failing job leaves no trace while the others commit; to
// cost no round trip of its own, the SAVEPOINT is sent in the same round
// trip as the job's first statement. Savepoints are not released (that would
// be another round trip); room/batch.go keeps batches short enough (maxBatch)
// that the nested subtransactions stay within Postgres's per-backend cache.
type jobTx struct {
	tx pgx.Tx
	// pending: the current job's SAVEPOINT has not been sent yet.
	pending bool
	// started: a statement of the current job has run (and so its savepoint exists).
	started bool
}

const savepointSQL = "SAVEPOINT job"

func (j *jobTx) beginJob() { j.pending, j.started = true, false }

func (j *jobTx) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	j.started = true
	if !j.pending {
		return j.tx.Exec(ctx, sql, args...)
	}
	j.pending = false
	b := &pgx.Batch{}
	b.Queue(savepointSQL)
	var tag pgconn.CommandTag
	b.Queue(sql, args...).Exec(func(ct pgconn.CommandTag) error { tag = ct; return nil })
	return tag, j.tx.SendBatch(ctx, b).Close()
}

func (j *jobTx) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	if err := j.flush(ctx); err != nil {
		return nil, err
	}
	return j.tx.Query(ctx, sql, args...)
}

func (j *jobTx) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	j.started = true
	if !j.pending {
		return j.tx.QueryRow(ctx, sql, args...)
	}
	j.pending = false
	b := &pgx.Batch{}
	b.Queue(savepointSQL)
	b.Queue(sql, args...)
	br := j.tx.SendBatch(ctx, b)
	if _, err := br.Exec(); err != nil {
		br.Close()
		return errRow{err}
	}
	return batchRow{row: br.QueryRow(), br: br}
}

func (j *jobTx) SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults {
	j.started = true
	if j.pending {
		j.pending = false
		b.QueuedQueries = append([]*pgx.QueuedQuery{{SQL: savepointSQL}}, b.QueuedQueries...)
	}
	return j.tx.SendBatch(ctx, b)
}

// flush sends a pending savepoint on its own.
func (j *jobTx) flush(ctx context.Context) error {
	j.started = true
	if !j.pending {
		return nil
	}
	j.pending = false
	_, err := j.tx.Exec(ctx, savepointSQL)
	return err
}

// rollback undoes the current job, if it ran anything.
func (j *jobTx) rollback(ctx context.Context) error {
	j.pending = false
	if !j.started {
		return nil
	}
	_, err := j.tx.Exec(ctx, "ROLLBACK TO SAVEPOINT job")
	return err
}

type batchRow struct {
	row pgx.Row
	br  pgx.BatchResults
}

func (r batchRow) Scan(dest ...any) error {
	err := r.row.Scan(dest...)
	if cerr := r.br.Close(); err == nil {
		err = cerr
	}
	return err
}

type errRow struct{ err error }

func (r errRow) Scan(...any) error { return r.err }
