package storage

import (
	"context"
	"fmt"
	"sync"

	"github.com/jackc/pgx/v5"
	"maunium.net/go/mautrix/id"

	"github.com/weftchat/weft/syncapi"
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
// Calls arrive in commit order (streamGate), so when the listener is told
// pos, every change at or below it has been reported: it may treat pos as
// "everything up to here is readable and accounted for".
type StreamListener func(pos int64, kinds syncapi.Kind, rooms []id.RoomID, users []id.UserID)

// SetStreamListener installs the listener (before the server serves).
func (db *DB) SetStreamListener(fn StreamListener) { db.listener.Store(&fn) }

// streamGate delivers commit notifications to the listener in commit
// order. Transactions commit in position order (the stream lock), but the
// code after each COMMIT runs in its own goroutine: a later commit's
// notification could reach the listener first, and a reader sampling the
// listener's position then would skip the earlier commit's changes for
// good. So a transaction takes a ticket while it still holds the stream
// lock (tickets are thus in commit order), and notifications are
// delivered only once every earlier ticket is resolved.
type streamGate struct {
	mu    sync.Mutex
	queue []*streamTicket
}

type streamTicket struct {
	resolved bool
	note     *streamNote // nil: rolled back, nothing to tell
}

type streamNote struct {
	pos   int64
	kinds syncapi.Kind
	rooms []id.RoomID
	users []id.UserID
}

// take is called while holding the stream lock, just before COMMIT.
func (g *streamGate) take() *streamTicket {
	t := &streamTicket{}
	g.mu.Lock()
	g.queue = append(g.queue, t)
	g.mu.Unlock()
	return t
}

// resolve records the outcome of t's transaction and delivers what can be.
func (db *DB) resolve(t *streamTicket, note *streamNote) {
	g := &db.gate
	g.mu.Lock()
	defer g.mu.Unlock()
	t.resolved, t.note = true, note
	fn := db.listener.Load()
	for len(g.queue) > 0 && g.queue[0].resolved {
		if n := g.queue[0].note; n != nil && fn != nil {
			(*fn)(n.pos, n.kinds, n.rooms, n.users)
		}
		g.queue[0] = nil
		g.queue = g.queue[1:]
	}
}

// inStreamTx runs fn in a transaction that may take stream positions with
// next, and tells the stream listener after the commit.
func (db *DB) inStreamTx(ctx context.Context, kinds syncapi.Kind, rooms []id.RoomID, users []id.UserID, fn func(tx pgx.Tx, next func() (int64, error)) error) error {
	var last int64
	var ticket *streamTicket
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
		if err := fn(tx, next); err != nil {
			return err
		}
		if locked {
			ticket = db.gate.take() // still under the lock: COMMIT follows
		}
		return nil
	})
	if ticket != nil {
		var note *streamNote
		if err == nil {
			note = &streamNote{pos: last, kinds: kinds, rooms: rooms, users: users}
		}
		db.resolve(ticket, note)
	}
	return err
}
