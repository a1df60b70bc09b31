package storage

import (
	"github.com/jackc/pgx/v5"
	"maunium.net/go/mautrix/id"

	"github.com/weftchat/weft/room"
)

// Bulk appends. Most of what a batch writes are message events: one row
// in events (with its transaction ID, if any), perhaps push rows. Sent as
// statements of their own, behind a savepoint per job, they cost
// PostgreSQL more in statement overhead (and a subtransaction each) than
// in rows, and the stream lock is held meanwhile. So a job that appends
// nothing else queues its event as a bulkEvent, and when the queue is
// sent, the events of consecutive such jobs go as one statement behind one
// savepoint, that of the first job.
//
// Such a statement can fail only on a duplicate transaction ID (the
// unique index events_txn), or on something that breaks the batch anyway,
// and then PostgreSQL does not say which job's row it was. The stream is
// then rolled back to the group's savepoint and aborted with a FlushError
// that fails no job (Retry): the batcher runs the group's jobs and those
// after it again, and from then on the batch sends events one by one, each
// job behind its own savepoint, so that the job at fault fails alone, as
// without bulk appends.

// bulkEvent is a message event to append: its row in events (transaction
// ID included) and its push outcome.
type bulkEvent struct {
	pos                    *int64
	id                     id.EventID
	room                   id.RoomID
	typ                    string
	sender                 id.UserID
	depth, ts, stateBefore int64
	pdu                    string
	relatesTo, relType     string
	push                   *room.PushOutcome
	// txnDevice and txnID: both empty, or the client's transaction ID and
	// its device (Append).
	txnDevice id.DeviceID
	txnID     string
}

// wireStmt is one statement as sent.
type wireStmt struct {
	job  int
	sql  string
	args []any
	pos  *int64
	// events are the events a bulk statement appends (it returns their
	// positions).
	events []*bulkEvent
	// entered is how many jobs' savepoints this statement stands for when
	// it succeeds (stream.sent): 1 for a savepoint, the jobs but the first
	// for a bulk statement (the first has the savepoint).
	entered int
}

// render turns the queue into the statements to send: each job's
// statements as queued, except that the jobs that only append events, in
// a row, share one savepoint and one bulk statement (unless the stream is
// noBulk, or a job holds tok: its savepoint must exist by its name).
func (s *stream) render(queue []queued) []wireStmt {
	var out []wireStmt
	var group []*bulkEvent
	first, jobs := -1, 0
	endGroup := func() {
		if jobs > 0 {
			out = append(out,
				wireStmt{job: first, sql: "SAVEPOINT " + savepointName(first), entered: 1},
				bulkStatement(first, group, jobs-1))
		}
		group, first, jobs = nil, -1, 0
	}
	for i := 0; i < len(queue); {
		// A job's segment: its savepoint and the statements after it.
		end := i + 1
		if queue[i].savepoint {
			for end < len(queue) && !queue[end].savepoint && queue[end].job == queue[i].job {
				end++
			}
		}
		seg := queue[i:end]
		i = end
		if !s.noBulk && bulkSegment(seg) {
			if jobs == 0 {
				first = seg[0].job
			}
			jobs++
			for _, q := range seg[1:] {
				group = append(group, q.event)
			}
			continue
		}
		endGroup()
		for _, q := range seg {
			if q.event != nil {
				out = append(out, eventStatements(q.job, q.event)...)
				continue
			}
			w := wireStmt{job: q.job, sql: q.sql, args: q.args, pos: q.pos}
			if q.savepoint {
				w.entered = 1
			}
			out = append(out, w)
		}
	}
	endGroup()
	return out
}

// bulkSegment: the segment is a job's savepoint, not held, and events.
func bulkSegment(seg []queued) bool {
	if len(seg) < 2 || !seg[0].savepoint || seg[0].held {
		return false
	}
	for _, q := range seg[1:] {
		if q.event == nil {
			return false
		}
	}
	return true
}

// bulkSQL appends events in one statement: the events in the given order
// (positions are taken after the sort, in that order), their push rows and
// their transaction IDs. It returns each event's position.
const bulkSQL = `
WITH ev AS (
	INSERT INTO events (event_id, room_id, type, sender, depth, origin_server_ts, stream_pos, state_before, pdu, relates_to, rel_type, txn_device, txn_id)
	SELECT u.event_id, u.room_id, u.type, u.sender, u.depth, u.ts, nextval('stream_pos_seq'), u.state_before, u.pdu::json,
		nullif(u.relates_to, ''), nullif(u.rel_type, ''), nullif(u.txn_device, ''), nullif(u.txn_id, '')
	FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::bigint[], $7::bigint[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[])
		WITH ORDINALITY AS u(event_id, room_id, type, sender, depth, ts, state_before, pdu, relates_to, rel_type, txn_device, txn_id, ord)
	ORDER BY u.ord
	RETURNING event_id, room_id, stream_pos
), summary AS (
	INSERT INTO event_push_summary (room_id, stream_pos, event_id, sender, thread_id, highlight, actions, ts)
	SELECT ev.room_id, ev.stream_pos, u.event_id, u.sender, u.thread_id, u.highlight, u.actions::json, u.ts
	FROM unnest($13::text[], $14::text[], $15::text[], $16::bool[], $17::text[], $18::bigint[])
		AS u(event_id, sender, thread_id, highlight, actions, ts)
	JOIN ev USING (event_id)
), exceptions AS (
	INSERT INTO event_push_exceptions (user_id, room_id, stream_pos, event_id, notify, thread_id, highlight, actions, ts)
	SELECT u.user_id, ev.room_id, ev.stream_pos, u.event_id, u.notify, u.thread_id, u.highlight, u.actions::json, u.ts
	FROM unnest($19::text[], $20::text[], $21::bool[], $22::text[], $23::bool[], $24::text[], $25::bigint[])
		AS u(event_id, user_id, notify, thread_id, highlight, actions, ts)
	JOIN ev USING (event_id)
)
SELECT event_id, stream_pos FROM ev`

// bulkStatement is the bulk statement of job first's group.
func bulkStatement(first int, evs []*bulkEvent, entered int) wireStmt {
	n := len(evs)
	ids, rooms, types, senders := make([]string, n), make([]string, n), make([]string, n), make([]string, n)
	depths, tss, befores := make([]int64, n), make([]int64, n), make([]int64, n)
	pdus, rels, relTypes := make([]string, n), make([]string, n), make([]string, n)
	txnDevices, txnIDs := make([]string, n), make([]string, n)
	var sIDs, sSenders, sThreads, sActions []string
	var sHighlights []bool
	var sTS []int64
	var xIDs, xUsers, xThreads, xActions []string
	var xNotify, xHighlights []bool
	var xTS []int64
	for i, e := range evs {
		ids[i], rooms[i], types[i], senders[i] = string(e.id), string(e.room), e.typ, string(e.sender)
		depths[i], tss[i], befores[i] = e.depth, e.ts, e.stateBefore
		pdus[i], rels[i], relTypes[i] = e.pdu, e.relatesTo, e.relType
		txnDevices[i], txnIDs[i] = string(e.txnDevice), e.txnID
		if e.push != nil {
			if sm := e.push.Summary; sm != nil {
				sIDs, sSenders, sThreads = append(sIDs, string(e.id)), append(sSenders, string(e.sender)), append(sThreads, sm.Thread)
				sHighlights, sActions, sTS = append(sHighlights, sm.Highlight), append(sActions, string(sm.Actions)), append(sTS, e.ts)
			}
			for _, x := range e.push.Exceptions {
				xIDs, xUsers, xNotify, xThreads = append(xIDs, string(e.id)), append(xUsers, string(x.User)), append(xNotify, x.Notify), append(xThreads, x.Thread)
				xHighlights, xActions, xTS = append(xHighlights, x.Highlight), append(xActions, string(x.Actions)), append(xTS, e.ts)
			}
		}
	}
	return wireStmt{job: first, sql: bulkSQL, events: evs, entered: entered, args: []any{
		ids, rooms, types, senders, depths, tss, befores, pdus, rels, relTypes, txnDevices, txnIDs,
		sIDs, sSenders, sThreads, sHighlights, sActions, sTS,
		xIDs, xUsers, xNotify, xThreads, xHighlights, xActions, xTS,
	}}
}

// readPositions reads a bulk statement's answer into its events.
func readPositions(br pgx.BatchResults, evs []*bulkEvent) error {
	rows, err := br.Query()
	if err != nil {
		return err
	}
	defer rows.Close()
	byID := make(map[id.EventID]*bulkEvent, len(evs))
	for _, e := range evs {
		byID[e.id] = e
	}
	for rows.Next() {
		var eid id.EventID
		var pos int64
		if err := rows.Scan(&eid, &pos); err != nil {
			return err
		}
		if e := byID[eid]; e != nil {
			*e.pos = pos
		}
	}
	return rows.Err()
}

// eventStatements are the statements of one event sent on its own.
func eventStatements(job int, e *bulkEvent) []wireStmt {
	out := []wireStmt{{job: job, pos: e.pos, sql: `INSERT INTO events (event_id, room_id, type, sender, depth, origin_server_ts, stream_pos, state_before, pdu, relates_to, rel_type, txn_device, txn_id)
		VALUES ($1, $2, $3, $4, $5, $6, nextval('stream_pos_seq'), $7, $8, nullif($9, ''), nullif($10, ''), nullif($11, ''), nullif($12, ''))
		RETURNING stream_pos`,
		args: []any{e.id, e.room, e.typ, e.sender, e.depth, e.ts, e.stateBefore, e.pdu, e.relatesTo, e.relType, string(e.txnDevice), e.txnID}}}
	for _, q := range pushStatements(e.id, e.room, e.sender, e.ts, e.push) {
		out = append(out, wireStmt{job: job, sql: q.sql, args: q.args})
	}
	return out
}
