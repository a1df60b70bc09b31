package storage

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"

	"github.com/jackc/pgx/v5"
	"maunium.net/go/mautrix/id"

	"github.com/weftchat/weft/push"
	"github.com/weftchat/weft/syncapi"
)

// Pushers stores HTTP pushers and reads what their delivery needs: the
// notifications after each pusher's cursor, the event they are about and
// the user's unread counts. It implements push.PusherStore and
// push.DeliveryStore.
type Pushers struct{ db *DB }

// Pushers returns the pushers store.
func (db *DB) Pushers() *Pushers { return &Pushers{db: db} }

const pusherColumns = `user_id, app_id, pushkey, device_id, kind, app_display_name, device_display_name,
	profile_tag, lang, data, pushkey_ts, last_pos, COALESCE(failing_since, 0)`

func collectPushers(rows pgx.Rows, err error) ([]push.Pusher, error) {
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (push.Pusher, error) {
		var p push.Pusher
		var data []byte
		err := row.Scan(&p.UserID, &p.AppID, &p.PushKey, &p.DeviceID, &p.Kind, &p.AppDisplayName, &p.DeviceDisplayName,
			&p.ProfileTag, &p.Lang, &data, &p.PushKeyTS, &p.LastPos, &p.FailingSince)
		p.Data = data
		return p, err
	})
}

// Pushers lists the user's pushers, ordered by app ID and pushkey.
func (s *Pushers) Pushers(ctx context.Context, user id.UserID) ([]push.Pusher, error) {
	ps, err := collectPushers(s.db.pool.Query(ctx, `SELECT `+pusherColumns+` FROM pushers
		WHERE user_id = $1 ORDER BY app_id, pushkey`, user))
	if err != nil {
		return nil, fmt.Errorf("reading pushers of %s: %w", user, err)
	}
	return ps, nil
}

// SetPusher creates or replaces a pusher (push.PusherStore).
//
// A new pusher's cursor is the stream sequence's last value: positions
// taken by transactions still in flight are below it, so notifications
// committed at the very moment the pusher is created may not be pushed to
// it. Nothing from before the pusher existed ever is.
func (s *Pushers) SetPusher(ctx context.Context, p push.Pusher, exclusive bool) error {
	err := s.db.inTx(ctx, pgx.TxOptions{}, func(tx pgx.Tx) error {
		if exclusive {
			if _, err := tx.Exec(ctx, `DELETE FROM pushers WHERE app_id = $1 AND pushkey = $2 AND user_id <> $3`,
				p.AppID, p.PushKey, p.UserID); err != nil {
				return fmt.Errorf("deleting other users' pushers: %w", err)
			}
		}
		_, err := tx.Exec(ctx, `
			INSERT INTO pushers (user_id, app_id, pushkey, device_id, kind, app_display_name, device_display_name,
				profile_tag, lang, data, pushkey_ts, last_pos)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11,
				(SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM stream_pos_seq))
			ON CONFLICT (user_id, app_id, pushkey) DO UPDATE SET
				device_id = EXCLUDED.device_id, kind = EXCLUDED.kind,
				app_display_name = EXCLUDED.app_display_name, device_display_name = EXCLUDED.device_display_name,
				profile_tag = EXCLUDED.profile_tag, lang = EXCLUDED.lang, data = EXCLUDED.data,
				pushkey_ts = EXCLUDED.pushkey_ts, failing_since = NULL`,
			p.UserID, p.AppID, p.PushKey, p.DeviceID, p.Kind, p.AppDisplayName, p.DeviceDisplayName,
			p.ProfileTag, p.Lang, string(p.Data), p.PushKeyTS)
		if err != nil {
			return fmt.Errorf("writing the pusher: %w", err)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("setting pusher of %s: %w", p.UserID, err)
	}
	return nil
}

// DeletePusher deletes the user's pusher, if it exists.
func (s *Pushers) DeletePusher(ctx context.Context, user id.UserID, appID, pushKey string) error {
	if _, err := s.db.pool.Exec(ctx, `DELETE FROM pushers WHERE user_id = $1 AND app_id = $2 AND pushkey = $3`,
		user, appID, pushKey); err != nil {
		return fmt.Errorf("deleting pusher of %s: %w", user, err)
	}
	return nil
}

// PendingPushers lists the pushers with notifications after their cursor.
// event_push_actions is a view over the rooms' summary rows and the
// members' own rows: LATERAL ... LIMIT 1 makes it a probe per pusher (the
// user's joined rooms, then each room's summary key range); an EXISTS
// would let the planner hash the whole view instead, which is every
// notification of every user. Costs a probe per room of every pusher's
// user: for the periodic sweep, not for every commit.
func (s *Pushers) PendingPushers(ctx context.Context) ([]push.Pusher, error) {
	ps, err := collectPushers(s.db.pool.Query(ctx, `SELECT `+pusherColumns+` FROM pushers p,
		LATERAL (SELECT 1 FROM event_push_actions a
			WHERE a.user_id = p.user_id AND a.stream_pos > p.last_pos LIMIT 1) waiting
		ORDER BY user_id, app_id, pushkey`))
	if err != nil {
		return nil, fmt.Errorf("finding pushers with notifications: %w", err)
	}
	return ps, nil
}

// PendingPushersIn lists the pushers with notifications after their
// cursor in rooms, among those of the users joined or invited to rooms
// and of users: what a commit of events in rooms can have written. Each
// candidate pusher probes the view for (its user, room) pairs only: the
// user's rooms among rooms (current_state_member), every one of rooms for
// the users named (an invitee who rejected already has left).
func (s *Pushers) PendingPushersIn(ctx context.Context, rooms []id.RoomID, users []id.UserID) ([]push.Pusher, error) {
	ps, err := collectPushers(s.db.pool.Query(ctx, `SELECT `+pusherColumns+` FROM pushers p
		WHERE p.user_id IN (
			SELECT m.state_key FROM current_state m
			WHERE m.room_id = ANY($1) AND m.type = 'm.room.member' AND m.membership IN ('join', 'invite')
			UNION SELECT unnest($2::text[]))
		AND EXISTS (
			SELECT 1 FROM (
				SELECT m.room_id FROM current_state m
				WHERE m.state_key = p.user_id AND m.type = 'm.room.member' AND m.membership IN ('join', 'invite')
				AND m.room_id = ANY($1)
				UNION ALL SELECT r FROM unnest($1::text[]) r WHERE p.user_id = ANY($2)
			) r CROSS JOIN LATERAL (SELECT 1 FROM event_push_actions a
				WHERE a.user_id = p.user_id AND a.room_id = r.room_id AND a.stream_pos > p.last_pos LIMIT 1) waiting)
		ORDER BY user_id, app_id, pushkey`, rooms, users))
	if err != nil {
		return nil, fmt.Errorf("finding pushers with notifications in %d rooms: %w", len(rooms), err)
	}
	return ps, nil
}

// NotificationsAfter lists the user's notifications after the position,
// oldest first. Rows commit in stream order (the stream lock), so what is
// visible after a position is always a gapless run: a row missing now
// can never appear later below one already returned.
func (s *Pushers) NotificationsAfter(ctx context.Context, user id.UserID, after int64, limit int) ([]push.PendingNotification, error) {
	rows, err := s.db.pool.Query(ctx, `
		SELECT a.stream_pos, a.room_id, a.event_id, COALESCE(e.type, ''), a.highlight, a.actions
		FROM event_push_actions a LEFT JOIN events e ON e.event_id = a.event_id
		WHERE a.user_id = $1 AND a.stream_pos > $2
		ORDER BY a.stream_pos LIMIT $3`, user, after, limit)
	if err != nil {
		return nil, fmt.Errorf("reading notifications of %s: %w", user, err)
	}
	ns, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (push.PendingNotification, error) {
		var n push.PendingNotification
		var actions []byte
		err := row.Scan(&n.StreamPos, &n.RoomID, &n.EventID, &n.EventType, &n.Highlight, &actions)
		n.Actions = actions
		return n, err
	})
	if err != nil {
		return nil, fmt.Errorf("reading notifications of %s: %w", user, err)
	}
	return ns, nil
}

// PushEvent describes an event for the full notification format, with
// its room's current name, canonical alias and sender's display name.
func (s *Pushers) PushEvent(ctx context.Context, eventID id.EventID) (push.PushEvent, bool, error) {
	var ev push.PushEvent
	var content []byte
	var display, name, alias *string
	err := s.db.pool.QueryRow(ctx, `
		SELECT e.type, e.sender, e.state_key,
			CASE WHEN e.redacted_by IS NULL THEN e.pdu->'content' END,
			(SELECT m.pdu->'content'->>'displayname' FROM current_state cs JOIN events m ON m.event_id = cs.event_id
				WHERE cs.room_id = e.room_id AND cs.type = 'm.room.member' AND cs.state_key = e.sender AND m.redacted_by IS NULL),
			(SELECT n.pdu->'content'->>'name' FROM current_state cs JOIN events n ON n.event_id = cs.event_id
				WHERE cs.room_id = e.room_id AND cs.type = 'm.room.name' AND cs.state_key = '' AND n.redacted_by IS NULL),
			(SELECT c.pdu->'content'->>'alias' FROM current_state cs JOIN events c ON c.event_id = cs.event_id
				WHERE cs.room_id = e.room_id AND cs.type = 'm.room.canonical_alias' AND cs.state_key = '' AND c.redacted_by IS NULL)
		FROM events e WHERE e.event_id = $1`, eventID).
		Scan(&ev.Type, &ev.Sender, &ev.StateKey, &content, &display, &name, &alias)
	if errors.Is(err, pgx.ErrNoRows) {
		return push.PushEvent{}, false, nil
	}
	if err != nil {
		return push.PushEvent{}, false, fmt.Errorf("reading event %s for a push: %w", eventID, err)
	}
	if len(content) > 0 && string(content) != "null" {
		// json (not jsonb) keeps the PDU's bytes, whitespace included.
		var buf bytes.Buffer
		if err := json.Compact(&buf, content); err != nil {
			return push.PushEvent{}, false, fmt.Errorf("event %s content: %w", eventID, err)
		}
		ev.Content = buf.Bytes()
	}
	if display != nil {
		ev.SenderDisplayName = *display
	}
	if name != nil {
		ev.RoomName = *name
	}
	if alias != nil {
		ev.RoomAlias = id.RoomAlias(*alias)
	}
	return ev, true, nil
}

// UnreadCount is the user's number of unread notifications over the rooms
// they are joined to (push gateway counts: "across all of the rooms they
// are a member of"), by the same reading rule as /sync's counts (unread,
// storage/notifications.go).
func (s *Pushers) UnreadCount(ctx context.Context, user id.UserID) (int, error) {
	rows, err := s.db.pool.Query(ctx, `SELECT room_id FROM current_state
		WHERE type = 'm.room.member' AND state_key = $1 AND membership = 'join'`, user)
	if err != nil {
		return 0, fmt.Errorf("listing the joined rooms of %s: %w", user, err)
	}
	rooms, err := pgx.CollectRows(rows, pgx.RowTo[id.RoomID])
	if err != nil {
		return 0, fmt.Errorf("listing the joined rooms of %s: %w", user, err)
	}
	keys := make([]syncapi.UnreadKey, len(rooms))
	for i, r := range rooms {
		keys[i] = syncapi.UnreadKey{User: user, Room: r}
	}
	counts, err := unread(ctx, s.db.pool, keys, math.MaxInt64)
	if err != nil {
		return 0, fmt.Errorf("counting unread notifications of %s: %w", user, err)
	}
	n := 0
	for _, c := range counts {
		for _, t := range c.Threads {
			n += t.NotificationCount
		}
	}
	return n, nil
}

// AdvancePusher moves the pusher's cursor forward to pos and clears its
// failing state. A pusher deleted meanwhile is not recreated.
func (s *Pushers) AdvancePusher(ctx context.Context, user id.UserID, appID, pushKey string, pos int64) error {
	if _, err := s.db.pool.Exec(ctx, `UPDATE pushers SET last_pos = GREATEST(last_pos, $4), failing_since = NULL
		WHERE user_id = $1 AND app_id = $2 AND pushkey = $3`, user, appID, pushKey, pos); err != nil {
		return fmt.Errorf("advancing pusher of %s: %w", user, err)
	}
	return nil
}

// MarkPusherFailing records the first failure of the pusher's current
// notification; a failure already recorded is kept.
func (s *Pushers) MarkPusherFailing(ctx context.Context, user id.UserID, appID, pushKey string, since int64) error {
	if _, err := s.db.pool.Exec(ctx, `UPDATE pushers SET failing_since = COALESCE(failing_since, $4)
		WHERE user_id = $1 AND app_id = $2 AND pushkey = $3`, user, appID, pushKey, since); err != nil {
		return fmt.Errorf("recording pusher failure of %s: %w", user, err)
	}
	return nil
}

// The push rules store keeps pushers too: push.Service finds its
// push.PusherStore by type assertion on it.

// Pushers: see Pushers.Pushers.
func (p *PushRules) Pushers(ctx context.Context, user id.UserID) ([]push.Pusher, error) {
	return p.db.Pushers().Pushers(ctx, user)
}

// SetPusher: see Pushers.SetPusher.
func (p *PushRules) SetPusher(ctx context.Context, ps push.Pusher, exclusive bool) error {
	return p.db.Pushers().SetPusher(ctx, ps, exclusive)
}

// DeletePusher: see Pushers.DeletePusher.
func (p *PushRules) DeletePusher(ctx context.Context, user id.UserID, appID, pushKey string) error {
	return p.db.Pushers().DeletePusher(ctx, user, appID, pushKey)
}

var (
	_ push.PusherStore   = (*Pushers)(nil)
	_ push.PusherStore   = (*PushRules)(nil)
	_ push.DeliveryStore = (*Pushers)(nil)
)
