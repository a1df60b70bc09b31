package storage

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
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
// nextStreamPos in a transaction short: it holds up every other writer.
// A rolled-back transaction leaves a gap in the numbers, which readers
// never notice: they only ever read ranges below the highest visible one.
const streamLockID = 0x77656675

// nextStreamPos allocates the next stream position inside tx.
func nextStreamPos(ctx context.Context, tx pgx.Tx) (int64, error) {
	if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", streamLockID); err != nil {
		return 0, fmt.Errorf("taking the stream lock: %w", err)
	}
	var pos int64
	if err := tx.QueryRow(ctx, "SELECT nextval('stream_pos_seq')").Scan(&pos); err != nil {
		return 0, fmt.Errorf("allocating stream position: %w", err)
	}
	return pos, nil
}
