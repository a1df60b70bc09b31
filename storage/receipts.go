package storage

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"maunium.net/go/mautrix/id"

	"github.com/weftchat/weft/room"
	"github.com/weftchat/weft/syncapi"
)

var _ room.ReceiptStore = (*Rooms)(nil)

// errUnchanged rolls back a stream transaction that found nothing to
// change, so that no position is announced and no /sync wakes for nothing.
var errUnchanged = errors.New("nothing changed")

// PutReadMarks upserts the receipts (table receipts) and the m.fully_read
// room account data in one stream transaction. The stream lock is taken
// first, before the row locks of the upserts: room batches do the same
// (stream lock, then room rows), so the two cannot deadlock, and the
// foreign-key share lock on the rooms row is taken under the stream lock.
//
// A mark moves only forward: the ON CONFLICT update applies only when the
// stored mark's event has a lower stream position than the new one's (a
// stored event that cannot be found counts as position 0). The WHERE is
// evaluated on the locked, newest row version, so two racing receipts end
// with the newer event whichever commits last.
//
// Listeners are told: the room, when a public m.read may have changed
// (every member sees it); the user, always (private receipts and the
// fully-read marker are the user's own).
func (r *Rooms) PutReadMarks(ctx context.Context, m room.ReadMarks) error {
	var rooms []id.RoomID
	for _, mk := range m.Marks {
		if mk.Type == room.ReceiptRead {
			rooms = []id.RoomID{m.RoomID}
		}
	}
	err := r.db.inStreamTx(ctx, syncapi.KindReceipts|syncapi.KindAccountData, rooms, []id.UserID{m.UserID}, func(tx pgx.Tx, next func() (int64, error)) error {
		pos, err := next()
		if err != nil {
			return err
		}
		changed := false
		for _, mk := range m.Marks {
			var tag pgconn.CommandTag
			if mk.Type == room.FullyRead {
				content, _ := json.Marshal(map[string]id.EventID{"event_id": mk.EventID})
				tag, err = tx.Exec(ctx, `INSERT INTO account_data (user_id, room_id, type, content, stream_pos)
					VALUES ($1, $2, 'm.fully_read', $3, $4)
					ON CONFLICT (user_id, room_id, type) DO UPDATE SET content = EXCLUDED.content, stream_pos = EXCLUDED.stream_pos
					WHERE coalesce((SELECT e.stream_pos FROM events e WHERE e.event_id = account_data.content->>'event_id'), 0) < $5`,
					m.UserID, m.RoomID, content, pos, mk.EventPos)
			} else {
				tag, err = tx.Exec(ctx, `INSERT INTO receipts (room_id, user_id, receipt_type, thread_id, event_id, ts, stream_pos)
					VALUES ($1, $2, $3, $4, $5, $6, $7)
					ON CONFLICT (room_id, user_id, receipt_type, thread_id) DO UPDATE
						SET event_id = EXCLUDED.event_id, ts = EXCLUDED.ts, stream_pos = EXCLUDED.stream_pos
					WHERE coalesce((SELECT e.stream_pos FROM events e WHERE e.event_id = receipts.event_id), 0) < $8`,
					m.RoomID, m.UserID, mk.Type, mk.ThreadID, mk.EventID, m.TS, pos, mk.EventPos)
			}
			if err != nil {
				return fmt.Errorf("storing %s: %w", mk.Type, err)
			}
			changed = changed || tag.RowsAffected() > 0
		}
		if !changed {
			return errUnchanged
		}
		return nil
	})
	if errors.Is(err, errUnchanged) {
		return nil
	}
	return err
}
