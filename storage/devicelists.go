package storage

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
	"maunium.net/go/mautrix/id"

	"github.com/weftchat/weft/room"
	"github.com/weftchat/weft/syncapi"
)

// recordDeviceListChange gives a change to user's devices or keys a stream
// position, inside a stream transaction (inStreamTx with
// syncapi.KindDeviceLists): call it in the same transaction as the change,
// so that a reader sees both or neither.
func recordDeviceListChange(ctx context.Context, tx pgx.Tx, next func() (int64, error), user id.UserID) error {
	pos, err := next()
	if err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, `INSERT INTO device_list_changes (stream_pos, user_id) VALUES ($1, $2)`, pos, user); err != nil {
		return fmt.Errorf("recording a device list change of %s: %w", user, err)
	}
	return nil
}

func (r *syncReader) DeviceListChanges(since, to int64) ([]id.UserID, error) {
	rows, err := r.tx.Query(r.ctx, `SELECT DISTINCT user_id FROM device_list_changes WHERE stream_pos > $1 AND stream_pos <= $2`, since, to)
	if err != nil {
		return nil, fmt.Errorf("reading device list changes: %w", err)
	}
	return pgx.CollectRows(rows, pgx.RowTo[id.UserID])
}

// SharingEvents reads, in one query, each window's member events and
// m.room.encryption events, oldest first.
func (r *syncReader) SharingEvents(reqs []syncapi.TimelineReq) (map[syncapi.TimelineReq][]*room.Event, error) {
	rooms := make([]string, len(reqs))
	froms := make([]int64, len(reqs))
	tos := make([]int64, len(reqs))
	for i, q := range reqs {
		rooms[i], froms[i], tos[i] = string(q.Room), q.From, q.To
	}
	rows, err := r.tx.Query(r.ctx, `SELECT q.i, `+eventColumns+`
		FROM unnest($1::text[], $2::bigint[], $3::bigint[]) WITH ORDINALITY AS q(room_id, from_pos, to_pos, i)
		JOIN events e ON e.room_id = q.room_id AND e.stream_pos > q.from_pos AND e.stream_pos <= q.to_pos
		JOIN rooms r ON r.room_id = e.room_id
		WHERE NOT e.rejected AND (e.type = 'm.room.member' AND e.state_key IS NOT NULL OR e.type = 'm.room.encryption' AND e.state_key = '')
		ORDER BY q.i, e.stream_pos`, rooms, froms, tos)
	if err != nil {
		return nil, fmt.Errorf("reading member events: %w", err)
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

func (r *syncReader) EncryptedRooms(rooms []id.RoomID) ([]id.RoomID, error) {
	rows, err := r.tx.Query(r.ctx, `SELECT room_id FROM current_state
		WHERE room_id = ANY($1) AND type = 'm.room.encryption' AND state_key = ''`, rooms)
	if err != nil {
		return nil, fmt.Errorf("reading encrypted rooms: %w", err)
	}
	return pgx.CollectRows(rows, pgx.RowTo[id.RoomID])
}

func (r *syncReader) JoinedMembers(rooms []id.RoomID) (map[id.RoomID][]id.UserID, error) {
	rows, err := r.tx.Query(r.ctx, `SELECT room_id, state_key FROM current_state
		WHERE room_id = ANY($1) AND type = 'm.room.member' AND membership = 'join'`, rooms)
	if err != nil {
		return nil, fmt.Errorf("reading joined members: %w", err)
	}
	defer rows.Close()
	out := make(map[id.RoomID][]id.UserID, len(rooms))
	for rows.Next() {
		var rid id.RoomID
		var u id.UserID
		if err := rows.Scan(&rid, &u); err != nil {
			return nil, err
		}
		out[rid] = append(out[rid], u)
	}
	return out, rows.Err()
}
