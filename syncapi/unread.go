package syncapi

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"sync"

	"maunium.net/go/mautrix/id"

	"github.com/weftchat/weft/room"
)

// Unread counts: rooms.join.*.unread_notifications and, when the filter
// asks, unread_thread_notifications. They are counted in storage from the
// rows push evaluation wrote with each event (one per user whose rules
// said notify) against the user's read receipts and own events; see
// storage/notifications.go for what "read" means.
//
// Cost. A room's counts for a user change only with a push row or an event
// of the user in the room (both come with an event: the notifier's room
// KindEvents) or a receipt of the user (the notifier's user KindReceipts).
// So a room's counts are the same for every position from
// max(room's last event, user's last receipt) until the next such change,
// and are cached under that key: a device woken by typing, or a second
// read of the same room, costs no query. What a response misses is read
// in one query, and the requests that miss counts at the same position at
// the same time (a message wakes every member's devices) share one query
// for all their users and rooms (unreadBatcher).

// UnreadStore reads unread counts.
type UnreadStore interface {
	// Unread returns each user's unread counts in the room of each key,
	// counting push rows at or below to. Every key asked about is in the
	// result.
	Unread(ctx context.Context, keys []UnreadKey, to int64) (map[UnreadKey]*RoomUnread, error)
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

// unreadKey names a user's counts in a room, valid from position at (see
// the cost note above) until the next change.
type unreadKey struct {
	user id.UserID
	room id.RoomID
	at   int64
}

// unread returns the user's counts in rooms at the response's position,
// from the cache or one query for all the rooms it misses.
func (r *reader) unread(user id.UserID, rooms []id.RoomID) (map[id.RoomID]*RoomUnread, error) {
	out := make(map[id.RoomID]*RoomUnread, len(rooms))
	keys := r.s.n.unreadKeys(user, rooms)
	var missing []UnreadKey
	var missingKeys []unreadKey
	for i, rid := range rooms {
		// A key above the response's position means a change came after
		// it: the cached counts would be too new, read them at to.
		if k := keys[i]; k.at <= r.to {
			if v, ok := r.s.cache.unread.peek(k); ok {
				out[rid] = v
				continue
			}
		}
		missing = append(missing, UnreadKey{user, rid})
		missingKeys = append(missingKeys, keys[i])
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
		if ck := missingKeys[i]; ck.at <= r.to {
			r.s.cache.unread.put(ck, v)
		}
	}
	return out, nil
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

// unreadKeys computes the cache keys of the user's counts in rooms, under
// one lock.
func (n *Notifier) unreadKeys(user id.UserID, rooms []id.RoomID) []unreadKey {
	n.mu.Lock()
	defer n.mu.Unlock()
	receipts := n.base
	if uk := n.userKinds[user]; uk != nil {
		receipts = max(receipts, uk[kindIndex(KindReceipts)])
	}
	out := make([]unreadKey, len(rooms))
	for i, rid := range rooms {
		out[i] = unreadKey{user: user, room: rid, at: max(n.roomEvents[rid], receipts)}
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
