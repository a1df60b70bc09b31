package storage

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"maunium.net/go/mautrix/id"

	"github.com/weftchat/weft/account"
	"github.com/weftchat/weft/syncapi"
)

var _ account.PresenceStore = (*Accounts)(nil)

// Row locks on presence: SetPresence locks one row, after the stream lock;
// TouchPresence and ExpirePresence lock many, always in user_id order
// (ORDER BY ... FOR UPDATE), so two of them (two processes' timers, a
// timer and a /sync) wait for each other instead of deadlocking.

func (a *Accounts) Presence(ctx context.Context, user id.UserID) (*account.PresenceRecord, error) {
	var p account.PresenceRecord
	err := a.db.pool.QueryRow(ctx, `SELECT state, status_msg, last_active_ts, last_sync_ts FROM presence WHERE user_id = $1`, user).
		Scan(&p.State, &p.StatusMsg, &p.LastActiveTS, &p.LastSyncTS)
	if err != nil {
		return nil, notFound(err)
	}
	return &p, nil
}

func (a *Accounts) SharesRoom(ctx context.Context, x, y id.UserID) (bool, error) {
	var shares bool
	err := a.db.pool.QueryRow(ctx, `SELECT EXISTS (
		SELECT 1 FROM current_state mine JOIN current_state theirs ON theirs.room_id = mine.room_id
		WHERE mine.type = 'm.room.member' AND mine.state_key = $1 AND mine.membership = 'join'
		  AND theirs.type = 'm.room.member' AND theirs.state_key = $2 AND theirs.membership = 'join')`,
		string(x), string(y)).Scan(&shares)
	return shares, err
}

// joinedRoomsOf lists the rooms any of users is joined to: a presence
// change wakes the /syncs listening on them. Read before the write's
// transaction; a join racing it is woken by its own member event.
func (a *Accounts) joinedRoomsOf(ctx context.Context, users []string) ([]id.RoomID, error) {
	rows, err := a.db.pool.Query(ctx, `SELECT DISTINCT room_id FROM current_state
		WHERE type = 'm.room.member' AND membership = 'join' AND state_key = ANY($1)`, users)
	if err != nil {
		return nil, fmt.Errorf("listing joined rooms: %w", err)
	}
	return pgx.CollectRows(rows, pgx.RowTo[id.RoomID])
}

func (a *Accounts) SetPresence(ctx context.Context, u account.PresenceUpdate) error {
	rooms, err := a.joinedRoomsOf(ctx, []string{string(u.UserID)})
	if err != nil {
		return err
	}
	return a.db.inStreamTx(ctx, syncapi.KindPresence, rooms, []id.UserID{u.UserID}, func(tx pgx.Tx, next func() (int64, error)) error {
		pos, err := next()
		if err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `INSERT INTO presence (user_id, state, status_msg, last_active_ts, last_sync_ts, stream_pos)
			VALUES ($1, $2, $3, $4, $4, $5)
			ON CONFLICT (user_id) DO UPDATE SET
				state = EXCLUDED.state,
				status_msg = CASE WHEN $6 THEN EXCLUDED.status_msg ELSE presence.status_msg END,
				last_active_ts = CASE WHEN $7 THEN EXCLUDED.last_active_ts ELSE presence.last_active_ts END,
				last_sync_ts = greatest(presence.last_sync_ts, EXCLUDED.last_sync_ts),
				stream_pos = EXCLUDED.stream_pos`,
			u.UserID, u.State, u.StatusMsg, u.Now, pos, u.SetStatusMsg, u.BumpActive)
		if err != nil {
			return fmt.Errorf("storing presence: %w", err)
		}
		return nil
	})
}

func (a *Accounts) TouchPresence(ctx context.Context, active, others []id.UserID, now, staleBefore int64) error {
	act := userStrings(active)
	_, err := a.db.pool.Exec(ctx, `UPDATE presence p SET last_sync_ts = greatest(p.last_sync_ts, $3),
			last_active_ts = CASE WHEN p.state = 'online' AND p.user_id = ANY($1) THEN greatest(p.last_active_ts, $3) ELSE p.last_active_ts END
		FROM (SELECT user_id FROM presence
			WHERE (user_id = ANY($1) OR user_id = ANY($2))
			  AND (last_sync_ts < $4 OR (state = 'online' AND user_id = ANY($1) AND last_active_ts < $4))
			ORDER BY user_id FOR UPDATE) stale
		WHERE p.user_id = stale.user_id`, act, userStrings(others), now, staleBefore)
	return err
}

func (a *Accounts) ExpirePresence(ctx context.Context, idleBefore, offlineBefore int64, limit int) (int, error) {
	const expired = `(state IN ('online', 'unavailable') AND last_sync_ts < $2 OR state = 'online' AND last_active_ts < $1)`
	rows, err := a.db.pool.Query(ctx, `SELECT user_id FROM presence WHERE `+expired+` ORDER BY user_id LIMIT $3`,
		idleBefore, offlineBefore, limit)
	if err != nil {
		return 0, fmt.Errorf("finding idle users: %w", err)
	}
	users, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil || len(users) == 0 {
		return 0, err
	}
	rooms, err := a.joinedRoomsOf(ctx, users)
	if err != nil {
		return 0, err
	}
	ids := make([]id.UserID, len(users))
	for i, u := range users {
		ids[i] = id.UserID(u)
	}
	// The candidates are checked again under their row locks: one that
	// synced meanwhile is left alone (its rooms are woken for nothing).
	// All changes share one position: they commit together.
	err = a.db.inStreamTx(ctx, syncapi.KindPresence, rooms, ids, func(tx pgx.Tx, next func() (int64, error)) error {
		pos, err := next()
		if err != nil {
			return err
		}
		tag, err := tx.Exec(ctx, `UPDATE presence p
			SET state = CASE WHEN p.last_sync_ts < $2 THEN 'offline' ELSE 'unavailable' END, stream_pos = $4
			FROM (SELECT user_id FROM presence WHERE user_id = ANY($3) AND `+expired+` ORDER BY user_id FOR UPDATE) due
			WHERE p.user_id = due.user_id`, idleBefore, offlineBefore, users, pos)
		if err != nil {
			return fmt.Errorf("expiring presence: %w", err)
		}
		if tag.RowsAffected() == 0 {
			return errUnchanged
		}
		return nil
	})
	if err != nil && !errors.Is(err, errUnchanged) {
		return 0, err
	}
	return len(users), nil
}
