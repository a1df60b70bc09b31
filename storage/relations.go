package storage

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"maunium.net/go/mautrix/id"

	"github.com/weftchat/weft/room"
)

var (
	_ room.RelationStore  = (*Rooms)(nil)
	_ room.HierarchyStore = (*Rooms)(nil)
	_ room.RelationTx     = (*roomTx)(nil)
)

// liveChild is the condition on a relating event c that still counts: not
// rejected, and not redacted (a redaction strips m.relates_to, which
// breaks the relationship).
const liveChild = `NOT c.rejected AND c.redacted_by IS NULL`

// Relations serves /relations. The direct case is one index range over
// events_relates; recursion is a recursive CTE bounded by q.Depth (an
// event names one parent, so the relations form a tree and each event is
// reached once).
func (r *Rooms) Relations(ctx context.Context, q room.RelationQuery) ([]*room.Event, error) {
	order := "ASC"
	if q.Backward {
		order = "DESC"
	}
	depth := max(q.Depth, 1)
	filter := func(a string) string {
		return a + `.room_id = $2 AND NOT ` + a + `.rejected AND ` + a + `.redacted_by IS NULL
			AND ($3::text = '' OR ` + a + `.rel_type = $3) AND ($4::text = '' OR ` + a + `.type = $4)`
	}
	sql := `WITH RECURSIVE rel(event_id, depth) AS (
			SELECT c.event_id, 1 FROM events c WHERE c.relates_to = $1 AND ` + filter("c") + `
			UNION ALL
			SELECT c.event_id, rel.depth + 1 FROM rel JOIN events c ON c.relates_to = rel.event_id
			WHERE rel.depth < $5 AND ` + filter("c") + `
		)
		SELECT ` + eventColumns + ` FROM rel JOIN events e ON e.event_id = rel.event_id JOIN rooms r ON r.room_id = e.room_id
		WHERE e.stream_pos > $6 AND e.stream_pos <= $7 AND e.sender <> ALL($8::text[])
		ORDER BY e.stream_pos ` + order + ` LIMIT $9`
	if depth == 1 {
		sql = `SELECT ` + eventColumns + ` FROM events e JOIN rooms r ON r.room_id = e.room_id
			WHERE e.relates_to = $1 AND ` + filter("e") + ` AND $5::int = 1
			AND e.stream_pos > $6 AND e.stream_pos <= $7 AND e.sender <> ALL($8::text[])
			ORDER BY e.stream_pos ` + order + ` LIMIT $9`
	}
	return collectEvents(r.db.pool.Query(ctx, sql, q.Parent, q.RoomID, q.RelType, q.EventType, depth, q.Lo, q.Hi, userStrings(q.Ignored), q.Limit))
}

// RelationCandidates gathers a page's aggregation candidates in one query:
// the newest valid edits per parent, the newest thread replies per root
// with the thread's totals (window functions over the same rows), and the
// references. The parents are all in q.RoomID, and so must the children be.
func (r *Rooms) RelationCandidates(ctx context.Context, q room.CandidateQuery) ([]room.RelationChild, error) {
	parents := make([]string, len(q.Parents))
	for i, p := range q.Parents {
		parents[i] = string(p)
	}
	base := `c.relates_to = ANY($1::text[]) AND c.room_id = $2 AND ` + liveChild + `
		AND c.sender <> ALL($4::text[]) AND c.stream_pos <= $5`
	rows, err := r.db.pool.Query(ctx, `
		SELECT 'm.replace', relates_to, event_id, state_before, 0::bigint, false, rn FROM (
			SELECT c.relates_to, c.event_id, c.state_before,
				row_number() OVER (PARTITION BY c.relates_to ORDER BY c.origin_server_ts DESC, c.event_id COLLATE "C" DESC) AS rn
			FROM events c JOIN events p ON p.event_id = c.relates_to
			WHERE `+base+` AND c.rel_type = 'm.replace' AND c.state_key IS NULL AND p.state_key IS NULL
				AND c.sender = p.sender AND c.type = p.type AND p.room_id = c.room_id
				AND (c.type = 'm.room.encrypted' OR json_typeof(c.pdu->'content'->'m.new_content') = 'object')
		) x WHERE rn <= $6
		UNION ALL
		SELECT 'm.thread', relates_to, event_id, state_before, n, participated, rn FROM (
			SELECT c.relates_to, c.event_id, c.state_before,
				count(*) OVER w AS n, bool_or(c.sender = $3) OVER w AS participated,
				row_number() OVER (w ORDER BY c.stream_pos DESC) AS rn
			FROM events c WHERE `+base+` AND c.rel_type = 'm.thread'
			WINDOW w AS (PARTITION BY c.relates_to)
		) x WHERE rn <= $6
		UNION ALL
		SELECT 'm.reference', c.relates_to, c.event_id, c.state_before, 0::bigint, false,
			row_number() OVER (PARTITION BY c.relates_to ORDER BY c.stream_pos)
		FROM events c WHERE `+base+` AND c.rel_type = 'm.reference'
		ORDER BY 1, 2, 7`,
		parents, q.RoomID, q.User, userStrings(q.Ignored), q.MaxPos, room.MaxCandidates)
	if err != nil {
		return nil, fmt.Errorf("relation candidates: %w", err)
	}
	defer rows.Close()
	var out []room.RelationChild
	for rows.Next() {
		var c room.RelationChild
		var n, rank int64
		if err := rows.Scan(&c.RelType, &c.Parent, &c.ID, &c.StateBefore, &n, &c.Participated, &rank); err != nil {
			return nil, err
		}
		c.Count = int(n)
		out = append(out, c)
	}
	// Within a parent, candidates come in preference order (the rank
	// column): edits newest first, thread replies newest first,
	// references oldest first.
	return out, rows.Err()
}

// EventsByID loads events by ID.
func (r *Rooms) EventsByID(ctx context.Context, ids []id.EventID) (map[id.EventID]*room.Event, error) {
	strs := make([]string, len(ids))
	for i, e := range ids {
		strs[i] = string(e)
	}
	evs, err := collectEvents(r.db.pool.Query(ctx, `SELECT `+eventColumns+` FROM events e JOIN rooms r USING (room_id)
		WHERE e.event_id = ANY($1::text[])`, strs))
	if err != nil {
		return nil, err
	}
	out := make(map[id.EventID]*room.Event, len(evs))
	for _, e := range evs {
		out[e.ID] = e
	}
	return out, nil
}

// ThreadRoots lists thread roots by latest activity. The thread replies
// of the room are grouped by root; a root whose every reply was redacted,
// or sent by an ignored user, is no thread to this reader.
func (r *Rooms) ThreadRoots(ctx context.Context, q room.ThreadQuery) ([]room.ThreadRoot, error) {
	rows, err := r.db.pool.Query(ctx, `SELECT `+eventColumns+`, t.latest FROM (
			SELECT c.relates_to, max(c.stream_pos) AS latest, bool_or(c.sender = $2) AS mine
			FROM events c
			WHERE c.room_id = $1 AND c.rel_type = 'm.thread' AND `+liveChild+`
				AND c.sender <> ALL($3::text[]) AND c.stream_pos <= $4
			GROUP BY c.relates_to
		) t JOIN events e ON e.event_id = t.relates_to JOIN rooms r ON r.room_id = e.room_id
		WHERE e.room_id = $1 AND NOT e.rejected AND t.latest <= $5 AND (NOT $6::bool OR t.mine OR e.sender = $2)
		ORDER BY t.latest DESC LIMIT $7`,
		q.RoomID, q.User, userStrings(q.Ignored), q.MaxPos, q.Before, q.Participated, q.Limit)
	if err != nil {
		return nil, fmt.Errorf("thread roots: %w", err)
	}
	defer rows.Close()
	var out []room.ThreadRoot
	for rows.Next() {
		var ev room.Event
		var raw, because string
		var latest int64
		if err := rows.Scan(&ev.ID, &ev.RoomID, &ev.RoomVersion, &raw, &ev.StreamPos, &ev.StateBefore, &ev.RedactedBy, &because, &latest); err != nil {
			return nil, err
		}
		p, err := parsePDU(raw)
		if err != nil {
			return nil, err
		}
		ev.PDU = p
		if because != "" {
			if ev.RedactedBecause, err = parsePDU(because); err != nil {
				return nil, err
			}
		}
		out = append(out, room.ThreadRoot{Root: &ev, Latest: latest})
	}
	return out, rows.Err()
}

// RelTypeOf is the rel_type of the live relation eventID makes, read in
// the room's locked transaction (so after the batch's earlier writes).
func (t *roomTx) RelTypeOf(eventID id.EventID) (string, error) {
	var relType string
	err := t.tx.QueryRow(t.ctx, `SELECT CASE WHEN NOT rejected AND redacted_by IS NULL THEN coalesce(rel_type, '') ELSE '' END
		FROM events WHERE event_id = $1 AND room_id = $2`, eventID, t.roomID).Scan(&relType)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", room.ErrNotFound
	}
	return relType, err
}

// HasAnnotation looks among target's annotations (the events_relates
// index) for a live one by sender with this event type and key.
func (t *roomTx) HasAnnotation(sender id.UserID, target id.EventID, typ, key string) (bool, error) {
	var found bool
	err := t.tx.QueryRow(t.ctx, `SELECT EXISTS (SELECT 1 FROM events c
		WHERE c.relates_to = $1 AND c.rel_type = 'm.annotation' AND c.room_id = $2 AND `+liveChild+`
			AND c.sender = $3 AND c.type = $4 AND c.pdu->'content'->'m.relates_to'->>'key' = $5)`,
		target, t.roomID, sender, typ, key).Scan(&found)
	return found, err
}

// summaryStateTypes are the state events a hierarchy entry is built from
// (besides m.space.child and the reader's membership).
var summaryStateTypes = []string{
	"m.room.create", "m.room.name", "m.room.topic", "m.room.avatar", "m.room.canonical_alias",
	"m.room.join_rules", "m.room.history_visibility", "m.room.guest_access", "m.room.encryption",
}

// SpaceRooms loads hierarchy summaries for a batch of rooms: two queries,
// whatever the number of rooms.
func (r *Rooms) SpaceRooms(ctx context.Context, roomIDs []id.RoomID, user id.UserID) (map[id.RoomID]*room.SpaceRoom, error) {
	ids := make([]string, len(roomIDs))
	for i, rid := range roomIDs {
		ids[i] = string(rid)
	}
	rows, err := r.db.pool.Query(ctx, `SELECT r.room_id, r.room_version,
			(SELECT count(*) FROM current_state m WHERE m.room_id = r.room_id AND m.type = 'm.room.member' AND m.membership = 'join')
		FROM rooms r WHERE r.room_id = ANY($1::text[])`, ids)
	if err != nil {
		return nil, err
	}
	out := map[id.RoomID]*room.SpaceRoom{}
	for rows.Next() {
		sr := &room.SpaceRoom{}
		var n int64
		if err := rows.Scan(&sr.RoomID, &sr.Version, &n); err != nil {
			rows.Close()
			return nil, err
		}
		sr.JoinedMembers = int(n)
		out[sr.RoomID] = sr
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	if len(out) == 0 {
		return out, nil
	}
	state, err := collectEvents(r.db.pool.Query(ctx, `SELECT `+eventColumns+` FROM current_state c
		JOIN events e ON e.event_id = c.event_id JOIN rooms r ON r.room_id = c.room_id
		WHERE c.room_id = ANY($1::text[]) AND (
			(c.type = ANY($2::text[]) AND c.state_key = '')
			OR c.type = 'm.space.child'
			OR (c.type = 'm.room.member' AND c.state_key = $3))
		ORDER BY c.room_id, e.stream_pos`, ids, summaryStateTypes, string(user)))
	if err != nil {
		return nil, err
	}
	for _, e := range state {
		if sr := out[e.RoomID]; sr != nil {
			sr.State = append(sr.State, e)
		}
	}
	return out, nil
}

func userStrings(users []id.UserID) []string {
	out := make([]string, len(users))
	for i, u := range users {
		out[i] = string(u)
	}
	return out
}
