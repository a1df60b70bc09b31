package storage

import (
	"context"
	"fmt"

	"maunium.net/go/mautrix/id"

	"github.com/weftchat/weft/syncapi"
)

// Unread counts and GET /notifications, read from event_push_actions (one
// row per local user and event their push rules said notify for, written
// with the event) against what the user has read.
//
// What a user has read in a room, per notification: the furthest (by the
// event's stream position) of their m.read and m.read.private receipts
// that apply to the notification's thread (an unthreaded receipt, thread
// '', applies to every thread; a threaded one only to its own), their own
// newest event in the room that is not a state event (sending marks
// everything before it read; a new display name does not), and the start
// of their membership (joining reads what came before, the invite
// included).
//
// The receipts table keeps only each receipt's newest value, so the
// receipts used are the stored ones even when they were written after the
// position being read: counts can show a receipt slightly early, never a
// notification it cleared as unread again. Push rows and events at or
// below a committed position never change, so a count read at position
// `to` outside any snapshot is as consistent as one read inside it.

// unreadSQL answers, for each requested (user, room) pair: one row with a
// NULL thread carrying the position of the newest change that can have
// moved the counts (the newest of: the user's receipts in the room, their
// newest event there at or below $3, and their unread push rows at or
// below $3; 0 if none), and one row per thread with unread notifications.
// A push row that is read was read by a receipt or an own event after it,
// so leaving read rows out of that maximum changes nothing about "did the
// counts move after position p", and it spares a walk over every row the
// user ever had in the room. Per pair the lookups are index scans
// (receipts' primary key, events_room_sender, the keys of the tables
// behind the view event_push_actions) over the rows above the read
// position.
const unreadSQL = `
WITH q(user_id, room_id) AS (SELECT DISTINCT u, r FROM unnest($1::text[], $2::text[]) AS x(u, r)),
rd AS (
	SELECT rc.user_id, rc.room_id, rc.thread_id, max(e.stream_pos) AS upto, max(rc.stream_pos) AS changed
	FROM q JOIN receipts rc ON rc.room_id = q.room_id AND rc.user_id = q.user_id
	JOIN events e ON e.event_id = rc.event_id
	WHERE rc.receipt_type IN ('m.read', 'm.read.private')
	GROUP BY rc.user_id, rc.room_id, rc.thread_id
),
rdu AS (
	SELECT user_id, room_id, max(upto) FILTER (WHERE thread_id = '') AS unthreaded, max(changed) AS changed
	FROM rd GROUP BY user_id, room_id
),
base AS (
	SELECT q.user_id, q.room_id, o.pos AS own, greatest(o.pos, r.unthreaded) AS upto, r.changed AS receipts
	FROM q LEFT JOIN rdu r ON r.user_id = q.user_id AND r.room_id = q.room_id
	CROSS JOIN LATERAL (SELECT greatest(max(o.stream_pos), (SELECT m.member_since FROM current_state m
			WHERE m.room_id = q.room_id AND m.type = 'm.room.member' AND m.state_key = q.user_id AND m.member_since <= $3)) AS pos
		FROM events o WHERE o.room_id = q.room_id AND o.sender = q.user_id AND o.stream_pos <= $3 AND o.state_key IS NULL) o
),
unread AS (
	SELECT b.user_id, b.room_id, a.thread_id, count(*) AS n, count(*) FILTER (WHERE a.highlight) AS h, max(a.stream_pos) AS newest
	FROM base b CROSS JOIN LATERAL (
		-- The pair's rows of the view event_push_actions, spelled out so
		-- that the user's member row is looked up once per pair, not once
		-- per push row (as the view's join does): per unread event this
		-- leaves one summary row and one exceptions key probe. Keep it in
		-- step with the view's definition (migrations/0012_push.sql).
		SELECT s.thread_id, s.highlight, s.stream_pos
		FROM current_state m JOIN event_push_summary s ON s.room_id = m.room_id
			AND s.stream_pos > greatest(m.member_since, coalesce(b.upto, 0)) AND s.stream_pos <= $3 AND s.sender <> m.state_key
		WHERE m.room_id = b.room_id AND m.type = 'm.room.member' AND m.state_key = b.user_id
			AND m.membership = 'join' AND m.member_since IS NOT NULL
			AND NOT EXISTS (SELECT 1 FROM event_push_exceptions x
				WHERE x.user_id = b.user_id AND x.room_id = b.room_id AND x.stream_pos = s.stream_pos)
		UNION ALL
		SELECT x.thread_id, x.highlight, x.stream_pos FROM event_push_exceptions x
		WHERE x.user_id = b.user_id AND x.room_id = b.room_id AND x.notify AND x.stream_pos <= $3 AND x.stream_pos > coalesce(b.upto, 0)
	) a
	LEFT JOIN rd t ON t.user_id = b.user_id AND t.room_id = b.room_id AND t.thread_id = a.thread_id
	WHERE a.stream_pos > coalesce(t.upto, 0)
	GROUP BY b.user_id, b.room_id, a.thread_id
),
newest AS (SELECT user_id, room_id, max(newest) AS pos FROM unread GROUP BY user_id, room_id)
SELECT b.user_id, b.room_id, NULL::text, 0::bigint, 0::bigint, coalesce(greatest(b.own, b.receipts, n.pos), 0)
FROM base b LEFT JOIN newest n ON n.user_id = b.user_id AND n.room_id = b.room_id
UNION ALL
SELECT user_id, room_id, thread_id, n, h, 0 FROM unread`

func unread(ctx context.Context, q querier, keys []syncapi.UnreadKey, to int64) (map[syncapi.UnreadKey]*syncapi.RoomUnread, error) {
	out := make(map[syncapi.UnreadKey]*syncapi.RoomUnread, len(keys))
	if len(keys) == 0 {
		return out, nil
	}
	users := make([]string, len(keys))
	rooms := make([]string, len(keys))
	for i, k := range keys {
		users[i], rooms[i] = string(k.User), string(k.Room)
	}
	rows, err := q.Query(ctx, unreadSQL, users, rooms, to)
	if err != nil {
		return nil, fmt.Errorf("reading unread counts: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var k syncapi.UnreadKey
		var thread *string
		var n, h, changed int64
		if err := rows.Scan(&k.User, &k.Room, &thread, &n, &h, &changed); err != nil {
			return nil, fmt.Errorf("reading unread counts: %w", err)
		}
		ru := out[k]
		if ru == nil {
			ru = &syncapi.RoomUnread{}
			out[k] = ru
		}
		if thread == nil {
			ru.Changed = changed
			continue
		}
		if ru.Threads == nil {
			ru.Threads = map[string]syncapi.Unread{}
		}
		ru.Threads[*thread] = syncapi.Unread{NotificationCount: int(n), HighlightCount: int(h)}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("reading unread counts: %w", err)
	}
	return out, nil
}

// Unread reads unread counts at position to, outside any snapshot (see
// above for why that is consistent).
func (s *Sync) Unread(ctx context.Context, keys []syncapi.UnreadKey, to int64) (map[syncapi.UnreadKey]*syncapi.RoomUnread, error) {
	return unread(ctx, s.db.pool, keys, to)
}

// Unread is Sync.Unread inside the response's snapshot: a response that
// already holds a connection does not take a second one.
func (r *syncReader) Unread(keys []syncapi.UnreadKey, to int64) (map[syncapi.UnreadKey]*syncapi.RoomUnread, error) {
	return unread(r.ctx, r.tx, keys, to)
}

// unreadEventsSQL lists a room's events in ($2, $3], oldest first, up to
// $4, with what each did to the members' unread counts: the summary row
// (NULL thread: none), the exceptions as parallel arrays (NULL: none),
// and, for a member event that changed its user's membership, that user
// and the new membership. "Changed" is decided against the user's previous
// member event in the room by stream position, which is what
// current_state.member_since was compared with when the event was
// appended (storage/rooms.go): rooms append linearly, so the previous
// member event by position is the membership the event replaced. The
// events are read through events_room_pos, the outcomes by their
// primary key and event_push_exceptions_room_pos; rejected events are
// not left out, as unreadSQL does not leave them out of own events.
const unreadEventsSQL = `
SELECT e.stream_pos, e.sender, e.state_key IS NOT NULL,
	CASE WHEN e.type = 'm.room.member' AND e.state_key IS NOT NULL
		AND (p.membership IS NULL OR p.membership <> coalesce(e.pdu->'content'->>'membership', ''))
		THEN e.state_key END,
	coalesce(e.pdu->'content'->>'membership', ''),
	s.thread_id, coalesce(s.highlight, false),
	x.users, x.notify, x.threads, x.highlights
FROM events e
LEFT JOIN LATERAL (
	SELECT coalesce(pe.pdu->'content'->>'membership', '') AS membership FROM events pe
	WHERE e.type = 'm.room.member' AND pe.type = 'm.room.member' AND pe.state_key = e.state_key
	  AND pe.room_id = e.room_id AND pe.stream_pos < e.stream_pos
	ORDER BY pe.stream_pos DESC LIMIT 1
) p ON true
LEFT JOIN event_push_summary s ON s.room_id = e.room_id AND s.stream_pos = e.stream_pos
LEFT JOIN LATERAL (
	SELECT array_agg(x.user_id) AS users, array_agg(x.notify) AS notify, array_agg(x.thread_id) AS threads, array_agg(x.highlight) AS highlights
	FROM event_push_exceptions x WHERE x.room_id = e.room_id AND x.stream_pos = e.stream_pos
) x ON true
WHERE e.room_id = $1 AND e.stream_pos > $2 AND e.stream_pos <= $3
ORDER BY e.stream_pos
LIMIT $4`

func unreadEvents(ctx context.Context, q querier, roomID id.RoomID, after, to int64, limit int) ([]syncapi.UnreadEvent, error) {
	rows, err := q.Query(ctx, unreadEventsSQL, roomID, after, to, limit)
	if err != nil {
		return nil, fmt.Errorf("reading the unread outcomes of %s's events: %w", roomID, err)
	}
	defer rows.Close()
	var out []syncapi.UnreadEvent
	for rows.Next() {
		var ev syncapi.UnreadEvent
		var member *string
		var thread *string
		var highlight bool
		var users, threads []string
		var notify, highlights []bool
		if err := rows.Scan(&ev.Pos, &ev.Sender, &ev.State, &member, &ev.Membership, &thread, &highlight,
			&users, &notify, &threads, &highlights); err != nil {
			return nil, fmt.Errorf("reading the unread outcomes of %s's events: %w", roomID, err)
		}
		if member != nil {
			ev.Member = id.UserID(*member)
		} else {
			ev.Membership = ""
		}
		if thread != nil {
			ev.Summary = &syncapi.UnreadOutcome{Notify: true, Thread: *thread, Highlight: highlight}
		}
		if len(users) > 0 {
			if len(notify) != len(users) || len(threads) != len(users) || len(highlights) != len(users) {
				return nil, fmt.Errorf("reading the unread outcomes of %s's events: exception arrays of different lengths", roomID)
			}
			ev.Exceptions = make(map[id.UserID]syncapi.UnreadOutcome, len(users))
			for i, u := range users {
				ev.Exceptions[id.UserID(u)] = syncapi.UnreadOutcome{Notify: notify[i], Thread: threads[i], Highlight: highlights[i]}
			}
		}
		out = append(out, ev)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("reading the unread outcomes of %s's events: %w", roomID, err)
	}
	return out, nil
}

// UnreadEvents lists up to limit of the room's events in (after, to],
// oldest first, with their push outcomes, outside any snapshot: events
// and their outcomes at or below a committed position never change, and
// are written in one transaction.
func (s *Sync) UnreadEvents(ctx context.Context, roomID id.RoomID, after, to int64, limit int) ([]syncapi.UnreadEvent, error) {
	return unreadEvents(ctx, s.db.pool, roomID, after, to, limit)
}

// UnreadEvents is Sync.UnreadEvents inside the response's snapshot.
func (r *syncReader) UnreadEvents(roomID id.RoomID, after, to int64, limit int) ([]syncapi.UnreadEvent, error) {
	return unreadEvents(r.ctx, r.tx, roomID, after, to, limit)
}

// Notifications lists the user's notifications below q.Before (0: from
// the newest), newest first, up to q.Limit, with whether each is read now.
// The walk uses event_push_actions_user_pos; with HighlightOnly it skips
// the rows that are not highlights.
func (s *Sync) Notifications(ctx context.Context, q syncapi.NotificationsQuery) ([]syncapi.StoredNotification, error) {
	before := q.Before
	if before <= 0 {
		before = 1<<63 - 1
	}
	rows, err := s.db.pool.Query(ctx, `SELECT a.stream_pos, a.actions::text, a.ts, a.highlight,
			a.stream_pos <= greatest(
				(SELECT max(re.stream_pos) FROM receipts rc JOIN events re ON re.event_id = rc.event_id
					WHERE rc.room_id = a.room_id AND rc.user_id = a.user_id
					  AND rc.receipt_type IN ('m.read', 'm.read.private') AND rc.thread_id IN ('', a.thread_id)),
				(SELECT o.stream_pos FROM events o WHERE o.room_id = a.room_id AND o.sender = a.user_id AND o.state_key IS NULL
					ORDER BY o.stream_pos DESC LIMIT 1),
				(SELECT m.member_since FROM current_state m
					WHERE m.room_id = a.room_id AND m.type = 'm.room.member' AND m.state_key = a.user_id),
				0),
			`+eventColumns+`
		FROM event_push_actions a JOIN events e ON e.event_id = a.event_id JOIN rooms r ON r.room_id = e.room_id
		WHERE a.user_id = $1 AND a.stream_pos < $2 AND (a.highlight OR NOT $3)
		ORDER BY a.stream_pos DESC LIMIT $4`, q.User, before, q.HighlightOnly, q.Limit)
	if err != nil {
		return nil, fmt.Errorf("reading notifications: %w", err)
	}
	defer rows.Close()
	var out []syncapi.StoredNotification
	for rows.Next() {
		var n syncapi.StoredNotification
		var actions string
		ev, err := scanEventWith(rows, &n.Pos, &actions, &n.TS, &n.Highlight, &n.Read)
		if err != nil {
			return nil, fmt.Errorf("reading notifications: %w", err)
		}
		n.Actions = []byte(actions)
		n.Event = ev
		out = append(out, n)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("reading notifications: %w", err)
	}
	return out, nil
}
