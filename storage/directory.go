package storage

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"maunium.net/go/mautrix/id"

	"github.com/weftchat/weft/room"
)

// The room directory: aliases, the published room list and content reports.

var (
	_ room.DirectoryStore = (*Rooms)(nil)
	_ room.DirectoryTx    = (*roomTx)(nil)
)

func (t *roomTx) Alias(alias id.RoomAlias) (id.RoomID, id.UserID, error) {
	var rid id.RoomID
	var creator id.UserID
	err := t.tx.QueryRow(t.ctx, `SELECT room_id, creator FROM room_aliases WHERE alias = $1`, alias).Scan(&rid, &creator)
	return rid, creator, roomNotFound(err)
}

func (t *roomTx) DeleteAlias(alias id.RoomAlias) error {
	_, err := t.tx.Exec(t.ctx, `DELETE FROM room_aliases WHERE alias = $1 AND room_id = $2`, alias, t.roomID)
	return err
}

func (r *Rooms) RoomAliases(ctx context.Context, roomID id.RoomID) ([]id.RoomAlias, error) {
	rows, err := r.db.pool.Query(ctx, `SELECT alias FROM room_aliases WHERE room_id = $1 ORDER BY alias`, roomID)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[id.RoomAlias])
}

func (r *Rooms) Published(ctx context.Context, roomID id.RoomID) (bool, error) {
	var pub bool
	err := r.db.pool.QueryRow(ctx, `SELECT published FROM rooms WHERE room_id = $1`, roomID).Scan(&pub)
	return pub, roomNotFound(err)
}

// publicRoomsSQL lists the published rooms with the state the directory
// shows, read from current_state by primary key (one lookup of eight
// keys, and one count of the joined members, per published room). Rooms
// nobody can join, knock on or read without an invite are left out even if
// published. Redacted name, topic, alias, avatar and guest access count as
// absent (redaction strips them; join_rule, history_visibility and the
// create event's type survive it).
//
// $1 search term (” for none), $2 filter by type, $3 types, $4 include
// untyped rooms; publicRoomsPageSQL follows it.
const publicRoomsSQL = `
WITH pub AS (
	SELECT r.room_id,
		(SELECT count(*) FROM current_state m
			WHERE m.room_id = r.room_id AND m.type = 'm.room.member' AND m.membership = 'join')::int AS joined,
		st.name, st.topic, st.alias, st.avatar, st.join_rule, st.hv, st.guest, st.room_type
	FROM rooms r
	CROSS JOIN LATERAL (
		SELECT
			max(e.pdu->'content'->>'name') FILTER (WHERE c.type = 'm.room.name' AND e.redacted_by IS NULL) AS name,
			max(e.pdu->'content'->>'topic') FILTER (WHERE c.type = 'm.room.topic' AND e.redacted_by IS NULL) AS topic,
			max(e.pdu->'content'->>'alias') FILTER (WHERE c.type = 'm.room.canonical_alias' AND e.redacted_by IS NULL) AS alias,
			max(e.pdu->'content'->>'url') FILTER (WHERE c.type = 'm.room.avatar' AND e.redacted_by IS NULL) AS avatar,
			max(e.pdu->'content'->>'guest_access') FILTER (WHERE c.type = 'm.room.guest_access' AND e.redacted_by IS NULL) AS guest,
			max(e.pdu->'content'->>'join_rule') FILTER (WHERE c.type = 'm.room.join_rules') AS join_rule,
			max(e.pdu->'content'->>'history_visibility') FILTER (WHERE c.type = 'm.room.history_visibility') AS hv,
			max(e.pdu->'content'->>'type') FILTER (WHERE c.type = 'm.room.create') AS room_type
		FROM current_state c JOIN events e ON e.event_id = c.event_id
		WHERE c.room_id = r.room_id AND c.state_key = ''
			AND c.type IN ('m.room.name', 'm.room.topic', 'm.room.canonical_alias', 'm.room.avatar',
				'm.room.guest_access', 'm.room.join_rules', 'm.room.history_visibility', 'm.room.create')
	) st
	WHERE r.published
), listed AS (
	SELECT * FROM pub
	WHERE (coalesce(join_rule, 'invite') IN ('public', 'knock', 'knock_restricted') OR hv = 'world_readable')
		AND ($1 = '' OR strpos(lower(coalesce(name, '')), lower($1)) > 0
			OR strpos(lower(coalesce(topic, '')), lower($1)) > 0
			OR strpos(lower(coalesce(alias, '')), lower($1)) > 0)
		AND (NOT $2 OR room_type = ANY($3::text[]) OR ($4 AND room_type IS NULL))
)
`

// publicRoomsPageSQL is one page of publicRoomsSQL's rooms, after the
// cursor ($5 joined, $6 room_id; NULL for none), at most $7, with the total
// of every match; an empty page is one row of NULLs carrying the total.
// PublicRooms fills in the cursor condition and the two orders.
const publicRoomsPageSQL = `, page AS (
	SELECT * FROM listed %s %s LIMIT $7
)
SELECT t.total, p.room_id, p.joined, coalesce(p.name, ''), coalesce(p.topic, ''), coalesce(p.alias, ''),
	coalesce(p.avatar, ''), coalesce(p.join_rule, ''), coalesce(p.hv, ''), coalesce(p.guest, ''), coalesce(p.room_type, '')
FROM (SELECT count(*)::int AS total FROM listed) t LEFT JOIN page p ON true
%s`

func (r *Rooms) PublicRooms(ctx context.Context, q room.PublicRoomsQuery) ([]room.PublicRoom, int, error) {
	// Directory order is joined DESC, room_id ASC; backward pages walk it
	// in reverse from the cursor.
	// Room IDs compare bytewise (COLLATE "C"), whatever the database's
	// collation, so the order is total and the same on every server.
	cond := `WHERE $5::int IS NULL OR joined < $5 OR (joined = $5 AND room_id COLLATE "C" > $6)`
	order := `ORDER BY joined DESC, room_id COLLATE "C" ASC`
	outer := `ORDER BY p.joined DESC, p.room_id COLLATE "C" ASC`
	if q.Backward {
		cond = `WHERE $5::int IS NULL OR joined > $5 OR (joined = $5 AND room_id COLLATE "C" < $6)`
		order = `ORDER BY joined ASC, room_id COLLATE "C" DESC`
		outer = `ORDER BY p.joined ASC, p.room_id COLLATE "C" DESC`
	}
	var joined *int
	var after string
	if q.Cursor != nil {
		joined, after = &q.Cursor.Joined, string(q.Cursor.RoomID)
	}
	types := q.Types
	if types == nil {
		types = []string{}
	}
	rows, err := r.db.pool.Query(ctx, publicRoomsSQL+fmt.Sprintf(publicRoomsPageSQL, cond, order, outer),
		q.SearchTerm, q.FilterTypes, types, q.IncludeUntyped, joined, after, q.Limit)
	if err != nil {
		return nil, 0, fmt.Errorf("listing public rooms: %w", err)
	}
	defer rows.Close()
	out := []room.PublicRoom{}
	total := 0
	for rows.Next() {
		var p room.PublicRoom
		var rid *string
		var n *int
		var hv, guest string
		if err := rows.Scan(&total, &rid, &n, &p.Name, &p.Topic, &p.CanonicalAlias, &p.AvatarURL,
			&p.JoinRule, &hv, &guest, &p.RoomType); err != nil {
			return nil, 0, err
		}
		if rid == nil {
			continue // the empty page's row
		}
		p.RoomID, p.NumJoinedMembers = id.RoomID(*rid), *n
		p.WorldReadable = hv == "world_readable"
		p.GuestCanJoin = guest == "can_join"
		out = append(out, p)
	}
	return out, total, rows.Err()
}

func (r *Rooms) InsertReport(ctx context.Context, rep room.Report) error {
	var eventID *string
	if rep.EventID != "" {
		e := string(rep.EventID)
		eventID = &e
	}
	_, err := r.db.pool.Exec(ctx, `INSERT INTO content_reports (reporter, room_id, event_id, reason, score, created_at)
		VALUES ($1, $2, $3, $4, $5, $6)`, rep.Reporter, rep.RoomID, eventID, rep.Reason, rep.Score, rep.At)
	if err != nil {
		return fmt.Errorf("storing report: %w", err)
	}
	return nil
}

// StoredReport is a content report as the operator sees it.
type StoredReport struct {
	ID int64
	room.Report
}

// Reports lists content reports, newest first: those made at or after
// since (the zero time: all of them), at most limit (0: no limit). It is
// the operator's view (weft reports list), not part of room.Store.
func (db *DB) Reports(ctx context.Context, since time.Time, limit int) ([]StoredReport, error) {
	var sinceArg *time.Time
	if !since.IsZero() {
		sinceArg = &since
	}
	var limitArg *int
	if limit > 0 {
		limitArg = &limit
	}
	rows, err := db.pool.Query(ctx, `SELECT report_id, reporter, room_id, coalesce(event_id, ''), reason, score, created_at
		FROM content_reports WHERE $1::timestamptz IS NULL OR created_at >= $1
		ORDER BY created_at DESC, report_id DESC LIMIT $2`, sinceArg, limitArg)
	if err != nil {
		return nil, fmt.Errorf("listing reports: %w", err)
	}
	defer rows.Close()
	var out []StoredReport
	for rows.Next() {
		var r StoredReport
		if err := rows.Scan(&r.ID, &r.Reporter, &r.RoomID, &r.EventID, &r.Reason, &r.Score, &r.At); err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, rows.Err()
}
