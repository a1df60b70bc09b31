package storage

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

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

// Snapshot opens one REPEATABLE READ, READ ONLY transaction.
func (s *Sync) Snapshot(ctx context.Context) (syncapi.Snapshot, error) {
	tx, err := s.db.pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return nil, fmt.Errorf("opening the sync snapshot: %w", err)
	}
	return &syncReader{ctx: ctx, tx: tx}, nil
}

func (r *syncReader) Close() { _ = r.tx.Rollback(context.WithoutCancel(r.ctx)) }

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

func (r *syncReader) Timelines(reqs []syncapi.TimelineReq) (map[syncapi.TimelineReq][]*room.Event, error) {
	rooms := make([]string, len(reqs))
	froms := make([]int64, len(reqs))
	tos := make([]int64, len(reqs))
	limits := make([]int32, len(reqs))
	for i, q := range reqs {
		rooms[i], froms[i], tos[i], limits[i] = string(q.Room), q.From, q.To, int32(q.Limit)
	}
	rows, err := r.tx.Query(r.ctx, `SELECT q.i, `+eventColumns+`
		FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::int[]) WITH ORDINALITY AS q(room_id, from_pos, to_pos, lim, i)
		CROSS JOIN LATERAL (
			SELECT * FROM events x WHERE x.room_id = q.room_id AND x.stream_pos > q.from_pos AND x.stream_pos <= q.to_pos AND NOT x.rejected
			ORDER BY x.stream_pos DESC LIMIT q.lim
		) e JOIN rooms r ON r.room_id = e.room_id
		ORDER BY q.i, e.stream_pos DESC`, rooms, froms, tos, limits)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := make(map[syncapi.TimelineReq][]*room.Event, len(reqs))
	for rows.Next() {
		var i int64
		ev, err := scanEventWith(rows, &i)
		if err != nil {
			return nil, err
		}
		q := reqs[i-1]
		out[q] = append(out[q], ev)
	}
	return out, rows.Err()
}

// StateIDs resolves, for each request, the room's state after every event
// at or below its position: the snapshot before the newest such event,
// plus that event if it is state. One statement for every request, so that
// an initial sync reads the state of all its rooms in one round trip.
func (r *syncReader) StateIDs(reqs []syncapi.StateReq) (map[syncapi.StateReq]map[pdu.StateKey]id.EventID, error) {
	rooms := make([]string, len(reqs))
	positions := make([]int64, len(reqs))
	for i, q := range reqs {
		rooms[i], positions[i] = string(q.Room), q.Pos
	}
	rows, err := r.tx.Query(r.ctx, `
		WITH RECURSIVE last AS (
			SELECT q.i, l.event_id, l.state_before, l.type, l.state_key
			FROM unnest($1::text[], $2::bigint[]) WITH ORDINALITY AS q(room_id, pos, i)
			CROSS JOIN LATERAL (
				SELECT event_id, state_before, type, state_key FROM events
				WHERE room_id = q.room_id AND stream_pos <= q.pos AND NOT rejected ORDER BY stream_pos DESC LIMIT 1
			) l
		), chain(i, snapshot_id, parent_id, lvl) AS (
			SELECT last.i, s.snapshot_id, s.parent_id, 0 FROM state_snapshots s JOIN last ON s.snapshot_id = last.state_before
			UNION ALL
			SELECT c.i, s.snapshot_id, s.parent_id, c.lvl + 1 FROM state_snapshots s JOIN chain c ON s.snapshot_id = c.parent_id
		)
		SELECT i, type, state_key, event_id, false FROM (
			SELECT DISTINCT ON (c.i, e.type, e.state_key) c.i, e.type, e.state_key, e.event_id
			FROM chain c JOIN state_snapshot_entries e USING (snapshot_id)
			ORDER BY c.i, e.type, e.state_key, c.lvl
		) s
		UNION ALL
		SELECT i, type, state_key, event_id, true FROM last WHERE state_key IS NOT NULL`, rooms, positions)
	if err != nil {
		return nil, fmt.Errorf("resolving state: %w", err)
	}
	defer rows.Close()
	out := make(map[syncapi.StateReq]map[pdu.StateKey]id.EventID, len(reqs))
	for _, q := range reqs {
		out[q] = map[pdu.StateKey]id.EventID{}
	}
	type newest struct {
		k   pdu.StateKey
		eid id.EventID
	}
	var last []newest // per request, indexed by i-1
	for rows.Next() {
		var i int64
		var k pdu.StateKey
		var eid id.EventID
		var isLast bool
		if err := rows.Scan(&i, &k.Type, &k.StateKey, &eid, &isLast); err != nil {
			return nil, err
		}
		if isLast {
			if last == nil {
				last = make([]newest, len(reqs))
			}
			last[i-1] = newest{k, eid}
			continue
		}
		out[reqs[i-1]][k] = eid
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	for i, n := range last {
		if n.eid != "" {
			out[reqs[i]][n.k] = n.eid // the newest event replaces its key
		}
	}
	return out, nil
}

func (r *syncReader) TxnIDs(user id.UserID, device id.DeviceID, events []id.EventID) (map[id.EventID]string, error) {
	rows, err := r.tx.Query(r.ctx, `SELECT event_id, txn_id FROM events WHERE event_id = ANY($1) AND sender = $2 AND txn_device = $3 AND txn_id IS NOT NULL`,
		events, user, device)
	if err != nil {
		return nil, fmt.Errorf("reading transaction IDs: %w", err)
	}
	defer rows.Close()
	out := map[id.EventID]string{}
	for rows.Next() {
		var eid id.EventID
		var txn string
		if err := rows.Scan(&eid, &txn); err != nil {
			return nil, err
		}
		out[eid] = txn
	}
	return out, rows.Err()
}

func (r *syncReader) Events(ids []id.EventID) ([]*room.Event, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	return collectEvents(r.tx.Query(r.ctx, `SELECT `+eventColumns+` FROM events e JOIN rooms r USING (room_id)
		WHERE e.event_id = ANY($1)`, ids))
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

func (r *syncReader) GlobalAccountData(user id.UserID, typ string) (json.RawMessage, error) {
	var content []byte
	err := r.tx.QueryRow(r.ctx, `SELECT content FROM account_data WHERE user_id = $1 AND room_id = '' AND type = $2`, user, typ).Scan(&content)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading account data %s: %w", typ, err)
	}
	return content, nil
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
