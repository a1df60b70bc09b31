package storage

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/jackc/pgx/v5"
	"maunium.net/go/mautrix/federation/pdu"
	"maunium.net/go/mautrix/id"

	"github.com/weftchat/weft/room"
	"github.com/weftchat/weft/syncapi"
)

// Sync implements syncapi.Store.
type Sync struct{ db *DB }

// Sync returns the /sync store.
func (db *DB) Sync() *Sync { return &Sync{db: db} }

var _ syncapi.Store = (*Sync)(nil)

func (s *Sync) MaxStreamPos(ctx context.Context) (int64, error) { return s.db.MaxStreamPos(ctx) }

// Snapshot runs fn in one REPEATABLE READ, READ ONLY transaction.
func (s *Sync) Snapshot(ctx context.Context, fn func(syncapi.Reader) error) error {
	return s.db.inTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		return fn(&syncReader{ctx: ctx, tx: tx})
	})
}

type syncReader struct {
	ctx context.Context
	tx  pgx.Tx
}

func (r *syncReader) MemberEvents(user id.UserID, at int64) ([]*room.Event, error) {
	return collectEvents(r.tx.Query(r.ctx, `SELECT `+eventColumns+` FROM (
			SELECT DISTINCT ON (room_id) event_id FROM events
			WHERE type = 'm.room.member' AND state_key = $1 AND stream_pos <= $2 AND NOT rejected
			ORDER BY room_id, stream_pos DESC
		) m JOIN events e USING (event_id) JOIN rooms r USING (room_id)
		ORDER BY e.stream_pos`, string(user), at))
}

func (r *syncReader) SnapshotVisibility(snapshot int64, user id.UserID) (string, string, error) {
	return snapshotVisibility(r.ctx, r.tx, snapshot, user)
}

func (r *syncReader) Timeline(roomID id.RoomID, from, to int64, limit int) ([]*room.Event, error) {
	return collectEvents(r.tx.Query(r.ctx, `SELECT `+eventColumns+` FROM events e JOIN rooms r USING (room_id)
		WHERE e.room_id = $1 AND e.stream_pos > $2 AND e.stream_pos <= $3 AND NOT e.rejected
		ORDER BY e.stream_pos DESC LIMIT $4`, roomID, from, to, limit))
}

// stateIDsAt resolves the room's state after every event at or below pos:
// the snapshot before the newest such event, plus that event if it is
// state.
func (r *syncReader) stateIDsAt(roomID id.RoomID, pos int64) (map[pdu.StateKey]id.EventID, error) {
	var (
		lastID   id.EventID
		snap     int64
		typ      string
		stateKey *string
	)
	err := r.tx.QueryRow(r.ctx, `SELECT event_id, state_before, type, state_key FROM events
		WHERE room_id = $1 AND stream_pos <= $2 AND NOT rejected ORDER BY stream_pos DESC LIMIT 1`, roomID, pos).
		Scan(&lastID, &snap, &typ, &stateKey)
	if errors.Is(err, pgx.ErrNoRows) {
		return map[pdu.StateKey]id.EventID{}, nil
	} else if err != nil {
		return nil, fmt.Errorf("finding the room's last event: %w", err)
	}
	rows, err := r.tx.Query(r.ctx, `SELECT type, state_key, event_id FROM (`+resolveSnapshotSQL+`) s WHERE $1::text <> ''`, roomID, snap)
	if err != nil {
		return nil, fmt.Errorf("resolving state: %w", err)
	}
	defer rows.Close()
	state := map[pdu.StateKey]id.EventID{}
	for rows.Next() {
		var k pdu.StateKey
		var eid id.EventID
		if err := rows.Scan(&k.Type, &k.StateKey, &eid); err != nil {
			return nil, err
		}
		state[k] = eid
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	if stateKey != nil {
		state[pdu.StateKey{Type: typ, StateKey: *stateKey}] = lastID
	}
	return state, nil
}

// keep applies the lazy-loading member restriction.
func keep(k pdu.StateKey, members *[]id.UserID) bool {
	return members == nil || k.Type != "m.room.member" || slices.Contains(*members, id.UserID(k.StateKey))
}

func (r *syncReader) loadEvents(ids []string) ([]*room.Event, error) {
	if len(ids) == 0 {
		return []*room.Event{}, nil
	}
	return collectEvents(r.tx.Query(r.ctx, `SELECT `+eventColumns+` FROM events e JOIN rooms r USING (room_id)
		WHERE e.event_id = ANY($1) ORDER BY e.stream_pos`, ids))
}

func (r *syncReader) StateAt(roomID id.RoomID, pos int64, members *[]id.UserID) ([]*room.Event, error) {
	state, err := r.stateIDsAt(roomID, pos)
	if err != nil {
		return nil, err
	}
	var ids []string
	for k, eid := range state {
		if keep(k, members) {
			ids = append(ids, string(eid))
		}
	}
	return r.loadEvents(ids)
}

func (r *syncReader) StateDelta(roomID id.RoomID, since, pos int64, members *[]id.UserID) ([]*room.Event, error) {
	before, err := r.stateIDsAt(roomID, since)
	if err != nil {
		return nil, err
	}
	after, err := r.stateIDsAt(roomID, pos)
	if err != nil {
		return nil, err
	}
	var ids []string
	for k, eid := range after {
		if before[k] != eid && keep(k, members) {
			ids = append(ids, string(eid))
		}
	}
	return r.loadEvents(ids)
}

func (r *syncReader) Summary(roomID id.RoomID, pos int64, self id.UserID) (syncapi.Summary, error) {
	state, err := r.stateIDsAt(roomID, pos)
	if err != nil {
		return syncapi.Summary{}, err
	}
	var ids []string
	for k, eid := range state {
		if k.Type == "m.room.member" {
			ids = append(ids, string(eid))
		}
	}
	rows, err := r.tx.Query(r.ctx, `SELECT state_key, pdu->'content'->>'membership' FROM events
		WHERE event_id = ANY($1) ORDER BY stream_pos`, ids)
	if err != nil {
		return syncapi.Summary{}, fmt.Errorf("reading members: %w", err)
	}
	defer rows.Close()
	var sum syncapi.Summary
	var gone []id.UserID
	for rows.Next() {
		var user id.UserID
		var membership *string
		if err := rows.Scan(&user, &membership); err != nil {
			return sum, err
		}
		m := ""
		if membership != nil {
			m = *membership
		}
		switch m {
		case "join":
			sum.Joined++
		case "invite":
			sum.Invited++
		}
		if user == self {
			continue
		}
		switch m {
		case "join", "invite":
			if len(sum.Heroes) < 5 {
				sum.Heroes = append(sum.Heroes, user)
			}
		case "leave", "ban":
			gone = append(gone, user)
		}
	}
	if len(sum.Heroes) == 0 && len(gone) > 0 {
		sum.Heroes = gone[:min(len(gone), 5)]
	}
	return sum, rows.Err()
}

func (r *syncReader) AccountData(user id.UserID, since, to int64) ([]syncapi.AccountData, error) {
	rows, err := r.tx.Query(r.ctx, `SELECT room_id, type, content FROM account_data
		WHERE user_id = $1 AND stream_pos > $2 AND stream_pos <= $3 ORDER BY stream_pos`, user, since, to)
	if err != nil {
		return nil, fmt.Errorf("reading account data: %w", err)
	}
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (syncapi.AccountData, error) {
		var a syncapi.AccountData
		var content []byte
		err := row.Scan(&a.RoomID, &a.Type, &content)
		a.Content = content
		return a, err
	})
}

func (r *syncReader) Receipts(rooms []id.RoomID, since, to int64) ([]syncapi.Receipt, error) {
	if len(rooms) == 0 {
		return nil, nil
	}
	rows, err := r.tx.Query(r.ctx, `SELECT room_id, user_id, receipt_type, thread_id, event_id, ts FROM receipts
		WHERE room_id = ANY($1) AND stream_pos > $2 AND stream_pos <= $3 ORDER BY stream_pos`, rooms, since, to)
	if err != nil {
		return nil, fmt.Errorf("reading receipts: %w", err)
	}
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (syncapi.Receipt, error) {
		var rc syncapi.Receipt
		err := row.Scan(&rc.RoomID, &rc.UserID, &rc.Type, &rc.ThreadID, &rc.EventID, &rc.TS)
		return rc, err
	})
}

func (r *syncReader) Presence(user id.UserID, since, to int64) ([]syncapi.Presence, error) {
	rows, err := r.tx.Query(r.ctx, `SELECT p.user_id, p.state, p.status_msg, p.last_active_ts, p.last_sync_ts FROM presence p
		WHERE p.stream_pos > $2 AND p.stream_pos <= $3 AND (p.user_id = $1 OR EXISTS (
			SELECT 1 FROM current_state mine JOIN current_state theirs ON theirs.room_id = mine.room_id
			WHERE mine.type = 'm.room.member' AND mine.state_key = $1 AND mine.membership = 'join'
			  AND theirs.type = 'm.room.member' AND theirs.state_key = p.user_id AND theirs.membership = 'join'))
		ORDER BY p.stream_pos`, string(user), since, to)
	if err != nil {
		return nil, fmt.Errorf("reading presence: %w", err)
	}
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (syncapi.Presence, error) {
		var p syncapi.Presence
		err := row.Scan(&p.UserID, &p.State, &p.StatusMsg, &p.LastActiveTS, &p.LastSyncTS)
		return p, err
	})
}
