package storage

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
	"maunium.net/go/mautrix/id"
)

// streamLockID is the advisory lock that serialises stream position
// allocation with commit.
//
// The invariant (design notes): no reader may see position N before every
// position below N is committed. Postgres sequences hand out numbers in one
// order and transactions commit in another, so a position is taken only
// while holding this transaction-scoped lock, which is released by COMMIT
// (or ROLLBACK) after the transaction's writes became visible. Hence
// positions become visible in increasing order. Keep the work done after
// taking a position (inStreamTx, jobTx) short: it holds up every other writer.
// A rolled-back transaction leaves a gap in the numbers, which readers
// never notice: they only ever read ranges below the highest visible one.
const streamLockID = 0x77656675

// StreamListener is told after every commit that added to the stream: the
// highest position the transaction took, the rooms whose timelines changed
// and the users whose own streams changed (account data, membership,
// receipts). Positions only, never data: the listener reads what it needs.
//
// Calls can arrive out of commit order when transactions commit
// concurrently, but every position at or below pos is committed when the
// call is made (the stream lock orders commits), so the listener may keep
// the maximum it was told as "everything up to here is readable".
type StreamListener func(pos int64, rooms []id.RoomID, users []id.UserID)

// SetStreamListener installs the listener (before the server serves).
func (db *DB) SetStreamListener(fn StreamListener) { db.listener.Store(&fn) }

func (db *DB) streamCommitted(pos int64, rooms []id.RoomID, users []id.UserID) {
	if fn := db.listener.Load(); fn != nil {
		(*fn)(pos, rooms, users)
	}
}

// inStreamTx runs fn in a transaction that may take stream positions with
// next, and tells the stream listener after the commit.
func (db *DB) inStreamTx(ctx context.Context, rooms []id.RoomID, users []id.UserID, fn func(tx pgx.Tx, next func() (int64, error)) error) error {
	var last int64
	err := db.inTx(ctx, pgx.TxOptions{}, func(tx pgx.Tx) error {
		locked := false
		next := func() (int64, error) {
			if !locked {
				if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", streamLockID); err != nil {
					return 0, fmt.Errorf("taking the stream lock: %w", err)
				}
				locked = true
			}
			if err := tx.QueryRow(ctx, "SELECT nextval('stream_pos_seq')").Scan(&last); err != nil {
				return 0, fmt.Errorf("allocating stream position: %w", err)
			}
			return last, nil
		}
		return fn(tx, next)
	})
	if err == nil && last > 0 {
		db.streamCommitted(last, rooms, users)
	}
	return err
}
