package syncapi

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"

	"maunium.net/go/mautrix/id"

	"github.com/weftchat/weft/room"
)

// Unread counts: rooms.join.*.unread_notifications and, when the filter
// asks, unread_thread_notifications. They are counted in storage from the
// outcomes push evaluation wrote with each event (a summary for the room's
// members and exceptions for those who differ) against the user's read
// receipts and own events; see storage/notifications.go for what "read"
// means.
//
// Cost. A room's counts for a user change only with an event in the room
// (the notifier's room KindEvents) or a receipt of the user (the
// notifier's user KindReceipts). So the counts are the same for every
// position from max(room's last event, user's last receipt) until the
// next such change: a device woken by typing, or a second read of the same
// room, reads nothing. The newest counts known per user and room are kept
// with the position they hold at (cache.unread).
//
// When the room had events since and the user no receipt, the counts move
// only by those events: the user's counts are the cached ones with the
// room's new events folded in (RoomUnread.Fold), in memory. The new events
// and their outcomes are read once per (room, cached position, new
// position) for every user woken (cache.unreadEvents), so a message to a
// room of 100 users costs one read, not one count query per user. Counts
// are read in full (UnreadStore.Unread) when nothing is cached, when the
// user has a receipt after the cached position (the notifier does not say
// in which room), when more than maxUnreadFold events came since, or when
// the fold cannot tell (the user's membership is not join after the
// events). The reads that miss at the same position at the same time (a
// message wakes every member's devices) share one query for all their
// users and rooms (unreadBatcher).

// maxUnreadFold bounds the events folded into cached counts: past it, one
// count query costs less than reading and folding every event.
const maxUnreadFold = 200

// UnreadStore reads unread counts.
type UnreadStore interface {
	// Unread returns each user's unread counts in the room of each key,
	// counting push rows at or below to. Every key asked about is in the
	// result.
	Unread(ctx context.Context, keys []UnreadKey, to int64) (map[UnreadKey]*RoomUnread, error)
	// UnreadEvents lists up to limit of the room's events in (after, to],
	// oldest first, with what each did to its members' counts.
	UnreadEvents(ctx context.Context, roomID id.RoomID, after, to int64, limit int) ([]UnreadEvent, error)
}

// UnreadEvent is what one room event can do to the unread counts of the
// room's local members.
type UnreadEvent struct {
	Pos    int64
	Sender id.UserID
	// State: a state event. It reads nothing for its sender (a new
	// display name is not a sign of having read the room).
	State bool
	// Member is the user whose membership this member event changed, with
	// Membership the new one; "" when it is not a member event or the
	// membership stayed (a profile change). The start of a membership
	// reads everything before it.
	Member     id.UserID
	Membership string
	// Summary is the outcome for every local member joined at the event
	// except its sender; nil when it notified none of them.
	Summary *UnreadOutcome
	// Exceptions are the members whose outcome is not the summary's.
	Exceptions map[id.UserID]UnreadOutcome
}

// UnreadOutcome is what an event did for a member: notified or not, in
// which thread ("main" or the thread root's event ID), highlighted or not.
type UnreadOutcome struct {
	Notify    bool
	Thread    string
	Highlight bool
}

// UnreadKey is one user's counts in one room.
type UnreadKey struct {
	User id.UserID
	Room id.RoomID
}

// RoomUnread is one user's unread notifications in one room.
type RoomUnread struct {
	// Threads maps "main" (room.MainThread) or a thread root's event ID to
	// the thread's unread counts; threads with none are left out.
	Threads map[string]Unread
	// Changed is the position of the newest change that can have moved
	// the counts: the user's newest push row at or below the position
	// read, their newest receipt, their newest event in the room. An
	// incremental sync shows a room whose counts changed after its token
	// even when nothing else in the room is news.
	Changed int64
}

// counts are the room's totals over every thread, the main timeline's,
// and each thread's (threads with none left out).
func (u *RoomUnread) counts() (total, main Unread, threads map[id.EventID]Unread) {
	if u == nil {
		return
	}
	for t, c := range u.Threads {
		total.NotificationCount += c.NotificationCount
		total.HighlightCount += c.HighlightCount
		if t == room.MainThread {
			main = c
			continue
		}
		if threads == nil {
			threads = map[id.EventID]Unread{}
		}
		threads[id.EventID(t)] = c
	}
	return
}

// Fold returns the user's counts after events, given u, their counts at
// the position just before the first: the events must be every event of
// the room after that position up to the new one, in stream order, and
// the user must have had no receipt change in between (a receipt reads
// by the position of the event it names, which the events do not show).
// It follows what the full count (storage's unreadSQL) does with each
// event: the user's own non-state event, or a change of their membership,
// reads everything up to and including it; otherwise the user's exception
// decides if there is one, else the summary, which never counts for its
// sender nor for a user not joined. Changed moves to each reading event
// and each notification counted. ok is false when the user is not joined
// after the events (the full count then reads rows the fold cannot know
// of); u is not modified.
func (u *RoomUnread) Fold(user id.UserID, events []UnreadEvent) (_ *RoomUnread, ok bool) {
	out := &RoomUnread{}
	if u != nil {
		out.Changed = u.Changed
		out.Threads = u.Threads // shared until written
	}
	owned := false
	joined := true
	count := func(o UnreadOutcome, pos int64) {
		if !owned {
			out.Threads = maps.Clone(out.Threads)
			owned = true
		}
		if out.Threads == nil {
			out.Threads = map[string]Unread{}
		}
		c := out.Threads[o.Thread]
		c.NotificationCount++
		if o.Highlight {
			c.HighlightCount++
		}
		out.Threads[o.Thread] = c
		out.Changed = max(out.Changed, pos)
	}
	for i := range events {
		ev := &events[i]
		if ev.Member == user || ev.Sender == user && !ev.State {
			// Read up to here in every thread, this event's own outcome
			// included (its position is not above what was read).
			out.Threads, owned = nil, true
			out.Changed = max(out.Changed, ev.Pos)
			if ev.Member == user {
				joined = ev.Membership == "join"
			}
			continue
		}
		if o, ok := ev.Exceptions[user]; ok {
			if o.Notify {
				count(o, ev.Pos)
			}
			continue
		}
		if ev.Summary != nil && ev.Sender != user && joined {
			count(*ev.Summary, ev.Pos)
		}
	}
	if !joined {
		return nil, false
	}
	if len(out.Threads) == 0 {
		out.Threads = nil
	}
	return out, true
}

// unreadPos is what the notifier knows of a user's counts in a room: the
// room's last event and the user's last receipt (either at least the
// notifier's base); the counts are the same at every position from the
// larger (at) until the next change.
type unreadPos struct {
	events, receipts int64
}

func (p unreadPos) at() int64 { return max(p.events, p.receipts) }

// unreadEventsKey is a room's events in (from, to].
type unreadEventsKey struct {
	room     id.RoomID
	from, to int64
}

// unread returns the user's counts in rooms at the response's position:
// cached, folded forward from cached counts, or read in one query for all
// the rooms left.
func (r *reader) unread(user id.UserID, rooms []id.RoomID) (map[id.RoomID]*RoomUnread, error) {
	out := make(map[id.RoomID]*RoomUnread, len(rooms))
	keys := r.s.n.unreadKeys(user, rooms)
	var missing []UnreadKey
	var missingPos []unreadPos
	for i, rid := range rooms {
		k, p := UnreadKey{user, rid}, keys[i]
		if at, v, ok := r.s.cache.unread.get(k); ok {
			// Counts cached at or after the last change hold at the
			// response's position, unless a change came after that
			// position (the cached counts would be too new).
			if p.at() <= r.to && at >= p.at() {
				out[rid] = v
				continue
			}
			folded, done, err := r.foldUnread(k, at, v, p)
			if err != nil {
				return nil, err
			}
			if done {
				out[rid] = folded
				continue
			}
		}
		missing = append(missing, k)
		missingPos = append(missingPos, p)
	}
	if len(missing) == 0 {
		return out, nil
	}
	var got map[UnreadKey]*RoomUnread
	var err error
	if r.snap != nil {
		// Never wait on another request's load while holding a pooled
		// connection: that load may be waiting for a connection, and
		// enough such waits would empty the pool for good. Read in our
		// own snapshot instead.
		got, err = r.snap.Unread(missing, r.to)
	} else {
		got, err = r.s.unreadBatches.load(r.ctx, r.s.store, missing, r.to)
	}
	if err != nil {
		return nil, fmt.Errorf("reading unread counts: %w", err)
	}
	for i, k := range missing {
		v := got[k]
		if v == nil {
			v = &RoomUnread{} // a key a store left out: nothing unread
		}
		out[k.Room] = v
		// Counts read at to hold from the last change known (at or below
		// to: every change at or below to was told before the keys were
		// taken).
		if at := missingPos[i].at(); at <= r.to {
			r.s.cache.unread.put(k, at, v)
		}
	}
	return out, nil
}

// foldUnread moves counts cached at position at forward to the
// response's position by the room's events since, when the user had no
// receipt since. ok is false when it cannot: the caller reads the counts.
func (r *reader) foldUnread(k UnreadKey, at int64, v *RoomUnread, p unreadPos) (_ *RoomUnread, ok bool, err error) {
	if p.receipts > at || at > r.to {
		return nil, false, nil
	}
	// Events above the response's position wait for the next response;
	// every event at or below it was told to the notifier, so none is
	// missed between at and to.
	to := min(p.events, r.to)
	if to <= at {
		return v, true, nil
	}
	events, err := r.unreadEvents(k.Room, at, to)
	if err != nil {
		if r.ctx.Err() == nil && (errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)) {
			// Another request's load, ended by its own context: ours
			// still runs, and counts the full way.
			return nil, false, nil
		}
		return nil, false, fmt.Errorf("reading unread counts: %w", err)
	}
	if len(events) > maxUnreadFold {
		return nil, false, nil
	}
	folded, ok := v.Fold(k.User, events)
	if !ok {
		return nil, false, nil
	}
	r.s.cache.unread.put(k, to, folded)
	return folded, true, nil
}

// unreadEvents reads the room's events in (from, to] once for every
// request woken, as the other position-keyed reads do.
func (r *reader) unreadEvents(roomID id.RoomID, from, to int64) ([]UnreadEvent, error) {
	k := unreadEventsKey{roomID, from, to}
	if r.snap != nil {
		// Holding a pooled connection: never wait on another request's
		// load (see unread); read in our own snapshot.
		if v, ok := r.s.cache.unreadEvents.peek(k); ok {
			return v, nil
		}
		v, err := r.snap.UnreadEvents(roomID, from, to, maxUnreadFold+1)
		if err != nil {
			return nil, err
		}
		r.s.cache.unreadEvents.put(k, v)
		return v, nil
	}
	return r.s.cache.unreadEvents.get(k, func() ([]UnreadEvent, error) {
		return r.s.store.UnreadEvents(r.ctx, roomID, from, to, maxUnreadFold+1)
	})
}

// unreadBatcher joins the unread loads of concurrent requests at the same
// position into few queries, as group commit does: at most one query per
// position runs at a time, and the requests that miss meanwhile gather in
// the next batch, which queries as soon as the running one ends. A lone
// request queries at once; a message that wakes every member's devices
// costs a handful of queries, not one per member. A request whose keys
// are all in the running query waits for it. Only requests that hold no
// database connection wait here (see reader.unread), and each query takes
// a connection of its own, so no wait can hold up the connection a query
// needs.
type unreadBatcher struct {
	mu sync.Mutex
	// running is the querying batch and next the gathering one, by
	// position; a next batch exists only while one runs.
	running map[int64]*unreadBatch
	next    map[int64]*unreadBatch
	// done is the last finished batch of the latest positions: a request
	// arriving just after the query that held its keys (before the
	// requests that waited for it have filled the cache) takes its
	// result. Counts at a position do not depend on when they are read.
	done map[int64]*unreadBatch
}

// maxDoneBatches bounds unreadBatcher.done.
const maxDoneBatches = 8

type unreadBatch struct {
	keys map[UnreadKey]struct{}
	done chan struct{} // closed when got and err are set
	got  map[UnreadKey]*RoomUnread
	err  error
}

func newUnreadBatcher() *unreadBatcher {
	return &unreadBatcher{running: map[int64]*unreadBatch{}, next: map[int64]*unreadBatch{}, done: map[int64]*unreadBatch{}}
}

func newUnreadBatch(keys []UnreadKey) *unreadBatch {
	b := &unreadBatch{keys: make(map[UnreadKey]struct{}, len(keys)), done: make(chan struct{})}
	b.add(keys)
	return b
}

func (b *unreadBatch) add(keys []UnreadKey) {
	for _, k := range keys {
		b.keys[k] = struct{}{}
	}
}

func (bt *unreadBatcher) load(ctx context.Context, store UnreadStore, keys []UnreadKey, to int64) (map[UnreadKey]*RoomUnread, error) {
	bt.mu.Lock()
	if d := bt.done[to]; d != nil && d.err == nil && d.holds(keys) {
		bt.mu.Unlock()
		return d.got, nil
	}
	run := bt.running[to]
	if run != nil && run.holds(keys) {
		bt.mu.Unlock()
		<-run.done
		return run.got, run.err
	}
	if nb := bt.next[to]; nb != nil {
		nb.add(keys)
		bt.mu.Unlock()
		<-nb.done
		return nb.got, nb.err
	}
	b := newUnreadBatch(keys)
	if run != nil {
		// Lead the next batch: gather until the running query ends.
		bt.next[to] = b
		bt.mu.Unlock()
		<-run.done
		bt.mu.Lock()
		delete(bt.next, to)
	}
	bt.running[to] = b
	all := make([]UnreadKey, 0, len(b.keys))
	for k := range b.keys {
		all = append(all, k)
	}
	bt.mu.Unlock()

	b.got, b.err = store.Unread(ctx, all, to)

	bt.mu.Lock()
	delete(bt.running, to)
	bt.done[to] = b
	if len(bt.done) > maxDoneBatches {
		delete(bt.done, slices.Min(slices.Collect(maps.Keys(bt.done))))
	}
	bt.mu.Unlock()
	close(b.done)
	return b.got, b.err
}

// holds reports whether the batch asks for every key.
func (b *unreadBatch) holds(keys []UnreadKey) bool {
	for _, k := range keys {
		if _, ok := b.keys[k]; !ok {
			return false
		}
	}
	return true
}

// unreadKeys is what the notifier knows of the user's counts in rooms,
// under one lock.
func (n *Notifier) unreadKeys(user id.UserID, rooms []id.RoomID) []unreadPos {
	n.mu.Lock()
	defer n.mu.Unlock()
	receipts := n.base
	if uk := n.userKinds[user]; uk != nil {
		receipts = max(receipts, uk[kindIndex(KindReceipts)])
	}
	out := make([]unreadPos, len(rooms))
	for i, rid := range rooms {
		out[i] = unreadPos{events: max(n.roomEvents[rid], n.base), receipts: receipts}
	}
	return out
}

// unreadCounts fills the counts of every room in the response's join and
// adds the joined rooms that had nothing else to show (quiet) but whose
// counts changed after the token: the user read them (a receipt, perhaps
// private, perhaps filtered out of ephemeral) or an event the filter left
// out of the timeline notified them. No rooms, no query.
func (b *builder) unreadCounts(rooms *Rooms, quiet []id.RoomID) error {
	user := b.req.User
	since := b.sincePos()
	ask := make([]id.RoomID, 0, len(rooms.Join)+len(quiet))
	for rid := range rooms.Join {
		ask = append(ask, rid)
	}
	if len(quiet) > 0 {
		// A receipt of the user's in the window is in its room's
		// ephemeral (their private ones included), which is then not
		// quiet, unless the filter keeps receipts out. Which room it was
		// the notifier does not say (a private receipt tells the user
		// only): then every such quiet room is asked about, and the
		// counts' Changed says which moved.
		receipts := b.s.n.userChangedAfter(user, KindReceipts, since)
		for _, rid := range quiet {
			if b.s.n.roomChangedAfter(rid, KindEvents, since) || receipts && !b.f.ephemeralAllowed("m.receipt", rid) {
				ask = append(ask, rid)
			}
		}
	}
	if len(ask) == 0 {
		return nil
	}
	counts, err := b.rd.unread(user, ask)
	if err != nil {
		return err
	}
	for rid, jr := range rooms.Join {
		b.setUnread(jr, counts[rid])
	}
	for _, rid := range quiet {
		if c := counts[rid]; c != nil && c.Changed > since {
			jr := &JoinedRoom{}
			b.setUnread(jr, c)
			rooms.join(rid, jr)
		}
	}
	return nil
}

// setUnread writes a room's counts: the total over all threads, or with
// unread_thread_notifications the main timeline's and each thread's.
func (b *builder) setUnread(jr *JoinedRoom, c *RoomUnread) {
	total, main, threads := c.counts()
	if b.f.unreadThreads() {
		jr.UnreadNotifications = &main
		jr.UnreadThreadNotifications = threads
		return
	}
	jr.UnreadNotifications = &total
	jr.UnreadThreadNotifications = nil
}
