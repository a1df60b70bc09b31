package storage

import (
	"context"
	jsonv2 "encoding/json/v2"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/jackc/pgx/v5"
	"github.com/tidwall/gjson"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/federation/pdu"
	"maunium.net/go/mautrix/id"

	"github.com/weftchat/weft/room"
	"github.com/weftchat/weft/syncapi"
)

// Rooms implements room.Store.
type Rooms struct {
	db      *DB
	pdus    *pduCache
	heads   *headCache
	snapIDs *snapshotIDs
}

// Rooms returns the room store.
func (db *DB) Rooms() *Rooms {
	return &Rooms{db: db, pdus: newPDUCache(50_000), heads: &headCache{m: map[id.RoomID]cachedHead{}, stale: &db.staleHeads}, snapIDs: &snapshotIDs{}}
}

// headCache remembers, per room, the head the last committed batch left
// (extremities, depth, snapshot) and the current-state event IDs batches
// looked up, tagged with those extremities. A batch that locks a room and
// finds the same extremities knows nobody (no other process either)
// appended since, and reuses the state IDs; a batch whose rooms all have
// cached heads builds on them before its read of the heads arrives, and
// checks them when it does (batchTx.LockRooms).
type headCache struct {
	mu sync.Mutex
	m  map[id.RoomID]cachedHead
	// stale counts the batches that found cached heads stale (the DB's
	// counter, exported as a metric).
	stale *atomic.Uint64
}

// StaleHeads is how many batches found the room heads they built on
// stale (another process wrote the rooms) and ran again.
func (r *Rooms) StaleHeads() uint64 { return r.heads.stale.Load() }

type cachedHead struct {
	head  string // the forward extremities, joined
	state map[pdu.StateKey]id.EventID
	// The rest of the head as the last batch committed it, for the next
	// batch to build on before its own read of the head arrives
	// (batchTx.LockRooms).
	version               id.RoomVersion
	prev                  []id.EventID
	depth, snap, chainLen int64
}

func headKey(prev []id.EventID) string {
	var b strings.Builder
	for _, p := range prev {
		b.WriteString(string(p))
		b.WriteByte(',')
	}
	return b.String()
}

const maxCachedHeads = 10_000

func (c *headCache) get(roomID id.RoomID, head string) (map[pdu.StateKey]id.EventID, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	h, ok := c.m[roomID]
	if !ok || h.head != head {
		return nil, false
	}
	return maps.Clone(h.state), true
}

func (c *headCache) put(t *roomTx) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.m) >= maxCachedHeads {
		clear(c.m)
	}
	c.m[t.roomID] = cachedHead{head: headKey(t.prev), state: t.state, version: t.version,
		prev: t.prev, depth: t.depth, snap: t.snap, chainLen: t.chainLen}
}

// heads returns the cached heads of all of rooms, or false if one is
// missing.
func (c *headCache) heads(rooms []string) ([]cachedHead, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]cachedHead, len(rooms))
	for i, rid := range rooms {
		h, ok := c.m[id.RoomID(rid)]
		if !ok || len(h.prev) == 0 {
			return nil, false
		}
		h.state = maps.Clone(h.state)
		out[i] = h
	}
	return out, true
}

// forget drops rooms' cached heads, found stale.
func (c *headCache) forget(rooms []string) {
	c.stale.Add(1)
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, rid := range rooms {
		delete(c.m, id.RoomID(rid))
	}
}

var _ room.Store = (*Rooms)(nil)

// snapshotRebase is how many deltas may chain before a full copy is written.
const snapshotRebase = 100

func roomNotFound(err error) error {
	if errors.Is(err, pgx.ErrNoRows) {
		return room.ErrNotFound
	}
	return err
}

// roomTx is one room's locked transaction. The jobs of one room run one at
// a time (room/batch.go), so only the goroutine running the room's current
// job uses it; the batch's leader reads it between rounds of jobs.
type roomTx struct {
	ctx     context.Context
	roomID  id.RoomID
	version id.RoomVersion
	batch   *batchTx
	pdus    *pduCache
	// tx is the transaction as the room's current job sees it.
	tx *jobConn

	// While this transaction holds the room's row lock nobody else can
	// change the room, so what it has read is cached until it ends:
	// head (extremities, depth, snapshot) and current state IDs
	// ("" = known absent). Append keeps both up to date.
	headLoaded bool
	prev       []id.EventID
	depth      int64
	snap       int64
	chainLen   int64
	// dirty: the head changed and Flush must write it.
	dirty bool
	state map[pdu.StateKey]id.EventID
	// stateComplete: state holds the whole current state (a room created
	// in this batch), so a key not in it does not exist.
	stateComplete bool
}

// batchTx is one batch's transaction: the rooms it has locked so far. Jobs
// of different rooms use it concurrently; see stream for how their writes
// share the transaction.
type batchTx struct {
	ctx   context.Context
	s     *stream
	heads *headCache
	ids   *snapshotIDs
	pdus  *pduCache

	mu sync.Mutex // guards the fields below
	// rooms are the room handles.
	rooms map[id.RoomID]*roomTx
	// jobs[n] is job n's connection, room, and the room's head when the
	// job began (to go back to if the job is undone).
	jobs map[int]*jobState
	// positions receive the stream positions of the inserted events, and
	// members are the users whose member events were appended: after the
	// commit they tell the stream listener what changed. Entries of jobs
	// that were rolled back stay (a zero or unused position, a user woken
	// for nothing): waking a listener needlessly is harmless, missing one
	// is not.
	positions []*int64
	members   []id.UserID
	appended  map[id.RoomID]bool
}

type jobState struct {
	conn  *jobConn
	room  *roomTx // nil: the job found no room
	saved roomHead
	// opened: the job created the room; undoing it forgets the room.
	opened bool
}

func (r *Rooms) Batch(ctx context.Context, fn func(room.BatchTx) error) error {
	conn, err := r.db.pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("batch connection: %w", err)
	}
	// A connection released inside a transaction is closed by the pool,
	// so a failure below cannot leave one open for the next user.
	defer conn.Release()
	b := &batchTx{ctx: ctx, rooms: map[id.RoomID]*roomTx{}, pdus: r.pdus, heads: r.heads,
		ids: r.snapIDs, jobs: map[int]*jobState{}, appended: map[id.RoomID]bool{}}
	b.s = newStream(conn.Conn(), r.db, func() bool {
		b.mu.Lock()
		defer b.mu.Unlock()
		return len(b.positions) > 0
	})
	err = fn(b)
	s := b.s
	if err == nil && !s.committed {
		// Not committed by the last flush (the stream lock was not held
		// before it, or nothing was written).
		if len(b.positions) > 0 {
			s.ticket = r.db.gate.take() // the stream lock is held: COMMIT follows
		}
		if s.begun {
			if _, err = conn.Exec(ctx, "COMMIT"); err != nil {
				err = fmt.Errorf("committing the batch: %w", err)
			}
		}
	}
	if err != nil {
		if s.begun && !s.committed {
			if _, rerr := conn.Exec(context.WithoutCancel(ctx), "ROLLBACK"); rerr != nil {
				_ = conn.Conn().Close(context.WithoutCancel(ctx))
			}
		}
		if s.ticket != nil {
			r.db.resolve(s.ticket, nil)
		}
		return err
	}
	done, ticket := b, s.ticket
	// Committed: what the batch knows of each room's state is now true.
	var maxPos int64
	var rooms []id.RoomID
	for _, t := range done.rooms {
		if t.headLoaded && len(t.prev) > 0 && t.depth > 0 {
			r.heads.put(t)
		}
	}
	for rid := range done.appended {
		rooms = append(rooms, rid)
	}
	for _, p := range done.positions {
		maxPos = max(maxPos, *p)
	}
	if ticket != nil {
		var note *streamNote
		if maxPos > 0 {
			note = &streamNote{pos: maxPos, kinds: syncapi.KindEvents, rooms: rooms, users: done.members}
		}
		r.db.resolve(ticket, note)
	}
	return nil
}

// roomHead is what a room handle caches, saved when each job begins.
type roomHead struct {
	headLoaded bool
	prev       []id.EventID
	depth      int64
	snap       int64
	chainLen   int64
	dirty      bool
	state      map[pdu.StateKey]id.EventID
}

func (t *roomTx) saveHead() roomHead {
	return roomHead{t.headLoaded, t.prev, t.depth, t.snap, t.chainLen, t.dirty, maps.Clone(t.state)}
}

func (t *roomTx) restoreHead(h roomHead) {
	t.headLoaded, t.prev, t.depth, t.snap, t.chainLen, t.dirty, t.state = h.headLoaded, h.prev, h.depth, h.snap, h.chainLen, h.dirty, h.state
}

// Flush writes each changed room's head (depth, snapshot, forward
// extremity) once per batch instead of once per event (updating the same
// rows for every event would pile up row versions), and sends everything
// queued. No job runs meanwhile. A FlushError that aborted the jobs'
// round is returned as is (see stream).
func (b *batchTx) Flush(last bool) error {
	if fe := b.s.takeAborted(); fe != nil {
		return fe
	}
	var rooms, extRooms, extEvents []string
	var snaps, depths []int64
	for _, t := range b.rooms {
		if !t.dirty {
			continue
		}
		rooms = append(rooms, string(t.roomID))
		snaps = append(snaps, t.snap)
		depths = append(depths, t.depth)
		for _, e := range slices.Sorted(slices.Values(t.prev)) { // event ID order: checkHeads compares so
			extRooms = append(extRooms, string(t.roomID))
			extEvents = append(extEvents, string(e))
		}
	}
	s := b.s
	s.tok.Lock()
	defer s.tok.Unlock()
	s.commitOnFlush = last
	defer func() { s.commitOnFlush = false }()
	if len(rooms) > 0 {
		// One statement for all the batch's rooms, belonging to no job:
		// it follows every job's. The extremities come as (room, event)
		// pairs, in event ID order.
		s.queue = append(s.queue,
			queued{job: -1, sql: `UPDATE room_heads h SET snapshot_id = u.snap, depth = u.depth,
				extremities = coalesce((SELECT array_agg(x.event_id ORDER BY x.ord) FROM unnest($4::text[], $5::text[]) WITH ORDINALITY AS x(room_id, event_id, ord)
					WHERE x.room_id = h.room_id), '{}')
			FROM unnest($1::text[], $2::bigint[], $3::bigint[]) AS u(room_id, snap, depth) WHERE h.room_id = u.room_id`,
				args: []any{rooms, snaps, depths, extRooms, extEvents}})
	}
	if err := s.flush(b.ctx); err != nil {
		if fe := s.aborted; fe != nil {
			s.aborted = nil
			return fe
		}
		return err
	}
	for _, t := range b.rooms {
		t.dirty = false
	}
	return nil
}

// LockRooms locks rooms' rows (in room ID order, so two lockers can never
// deadlock) and reads their heads, all in one round trip. It is called
// before any job runs, outside every savepoint, so no job's rollback
// releases the locks.
func (b *batchTx) LockRooms(roomIDs []id.RoomID) error {
	var want []string
	for _, rid := range roomIDs {
		if _, ok := b.rooms[rid]; !ok && !slices.Contains(want, string(rid)) {
			want = append(want, string(rid))
		}
	}
	if len(want) == 0 {
		return nil
	}
	s := b.s
	s.tok.Lock()
	defer s.tok.Unlock()
	// Lock first, then read the heads in a second statement of the same
	// round trip: under READ COMMITTED a statement reads from the snapshot
	// taken when it started, so heads read by the locking statement itself
	// could predate the commit of the batch it waited for.
	if len(s.queue) > 0 {
		if err := s.flush(b.ctx); err != nil {
			return err
		}
	}
	//
	// The transaction begins in the same round trip, and the stream lock
	// is taken in it too, after the rooms' (every batch locks its rooms
	// first: no deadlock), outside any savepoint: the batch then holds it
	// when its last writes are sent, so their pipeline can end with the
	// COMMIT (stream.flush). A batch holds it a little longer so (while
	// it builds its events), but no other batch could write meanwhile
	// anyway (maxLeaders in room/batch.go).
	pb := &pgx.Batch{}
	begin := !s.begun
	if begin {
		pb.Queue("BEGIN")
	}
	pb.Queue(`SELECT room_id FROM rooms WHERE room_id = ANY($1) ORDER BY room_id FOR UPDATE`, want)
	pb.Queue(`SELECT r.room_id, r.room_version, h.depth, h.snapshot_id, s.chain_len, coalesce(h.extremities, '{}')
		FROM rooms r LEFT JOIN room_heads h USING (room_id) LEFT JOIN state_snapshots s ON s.snapshot_id = h.snapshot_id
		WHERE r.room_id = ANY($1)`, want)
	lock := s.lockLevel == -2
	if lock {
		pb.Queue("SELECT pg_advisory_xact_lock($1)", streamLockID)
	}
	br := s.tx.SendBatch(b.ctx, pb)
	s.begun = true // if BEGIN failed, so does the batch
	if spec, ok := b.heads.heads(want); ok {
		// Every room's head is cached from the batch that wrote it last:
		// the jobs build on those while the locks and the heads read are
		// on their way, and the heads read checks them before anything
		// else is sent (stream.settle). Only another process writing the
		// rooms (or a batch that failed after the cache was filled) makes
		// them differ: the batch then fails with room.ErrStaleHeads,
		// having written nothing, and runs again on the heads read.
		b.mu.Lock()
		for i, h := range spec {
			t := b.newHandle(id.RoomID(want[i]), h.version)
			t.prev, t.depth, t.snap, t.chainLen, t.state, t.headLoaded = h.prev, h.depth, h.snap, h.chainLen, h.state, true
		}
		b.mu.Unlock()
		s.pending = func() error {
			defer br.Close()
			return b.readLock(br, begin, lock, func(rows pgx.Rows) error { return checkHeads(rows, want, spec) }, func() {
				b.heads.forget(want)
			})
		}
		return nil
	}
	defer br.Close()
	return b.readLock(br, begin, lock, b.readHeads, nil)
}

// readLock reads the answers of LockRooms' pipeline, the heads with
// heads. stale, if set, runs when the heads check fails.
func (b *batchTx) readLock(br pgx.BatchResults, begin, lock bool, heads func(pgx.Rows) error, stale func()) error {
	s := b.s
	if begin {
		if _, err := br.Exec(); err != nil {
			return fmt.Errorf("beginning the batch transaction: %w", err)
		}
	}
	if _, err := br.Exec(); err != nil {
		return fmt.Errorf("locking rooms: %w", err)
	}
	rows, err := br.Query()
	if err != nil {
		return fmt.Errorf("reading room heads: %w", err)
	}
	if err := heads(rows); err != nil {
		if errors.Is(err, room.ErrStaleHeads) && stale != nil {
			stale()
		}
		return err
	}
	if lock {
		if _, err := br.Exec(); err != nil {
			return fmt.Errorf("taking the stream lock: %w", err)
		}
		s.lockLevel = -1 // outside every savepoint: held to the end
	}
	return nil
}

// checkHeads compares the heads read with those the batch built on.
func checkHeads(rows pgx.Rows, want []string, spec []cachedHead) error {
	defer rows.Close()
	n := 0
	for rows.Next() {
		roomID, h, err := scanHead(rows)
		if err != nil {
			return err
		}
		i := slices.Index(want, string(roomID))
		if i < 0 || h.depth == 0 {
			return room.ErrStaleHeads
		}
		mine := slices.Clone(spec[i].prev)
		slices.Sort(mine) // as read: ordered by event ID
		if c := spec[i]; c.version != h.version || c.depth != h.depth || c.snap != h.snap || c.chainLen != h.chainLen || !slices.Equal(mine, h.prev) {
			return room.ErrStaleHeads
		}
		n++
	}
	if err := rows.Err(); err != nil {
		return err
	}
	if n != len(want) {
		return room.ErrStaleHeads
	}
	return nil
}

// scanHead reads one row of LockRooms' heads read (depth 0: the room has
// no head yet).
func scanHead(rows pgx.Rows) (id.RoomID, cachedHead, error) {
	var roomID id.RoomID
	var h cachedHead
	var depth, snap, chain *int64
	var prev []string
	if err := rows.Scan(&roomID, &h.version, &depth, &snap, &chain, &prev); err != nil {
		return "", h, err
	}
	if depth != nil {
		h.depth, h.snap, h.chainLen = *depth, *snap, *chain
	}
	h.prev = make([]id.EventID, len(prev))
	for i, p := range prev {
		h.prev[i] = id.EventID(p)
	}
	return roomID, h, nil
}

// readHeads makes handles of the rooms LockRooms read.
func (b *batchTx) readHeads(rows pgx.Rows) error {
	defer rows.Close()
	b.mu.Lock()
	defer b.mu.Unlock()
	for rows.Next() {
		roomID, h, err := scanHead(rows)
		if err != nil {
			return err
		}
		t := b.newHandle(roomID, h.version)
		t.depth, t.snap, t.chainLen, t.prev = h.depth, h.snap, h.chainLen, h.prev
		if st, ok := b.heads.get(roomID, headKey(t.prev)); ok && len(t.prev) > 0 {
			t.state = st
		}
		t.headLoaded = true
	}
	return rows.Err()
}

// newHandle adds a room handle. Caller holds b.mu.
func (b *batchTx) newHandle(roomID id.RoomID, version id.RoomVersion) *roomTx {
	t := &roomTx{ctx: b.ctx, roomID: roomID, version: version, batch: b, pdus: b.pdus, state: map[pdu.StateKey]id.EventID{}}
	b.rooms[roomID] = t
	return t
}

// BeginJob starts job n on roomID, locked by LockRooms (ErrNotFound if it
// was not found), or, with version set, on the new room roomID: its row is
// queued, and a room ID in use surfaces as ErrRoomExists (in a FlushError
// when the insert is sent). The job's writes follow its own savepoint, and
// the room's head is saved to go back to if the job is undone.
func (b *batchTx) BeginJob(n int, roomID id.RoomID, version id.RoomVersion) (room.Tx, error) {
	js := &jobState{conn: b.s.begin(n)}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.jobs[n] = js
	t, ok := b.rooms[roomID]
	switch {
	case version != "" && ok:
		return nil, room.ErrRoomExists
	case version != "":
		js.conn.Queue(`INSERT INTO rooms (room_id, room_version) VALUES ($1, $2)`, roomID, version)
		t = b.newHandle(roomID, version)
		t.headLoaded = true    // a new room has no head yet
		t.stateComplete = true // and no state but what its jobs append
		js.opened = true
	case !ok:
		return nil, room.ErrNotFound
	}
	js.room, js.saved = t, t.saveHead()
	t.tx = js.conn
	return t, nil
}

// EndJob ends job n (failed: with an error): its writes join the
// transaction, or are undone with its changes to the room's head. again
// reports that the job must run again (a FlushError aborted the round of
// jobs: see stream); its writes and head changes are undone too.
func (b *batchTx) EndJob(n int, failed bool) (again bool, err error) {
	b.mu.Lock()
	js := b.jobs[n]
	b.mu.Unlock()
	again, err = js.conn.end(b.ctx, failed)
	if err == nil && (failed || again) {
		b.mu.Lock()
		b.undo(js)
		b.mu.Unlock()
	}
	return again, err
}

// undo puts the job's room back as it was when the job began. Caller holds
// b.mu.
func (b *batchTx) undo(js *jobState) {
	switch {
	case js.room == nil:
	case js.opened:
		delete(b.rooms, js.room.roomID)
	default:
		js.room.restoreHead(js.saved)
	}
}

// Restore, after a FlushError for job n, undoes the cached head changes of
// n and of every job that entered the transaction after it, all undone by
// the rollback to n's savepoint, and returns those jobs but n, to run again
// (n too runs again with rerun, but the caller knows it). No job runs
// meanwhile.
func (b *batchTx) Restore(n int, rerun bool) []int {
	undone := b.s.undoneAfter(n, rerun)
	b.mu.Lock()
	defer b.mu.Unlock()
	// A room goes back to its head before the first of its jobs undone:
	// its jobs entered the stream in order, so that is the first seen.
	seen := map[*roomTx]bool{}
	for _, j := range append([]int{n}, undone...) {
		js := b.jobs[j]
		if js.room != nil && !seen[js.room] {
			seen[js.room] = true
			b.undo(js)
		}
	}
	return undone
}

// Context is the context of the batch the room is written in.
func (t *roomTx) Context() context.Context { return t.ctx }

// JoinedMembers is the room's joined members and their display names, as
// this transaction sees them (room.JoinedMembersTx).
func (t *roomTx) JoinedMembers() (map[id.UserID]string, error) {
	rows, err := t.tx.Query(t.ctx, `SELECT c.state_key, coalesce(e.pdu->'content'->>'displayname', '')
		FROM current_state c JOIN events e ON e.event_id = c.event_id
		WHERE c.room_id = $1 AND c.type = 'm.room.member' AND c.membership = 'join'`, t.roomID)
	if err != nil {
		return nil, fmt.Errorf("reading joined members: %w", err)
	}
	defer rows.Close()
	out := map[id.UserID]string{}
	for rows.Next() {
		var u id.UserID
		var name string
		if err := rows.Scan(&u, &name); err != nil {
			return nil, fmt.Errorf("reading joined members: %w", err)
		}
		out[u] = name
	}
	return out, rows.Err()
}

func (t *roomTx) RoomID() id.RoomID           { return t.roomID }
func (t *roomTx) RoomVersion() id.RoomVersion { return t.version }

func (t *roomTx) CurrentStateIDs(keys []pdu.StateKey) (map[pdu.StateKey]id.EventID, error) {
	out := map[pdu.StateKey]id.EventID{}
	var missing []pdu.StateKey
	for _, k := range keys {
		if eid, ok := t.state[k]; ok {
			if eid != "" {
				out[k] = eid
			}
		} else {
			missing = append(missing, k)
		}
	}
	if len(missing) == 0 || t.stateComplete {
		return out, nil
	}
	types := make([]string, len(missing))
	skeys := make([]string, len(missing))
	for i, k := range missing {
		types[i], skeys[i] = k.Type, k.StateKey
		t.state[k] = "" // absent unless found below
	}
	rows, err := t.tx.Query(t.ctx, `SELECT c.type, c.state_key, c.event_id FROM current_state c
		JOIN unnest($2::text[], $3::text[]) AS k(type, state_key) ON c.type = k.type AND c.state_key = k.state_key
		WHERE c.room_id = $1`, t.roomID, types, skeys)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	for rows.Next() {
		var k pdu.StateKey
		var eid id.EventID
		if err := rows.Scan(&k.Type, &k.StateKey, &eid); err != nil {
			return nil, err
		}
		out[k] = eid
		t.state[k] = eid
	}
	return out, rows.Err()
}

func (t *roomTx) Events(ids []id.EventID) (map[id.EventID]*pdu.PDU, error) {
	out := map[id.EventID]*pdu.PDU{}
	var missing []id.EventID
	for _, eid := range ids {
		if p := t.pdus.get(eid); p != nil {
			out[eid] = p
		} else {
			missing = append(missing, eid)
		}
	}
	if len(missing) == 0 {
		return out, nil
	}
	found, err := loadPDUs(t.ctx, t.tx, missing)
	if err != nil {
		return nil, err
	}
	for eid, p := range found {
		t.pdus.put(eid, p)
		out[eid] = p
	}
	return out, nil
}

// querier is a pool or a transaction.
type querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

func loadPDUs(ctx context.Context, q querier, ids []id.EventID) (map[id.EventID]*pdu.PDU, error) {
	strs := make([]string, len(ids))
	for i, e := range ids {
		strs[i] = string(e)
	}
	rows, err := q.Query(ctx, `SELECT event_id, pdu::text FROM events WHERE event_id = ANY($1)`, strs)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[id.EventID]*pdu.PDU{}
	for rows.Next() {
		var eid id.EventID
		var raw string
		if err := rows.Scan(&eid, &raw); err != nil {
			return nil, err
		}
		p, err := parsePDU(raw)
		if err != nil {
			return nil, fmt.Errorf("event %s: %w", eid, err)
		}
		out[eid] = p
	}
	return out, rows.Err()
}

func parsePDU(raw string) (*pdu.PDU, error) {
	var p pdu.PDU
	if err := jsonv2.Unmarshal([]byte(raw), &p); err != nil {
		return nil, fmt.Errorf("decoding stored PDU: %w", err)
	}
	return &p, nil
}

func (t *roomTx) Head() ([]id.EventID, int64, error) {
	if err := t.loadHead(); err != nil {
		return nil, 0, err
	}
	return t.prev, t.depth, nil
}

// loadHead reads extremities, depth and the head snapshot in one query.
func (t *roomTx) loadHead() error {
	if t.headLoaded {
		return nil
	}
	var prev []string
	err := t.tx.QueryRow(t.ctx, `SELECT h.depth, h.snapshot_id, s.chain_len, h.extremities
		FROM room_heads h JOIN state_snapshots s USING (snapshot_id) WHERE h.room_id = $1`, t.roomID).
		Scan(&t.depth, &t.snap, &t.chainLen, &prev)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("reading room head: %w", err)
	}
	t.prev = make([]id.EventID, len(prev))
	for i, p := range prev {
		t.prev[i] = id.EventID(p)
	}
	t.headLoaded = true
	return nil
}

func (t *roomTx) TxnEvent(sender id.UserID, device id.DeviceID, txnID string) (id.EventID, bool, error) {
	if txnID == "" {
		return "", false, nil
	}
	var eid id.EventID
	err := t.tx.QueryRow(t.ctx, `SELECT event_id FROM events WHERE sender = $1 AND txn_device = $2 AND txn_id = $3`, sender, device, txnID).Scan(&eid)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", false, nil
	}
	return eid, err == nil, err
}

// Append queues the event as the room's new single head. Local rooms are
// linear: the new event's prev_events were all the extremities, so it
// replaces them. Nothing is sent yet: the batch's writes go to Postgres
// together (jobTx), and the position is taken by nextval when the insert
// runs, under the stream lock the batch holds.
func (t *roomTx) Append(e *room.Appended) (int64, error) {
	if err := t.loadHead(); err != nil {
		return 0, err
	}
	if t.snap == 0 {
		// First event of a new room: the state before it is empty.
		id, err := t.batch.ids.next(t.ctx, t.tx)
		if err != nil {
			return 0, err
		}
		t.tx.Queue(`INSERT INTO state_snapshots (snapshot_id, room_id, chain_len) VALUES ($1, $2, 0)`, id, t.roomID)
		t.tx.Queue(`INSERT INTO room_heads (room_id, snapshot_id, depth) VALUES ($1, $2, 0)`, t.roomID, id)
		t.snap, t.chainLen = id, 0
	}
	newSnap, newChain := t.snap, t.chainLen
	if e.PDU.StateKey != nil {
		var err error
		if newSnap, newChain, err = t.addToSnapshot(e); err != nil {
			return 0, err
		}
	}
	relatesTo := gjson.GetBytes(e.PDU.Content, "m\\.relates_to.event_id").Str
	relType := gjson.GetBytes(e.PDU.Content, "m\\.relates_to.rel_type").Str
	// The event row's txn_device is set only with its txn_id (both are
	// NULL for an event without a transaction ID).
	txnDevice := e.TxnDevice
	if e.TxnID == "" {
		txnDevice = ""
	}
	pos := new(int64)
	t.batch.mu.Lock()
	t.batch.positions = append(t.batch.positions, pos)
	t.batch.appended[t.roomID] = true
	if e.PDU.Type == "m.room.member" && e.PDU.StateKey != nil {
		t.batch.members = append(t.batch.members, id.UserID(*e.PDU.StateKey))
	}
	t.batch.mu.Unlock()
	if e.PDU.StateKey == nil && e.Redacts == "" {
		// A message event: appended in bulk with those of other jobs
		// (bulk.go).
		t.tx.queueEvent(&bulkEvent{pos: pos, id: e.ID, room: t.roomID, typ: e.PDU.Type, sender: e.PDU.Sender,
			depth: e.PDU.Depth, ts: e.PDU.OriginServerTS, stateBefore: t.snap, pdu: string(e.Raw),
			relatesTo: relatesTo, relType: relType, push: e.Push, txnDevice: txnDevice, txnID: e.TxnID})
		t.prev, t.depth, t.dirty = []id.EventID{e.ID}, e.PDU.Depth, true
		t.pdus.put(e.ID, e.PDU)
		return 0, nil
	}
	t.tx.QueuePos(pos, `INSERT INTO events (event_id, room_id, type, state_key, sender, depth, origin_server_ts, stream_pos, state_before, pdu, relates_to, rel_type, txn_device, txn_id)
		VALUES ($1, $2, $3, $4, $5, $6, $7, nextval('stream_pos_seq'), $8, $9, nullif($10, ''), nullif($11, ''), nullif($12, ''), nullif($13, ''))
		RETURNING stream_pos`,
		e.ID, t.roomID, e.PDU.Type, e.PDU.StateKey, e.PDU.Sender, e.PDU.Depth, e.PDU.OriginServerTS, t.snap, string(e.Raw), relatesTo, relType, string(txnDevice), e.TxnID)
	for _, q := range pushStatements(e.ID, t.roomID, e.PDU.Sender, e.PDU.OriginServerTS, e.Push) {
		t.tx.Queue(q.sql, q.args...)
	}
	if e.PDU.StateKey != nil {
		var membership *string
		if e.PDU.Type == "m.room.member" {
			m := gjson.GetBytes(e.PDU.Content, "membership").Str
			membership = &m
		}
		// member_since moves only when the membership changes (join to
		// join keeps it): the view event_push_actions (0012_push.sql)
		// relies on it.
		t.tx.Queue(`INSERT INTO current_state (room_id, type, state_key, event_id, membership, member_since)
			VALUES ($1, $2, $3, $4, $5::text, CASE WHEN $5::text IS NULL THEN NULL ELSE (SELECT stream_pos FROM events WHERE event_id = $4) END)
			ON CONFLICT (room_id, type, state_key) DO UPDATE SET event_id = EXCLUDED.event_id, membership = EXCLUDED.membership,
				member_since = CASE WHEN current_state.membership IS NOT DISTINCT FROM EXCLUDED.membership
					THEN current_state.member_since ELSE EXCLUDED.member_since END`,
			t.roomID, e.PDU.Type, *e.PDU.StateKey, e.ID, membership)
	}
	if e.Redacts != "" {
		t.tx.Queue(`UPDATE events SET redacted_by = $2 WHERE event_id = $1 AND room_id = $3 AND redacted_by IS NULL`, e.Redacts, e.ID, t.roomID)
	}
	t.prev, t.depth, t.snap, t.chainLen, t.dirty = []id.EventID{e.ID}, e.PDU.Depth, newSnap, newChain, true
	if e.PDU.StateKey != nil {
		t.state[pdu.StateKey{Type: e.PDU.Type, StateKey: *e.PDU.StateKey}] = e.ID
	}
	t.pdus.put(e.ID, e.PDU)
	return 0, nil
}

// addToSnapshot queues the snapshot "head plus this state event": a delta
// of one entry, or a full copy once the chain is snapshotRebase long.
func (t *roomTx) addToSnapshot(e *room.Appended) (int64, int64, error) {
	snap, err := t.batch.ids.next(t.ctx, t.tx)
	if err != nil {
		return 0, 0, err
	}
	chain := t.chainLen + 1
	if chain < snapshotRebase {
		t.tx.Queue(`INSERT INTO state_snapshots (snapshot_id, room_id, parent_id, chain_len) VALUES ($1, $2, $3, $4)`, snap, t.roomID, t.snap, chain)
		t.tx.Queue(`INSERT INTO state_snapshot_entries (snapshot_id, type, state_key, event_id) VALUES ($1, $2, $3, $4)`, snap, e.PDU.Type, *e.PDU.StateKey, e.ID)
		return snap, chain, nil
	}
	t.tx.Queue(`INSERT INTO state_snapshots (snapshot_id, room_id, chain_len) VALUES ($1, $2, 0)`, snap, t.roomID)
	t.tx.Queue(`INSERT INTO state_snapshot_entries (snapshot_id, type, state_key, event_id)
		SELECT $1, type, state_key, event_id FROM (`+resolveSnapshotSQL+`) s`, snap, t.snap)
	t.tx.Queue(`INSERT INTO state_snapshot_entries (snapshot_id, type, state_key, event_id) VALUES ($1, $2, $3, $4)
		ON CONFLICT (snapshot_id, type, state_key) DO UPDATE SET event_id = EXCLUDED.event_id`, snap, e.PDU.Type, *e.PDU.StateKey, e.ID)
	return snap, 0, nil
}

// snapshotIDs hands out state snapshot IDs from blocks taken from the
// table's sequence, so queued writes can refer to a snapshot before it is
// inserted. IDs of rolled-back jobs are simply never used.
type snapshotIDs struct {
	mu   sync.Mutex
	free []int64
}

const snapshotIDBlock = 100

// next takes an ID, reserving a block first if none is left. The block is
// reserved without holding mu: q is a job's connection, which may wait for
// the batch transaction while another job holding it waits for mu. Two
// jobs may then both reserve a block; the spare IDs serve later.
func (a *snapshotIDs) next(ctx context.Context, q querier) (int64, error) {
	for {
		a.mu.Lock()
		if len(a.free) > 0 {
			id := a.free[0]
			a.free = a.free[1:]
			a.mu.Unlock()
			return id, nil
		}
		a.mu.Unlock()
		// nextval is atomic, so the IDs are ours even with other processes
		// taking IDs at the same time.
		rows, err := q.Query(ctx, `SELECT nextval('state_snapshots_snapshot_id_seq') FROM generate_series(1, $1)`, snapshotIDBlock)
		if err != nil {
			return 0, fmt.Errorf("reserving snapshot IDs: %w", err)
		}
		ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
		if err != nil {
			return 0, fmt.Errorf("reserving snapshot IDs: %w", err)
		}
		a.mu.Lock()
		a.free = append(a.free, ids...)
		a.mu.Unlock()
	}
}

// resolveSnapshotSQL lists the state of snapshot $2 (as type, state_key,
// event_id): each key's entry from the nearest snapshot in the chain.
const resolveSnapshotSQL = `
	WITH RECURSIVE chain(snapshot_id, parent_id, lvl) AS (
		SELECT snapshot_id, parent_id, 0 FROM state_snapshots WHERE snapshot_id = $2
		UNION ALL
		SELECT s.snapshot_id, s.parent_id, c.lvl + 1 FROM state_snapshots s JOIN chain c ON s.snapshot_id = c.parent_id
	)
	SELECT DISTINCT ON (e.type, e.state_key) e.type, e.state_key, e.event_id
	FROM chain c JOIN state_snapshot_entries e USING (snapshot_id)
	ORDER BY e.type, e.state_key, c.lvl`

func (t *roomTx) CreateAlias(alias id.RoomAlias, creator id.UserID) error {
	_, err := t.tx.Exec(t.ctx, `INSERT INTO room_aliases (alias, room_id, creator) VALUES ($1, $2, $3)`, alias, t.roomID, creator)
	if isUniqueViolation(err) {
		return mautrix.MRoomInUse.WithMessage("Room alias already taken")
	}
	return err
}

func (t *roomTx) SetPublished(v bool) error {
	_, err := t.tx.Exec(t.ctx, `UPDATE rooms SET published = $2 WHERE room_id = $1`, t.roomID, v)
	return err
}

func (t *roomTx) AliasRoom(alias id.RoomAlias) (id.RoomID, error) {
	var rid id.RoomID
	err := t.tx.QueryRow(t.ctx, `SELECT room_id FROM room_aliases WHERE alias = $1`, alias).Scan(&rid)
	return rid, roomNotFound(err)
}

// eventColumns are what scanEvent reads.
const eventColumns = `e.event_id, e.room_id, r.room_version, e.pdu::text, e.stream_pos, e.state_before, coalesce(e.redacted_by, ''),
	coalesce((SELECT rb.pdu::text FROM events rb WHERE rb.event_id = e.redacted_by), '')`

func scanEvent(row pgx.Row) (*room.Event, error) { return scanEventWith(row) }

// scanEventWith scans eventColumns after the given leading columns.
func scanEventWith(row pgx.Row, lead ...any) (*room.Event, error) {
	var ev room.Event
	var raw, because string
	dest := append(lead, &ev.ID, &ev.RoomID, &ev.RoomVersion, &raw, &ev.StreamPos, &ev.StateBefore, &ev.RedactedBy, &because)
	if err := row.Scan(dest...); err != nil {
		return nil, roomNotFound(err)
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
	return &ev, nil
}

func collectEvents(rows pgx.Rows, err error) ([]*room.Event, error) {
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []*room.Event{}
	for rows.Next() {
		ev, err := scanEvent(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, ev)
	}
	return out, rows.Err()
}

func (r *Rooms) RoomVersion(ctx context.Context, roomID id.RoomID) (id.RoomVersion, error) {
	var v id.RoomVersion
	err := r.db.pool.QueryRow(ctx, `SELECT room_version FROM rooms WHERE room_id = $1`, roomID).Scan(&v)
	return v, roomNotFound(err)
}

func (r *Rooms) Event(ctx context.Context, eventID id.EventID) (*room.Event, error) {
	return scanEvent(r.db.pool.QueryRow(ctx, `SELECT `+eventColumns+` FROM events e JOIN rooms r USING (room_id) WHERE e.event_id = $1`, eventID))
}

func (r *Rooms) CurrentState(ctx context.Context, roomID id.RoomID) ([]*room.Event, error) {
	return collectEvents(r.db.pool.Query(ctx, `SELECT `+eventColumns+` FROM current_state c
		JOIN events e ON e.event_id = c.event_id JOIN rooms r ON r.room_id = c.room_id
		WHERE c.room_id = $1 ORDER BY e.stream_pos`, roomID))
}

func (r *Rooms) StateAt(ctx context.Context, roomID id.RoomID, eventID id.EventID, after bool) ([]*room.Event, error) {
	ev, err := r.Event(ctx, eventID)
	if err != nil {
		return nil, err
	}
	state, err := collectEvents(r.db.pool.Query(ctx, `SELECT `+eventColumns+` FROM (`+resolveSnapshotSQL+`) s
		JOIN events e ON e.event_id = s.event_id JOIN rooms r ON r.room_id = e.room_id
		WHERE $1::text = e.room_id ORDER BY e.stream_pos`, roomID, ev.StateBefore))
	if err != nil || !after || ev.PDU.StateKey == nil {
		return state, err
	}
	out := state[:0]
	for _, s := range state {
		if s.PDU.Type != ev.PDU.Type || *s.PDU.StateKey != *ev.PDU.StateKey {
			out = append(out, s)
		}
	}
	return append(out, ev), nil
}

func (r *Rooms) SnapshotVisibility(ctx context.Context, snapshot int64, user id.UserID) (string, string, error) {
	return snapshotVisibility(ctx, r.db.pool, snapshot, user)
}

// snapshotVisibility reads history_visibility and user's membership in a
// state snapshot.
func snapshotVisibility(ctx context.Context, q querier, snapshot int64, user id.UserID) (string, string, error) {
	rows, err := q.Query(ctx, `SELECT s.type, e.pdu::text FROM (`+resolveSnapshotSQL+`) s JOIN events e ON e.event_id = s.event_id
		WHERE (s.type = 'm.room.history_visibility' AND s.state_key = '') OR (s.type = 'm.room.member' AND s.state_key = $1)`,
		string(user), snapshot)
	if err != nil {
		return "", "", err
	}
	defer rows.Close()
	hv, membership := "", ""
	for rows.Next() {
		var typ, raw string
		if err := rows.Scan(&typ, &raw); err != nil {
			return "", "", err
		}
		if typ == "m.room.member" {
			membership = gjson.Get(raw, "content.membership").Str
		} else {
			hv = gjson.Get(raw, "content.history_visibility").Str
		}
	}
	return hv, membership, rows.Err()
}

func (r *Rooms) Membership(ctx context.Context, roomID id.RoomID, userID id.UserID) (string, id.EventID, error) {
	var m string
	var eid id.EventID
	err := r.db.pool.QueryRow(ctx, `SELECT coalesce(membership, ''), event_id FROM current_state
		WHERE room_id = $1 AND type = 'm.room.member' AND state_key = $2`, roomID, userID).Scan(&m, &eid)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", "", nil
	}
	return m, eid, err
}

func (r *Rooms) JoinedRooms(ctx context.Context, userID id.UserID) ([]id.RoomID, error) {
	rows, err := r.db.pool.Query(ctx, `SELECT room_id FROM current_state
		WHERE type = 'm.room.member' AND state_key = $1 AND membership = 'join' ORDER BY room_id`, userID)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[id.RoomID])
}

func (r *Rooms) Members(ctx context.Context, roomID id.RoomID) ([]*room.Event, error) {
	return collectEvents(r.db.pool.Query(ctx, `SELECT `+eventColumns+` FROM current_state c
		JOIN events e ON e.event_id = c.event_id JOIN rooms r ON r.room_id = c.room_id
		WHERE c.room_id = $1 AND c.type = 'm.room.member' ORDER BY c.state_key`, roomID))
}

func (r *Rooms) Timeline(ctx context.Context, roomID id.RoomID, from, to int64, backward bool, limit int) ([]*room.Event, error) {
	order := "ASC"
	if backward {
		order = "DESC"
	}
	return collectEvents(r.db.pool.Query(ctx, `SELECT `+eventColumns+` FROM events e JOIN rooms r USING (room_id)
		WHERE e.room_id = $1 AND e.stream_pos > $2 AND e.stream_pos <= $3 AND NOT e.rejected
		ORDER BY e.stream_pos `+order+` LIMIT $4`, roomID, from, to, limit))
}

// MaxStreamPos is the highest committed stream position. Writers hold the
// stream lock exclusively from allocating a position until COMMIT, so
// taking it shared here waits out any writer in flight: the sequence's
// last value is then committed.
func (r *Rooms) MaxStreamPos(ctx context.Context) (int64, error) {
	return r.db.MaxStreamPos(ctx)
}

// MaxStreamPos: see Rooms.MaxStreamPos.
func (db *DB) MaxStreamPos(ctx context.Context) (int64, error) {
	var pos int64
	err := db.inTx(ctx, pgx.TxOptions{AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock_shared($1)", streamLockID); err != nil {
			return err
		}
		return tx.QueryRow(ctx, `SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM stream_pos_seq`).Scan(&pos)
	})
	return pos, err
}

func (r *Rooms) AliasRoom(ctx context.Context, alias id.RoomAlias) (id.RoomID, error) {
	var rid id.RoomID
	err := r.db.pool.QueryRow(ctx, `SELECT room_id FROM room_aliases WHERE alias = $1`, alias).Scan(&rid)
	return rid, roomNotFound(err)
}

// EventsByTime lists events from ts onward (or backward), for timestamp_to_event.
func (r *Rooms) EventsByTime(ctx context.Context, roomID id.RoomID, ts int64, forward bool, limit int) ([]*room.Event, error) {
	cond, order := "e.origin_server_ts >= $2", "ASC"
	if !forward {
		cond, order = "e.origin_server_ts <= $2", "DESC"
	}
	return collectEvents(r.db.pool.Query(ctx, `SELECT `+eventColumns+` FROM events e JOIN rooms r USING (room_id)
		WHERE e.room_id = $1 AND `+cond+` AND NOT e.rejected
		ORDER BY e.origin_server_ts `+order+`, e.stream_pos `+order+` LIMIT $3`, roomID, ts, limit))
}

// Forget records that user forgot roomID.
func (r *Rooms) Forget(ctx context.Context, user id.UserID, roomID id.RoomID) error {
	_, err := r.db.pool.Exec(ctx, `INSERT INTO forgotten_rooms (user_id, room_id) VALUES ($1, $2) ON CONFLICT DO NOTHING`, user, roomID)
	return err
}

// MoveAliases points every local alias of a room at another (room upgrades).
func (r *Rooms) MoveAliases(ctx context.Context, from, to id.RoomID) error {
	_, err := r.db.pool.Exec(ctx, `UPDATE room_aliases SET room_id = $2 WHERE room_id = $1`, from, to)
	return err
}

// pushStatements write what the event did for the room's local members
// (tables event_push_summary and event_push_exceptions, read through the
// view event_push_actions) in the event's transaction: /sync's unread
// counts and the pushers read them. The event's position is read back from
// its row, inserted just before in the same transaction.
func pushStatements(eventID id.EventID, roomID id.RoomID, sender id.UserID, ts int64, push *room.PushOutcome) []queued {
	if push == nil {
		return nil
	}
	var out []queued
	if s := push.Summary; s != nil {
		out = append(out, queued{sql: `INSERT INTO event_push_summary (room_id, stream_pos, event_id, sender, thread_id, highlight, actions, ts)
			SELECT $2, stream_pos, $1, $3, $4, $5, $6, $7 FROM events WHERE event_id = $1`,
			args: []any{eventID, roomID, sender, s.Thread, s.Highlight, string(s.Actions), ts}})
	}
	n := len(push.Exceptions)
	if n == 0 {
		return out
	}
	users, threads, actions := make([]string, n), make([]string, n), make([]string, n)
	notify, highlight := make([]bool, n), make([]bool, n)
	for i, x := range push.Exceptions {
		users[i], threads[i], notify[i], highlight[i], actions[i] = string(x.User), x.Thread, x.Notify, x.Highlight, string(x.Actions)
	}
	return append(out, queued{sql: `INSERT INTO event_push_exceptions (user_id, room_id, stream_pos, event_id, notify, thread_id, highlight, actions, ts)
		SELECT u.user_id, $2, e.stream_pos, $1, u.notify, u.thread_id, u.highlight, u.actions::json, $8
		FROM events e, unnest($3::text[], $4::bool[], $5::text[], $6::bool[], $7::text[]) AS u(user_id, notify, thread_id, highlight, actions)
		WHERE e.event_id = $1`,
		args: []any{eventID, roomID, users, notify, threads, highlight, actions, ts}})
}
