package syncapi

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"time"

	"maunium.net/go/mautrix/federation/pdu"
	"maunium.net/go/mautrix/id"

	"github.com/weftchat/weft/room"
)

// caches are the memos shared by all /sync requests. Everything in them is
// keyed by stream positions, so it is the same in any snapshot that holds
// those positions. The one thing that changes after the fact is an event's
// redaction mark: a cached event may show unredacted content for up to the
// event TTL, while the redaction event itself is in the same timelines.
type caches struct {
	timelines *memo[timelineKey, []*room.Event]
	state     *memo[stateKey, map[pdu.StateKey]id.EventID]
	events    *memo[id.EventID, *room.Event]
	members   *memo[memberKey, []*room.Event]
	// joined is each user's joined rooms, keyed by the position of their
	// last membership change (see Service.joinedRooms).
	joined *memo[memberKey, []id.RoomID]
	// ignored is each user's m.ignored_user_list, keyed by the position of
	// their last account data change.
	ignored *memo[memberKey, map[id.UserID]bool]
	// filters are parsed sync filters.
	filters *memo[filterKey, *filter]
	// For device lists (devicelists.go): users whose keys changed in a
	// window; member and encryption events of a room in a window; the
	// membership before a member event; a room's joined members and
	// whether it is unencrypted, keyed by the room's last event.
	keyChanges  *memo[[2]int64, []id.UserID]
	sharing     *memo[TimelineReq, []*room.Event]
	prevMember  *memo[id.EventID, string]
	roomMembers *memo[stateKey, map[id.UserID]struct{}]
	plain       *memo[stateKey, bool]
	// encrypted holds rooms known to be encrypted, which they stay.
	encrypted *roomSet
	// unread is each user's newest counts per room, with the position
	// they hold at; unreadEvents a room's events with their push
	// outcomes in (from, to], for folding (unread.go).
	unread       *latest[UnreadKey, *RoomUnread]
	unreadEvents *memo[unreadEventsKey, []UnreadEvent]
}

type timelineKey = TimelineReq

// stateKey keys what is read of a room's state at a stream position.
type stateKey = StateReq

type memberKey struct {
	user id.UserID
	at   int64
}

func newCaches() *caches {
	return &caches{
		timelines: newMemo[timelineKey, []*room.Event](10*time.Second, 20_000),
		state:     newMemo[stateKey, map[pdu.StateKey]id.EventID](30*time.Second, 2_000),
		events:    newMemo[id.EventID, *room.Event](10*time.Second, 100_000),
		members:   newMemo[memberKey, []*room.Event](30*time.Second, 50_000),
		joined:    newMemo[memberKey, []id.RoomID](30*time.Second, 50_000),
		ignored:   newMemo[memberKey, map[id.UserID]bool](5*time.Minute, 50_000),
		filters:   newMemo[filterKey, *filter](10*time.Minute, 10_000),

		keyChanges:  newMemo[[2]int64, []id.UserID](30*time.Second, 10_000),
		sharing:     newMemo[TimelineReq, []*room.Event](30*time.Second, 20_000),
		prevMember:  newMemo[id.EventID, string](5*time.Minute, 100_000),
		roomMembers: newMemo[stateKey, map[id.UserID]struct{}](5*time.Minute, 10_000),
		plain:       newMemo[stateKey, bool](5*time.Minute, 100_000),
		encrypted:   &roomSet{m: map[id.RoomID]struct{}{}, max: 1_000_000},

		unread:       newLatest[UnreadKey, *RoomUnread](5*time.Minute, 100_000),
		unreadEvents: newMemo[unreadEventsKey, []UnreadEvent](30*time.Second, 10_000),
	}
}

// reader is what one response reads through: the shared caches first,
// the notifier to skip reads of what cannot have changed, and the
// database snapshot, opened on the first read that needs it.
type reader struct {
	s   *Service
	ctx context.Context
	// to is the response's upper bound as first sampled: the snapshot,
	// opened later, holds every commit at or below it.
	to   int64
	snap Snapshot
	// receipts holds prefetched receipts per window, per room.
	receipts map[[2]int64]map[id.RoomID][]Receipt
	// txns are the prefetched transaction IDs of the requesting device's
	// events among txnsAsked.
	txns      map[id.EventID]string
	txnsAsked map[id.EventID]bool
}

// prefetchTimelines loads, in one query, the timelines among reqs that
// the caches do not hold and the notifier cannot rule out.
func (r *reader) prefetchTimelines(reqs []TimelineReq) error {
	var missing []TimelineReq
	for _, q := range reqs {
		if !r.s.n.roomChangedAfter(q.Room, KindEvents, q.From) {
			continue
		}
		if _, ok := r.s.cache.timelines.peek(q); !ok {
			missing = append(missing, q)
		}
	}
	if len(missing) < 2 {
		return nil
	}
	db, err := r.db()
	if err != nil {
		return err
	}
	got, err := db.Timelines(missing)
	if err != nil {
		return fmt.Errorf("reading timelines: %w", err)
	}
	for _, q := range missing {
		r.s.cache.timelines.put(q, got[q])
	}
	return nil
}

// prefetchReceipts reads the receipts of many rooms for one window in one
// query; Receipts then answers those rooms from memory.
func (r *reader) prefetchReceipts(user id.UserID, rooms []id.RoomID, since, to int64) error {
	if len(rooms) < 2 {
		return nil
	}
	all, err := r.fetchReceipts(user, rooms, since, to)
	if err != nil {
		return err
	}
	byRoom := make(map[id.RoomID][]Receipt, len(rooms))
	for _, rid := range rooms {
		byRoom[rid] = nil
	}
	for _, rc := range all {
		byRoom[rc.RoomID] = append(byRoom[rc.RoomID], rc)
	}
	if r.receipts == nil {
		r.receipts = map[[2]int64]map[id.RoomID][]Receipt{}
	}
	r.receipts[[2]int64{since, to}] = byRoom
	return nil
}

// shared reads k through the memo c, shared by every request. A request
// that holds its snapshot (a pooled connection) never waits for another
// request's load of the same key: that load may be waiting for a
// connection, and enough requests waiting so would empty the pool for
// good. It reads in its own snapshot instead (the same read twice, rarely).
func shared[K comparable, V any](r *reader, c *memo[K, V], k K, load func() (V, error)) (V, error) {
	return c.getOrLoad(k, r.snap != nil, load)
}

func (r *reader) db() (Snapshot, error) {
	if r.snap == nil {
		snap, err := r.s.store.Snapshot(r.ctx)
		if err != nil {
			return nil, err
		}
		r.snap = snap
	}
	return r.snap, nil
}

func (r *reader) close() {
	if r.snap != nil {
		r.snap.Close()
	}
}

// MemberEvents is the user's newest member event per room at or below at.
// Unless the user's membership changed after the notifier started, the
// answer is the same for every position since their last member event, so
// it is cached under that position.
func (r *reader) MemberEvents(user id.UserID, at int64) ([]*room.Event, error) {
	last := r.s.n.userLastChange(user, KindEvents)
	if at < last {
		db, err := r.db()
		if err != nil {
			return nil, err
		}
		return db.MemberEvents(user, at)
	}
	return shared(r, r.s.cache.members, memberKey{user, last}, func() ([]*room.Event, error) {
		db, err := r.db()
		if err != nil {
			return nil, err
		}
		return db.MemberEvents(user, at)
	})
}

// Ignored is the set of users the user ignores (m.ignored_user_list) as
// of the response. Unless their account data changed after the notifier
// started, it is the same at every position since their last change, so
// it is cached under that position.
func (r *reader) Ignored(user id.UserID) (map[id.UserID]bool, error) {
	load := func() (map[id.UserID]bool, error) {
		db, err := r.db()
		if err != nil {
			return nil, err
		}
		raw, err := db.GlobalAccountData(user, "m.ignored_user_list")
		if err != nil || raw == nil {
			return nil, err
		}
		return room.IgnoredUsers(raw), nil
	}
	last := r.s.n.userLastChange(user, KindAccountData)
	if last > r.to {
		// Changed after this response's snapshot may have been taken:
		// read it, and do not remember it under a position it may not
		// hold at.
		return load()
	}
	return shared(r, r.s.cache.ignored, memberKey{user, last}, load)
}

func (r *reader) SnapshotVisibility(snapshot int64, user id.UserID) (string, string, error) {
	db, err := r.db()
	if err != nil {
		return "", "", err
	}
	return db.SnapshotVisibility(snapshot, user)
}

// Timeline: nothing when the notifier knows the room had no events in the
// window, else cached.
func (r *reader) Timeline(roomID id.RoomID, from, to int64, limit int) ([]*room.Event, error) {
	if !r.s.n.roomChangedAfter(roomID, KindEvents, from) {
		return nil, nil
	}
	return shared(r, r.s.cache.timelines, timelineKey{Room: roomID, From: from, To: to, Limit: limit}, func() ([]*room.Event, error) {
		db, err := r.db()
		if err != nil {
			return nil, err
		}
		return db.Timeline(roomID, from, to, limit)
	})
}

func (r *reader) stateIDs(roomID id.RoomID, pos int64) (map[pdu.StateKey]id.EventID, error) {
	k := stateKey{roomID, pos}
	return shared(r, r.s.cache.state, k, func() (map[pdu.StateKey]id.EventID, error) {
		db, err := r.db()
		if err != nil {
			return nil, err
		}
		got, err := db.StateIDs([]StateReq{k})
		return got[k], err
	})
}

// prefetchStates reads, in one query, the states among keys that the
// cache does not hold, and caches them. It only warms the cache: what a
// response reads afterwards is the same with or without it.
func (r *reader) prefetchStates(keys []stateKey) error {
	var missing []stateKey
	seen := make(map[stateKey]bool, len(keys))
	for _, k := range keys {
		if _, ok := r.s.cache.state.peek(k); !ok && !seen[k] {
			seen[k] = true
			missing = append(missing, k)
		}
	}
	if len(missing) < 2 {
		return nil
	}
	db, err := r.db()
	if err != nil {
		return err
	}
	got, err := db.StateIDs(missing)
	if err != nil {
		return err
	}
	for _, k := range missing {
		r.s.cache.state.put(k, got[k])
	}
	return nil
}

// prefetchEvents loads, in one query, the events among ids that the cache
// does not hold, into the cache.
func (r *reader) prefetchEvents(ids []id.EventID) error {
	if len(ids) < 2 {
		return nil
	}
	_, err := r.events(ids)
	return err
}

// events loads events by ID through the event cache, in stream order.
func (r *reader) events(ids []id.EventID) ([]*room.Event, error) {
	out := make([]*room.Event, 0, len(ids))
	var missing []id.EventID
	for _, eid := range ids {
		if e, ok := r.s.cache.events.peek(eid); ok {
			out = append(out, e)
		} else {
			missing = append(missing, eid)
		}
	}
	if len(missing) > 0 {
		db, err := r.db()
		if err != nil {
			return nil, err
		}
		loaded, err := db.Events(missing)
		if err != nil {
			return nil, fmt.Errorf("loading events: %w", err)
		}
		for _, e := range loaded {
			r.s.cache.events.put(e.ID, e)
		}
		out = append(out, loaded...)
	}
	slices.SortFunc(out, func(a, b *room.Event) int { return cmp.Compare(a.StreamPos, b.StreamPos) })
	return out, nil
}

// TxnIDs reads the device's transaction IDs of its own events; those of
// prefetched events come from memory.
func (r *reader) TxnIDs(user id.UserID, device id.DeviceID, events []id.EventID) (map[id.EventID]string, error) {
	if r.txnsAsked != nil && !slices.ContainsFunc(events, func(e id.EventID) bool { return !r.txnsAsked[e] }) {
		return r.txns, nil
	}
	db, err := r.db()
	if err != nil {
		return nil, err
	}
	return db.TxnIDs(user, device, events)
}

// prefetchTxnIDs reads the transaction IDs of the device's events among
// events, in one query, for TxnIDs to answer from.
func (r *reader) prefetchTxnIDs(user id.UserID, device id.DeviceID, events []id.EventID) error {
	if len(events) < 2 {
		return nil
	}
	db, err := r.db()
	if err != nil {
		return err
	}
	txns, err := db.TxnIDs(user, device, events)
	if err != nil {
		return fmt.Errorf("reading transaction IDs: %w", err)
	}
	r.txns = txns
	r.txnsAsked = make(map[id.EventID]bool, len(events))
	for _, e := range events {
		r.txnsAsked[e] = true
	}
	return nil
}

// keep applies the lazy-loading member restriction.
func keep(k pdu.StateKey, members *[]id.UserID) bool {
	return members == nil || k.Type != "m.room.member" || slices.Contains(*members, id.UserID(k.StateKey))
}

// StateAt is the room's state after every event at or below pos; with
// members set, member events are limited to those users.
func (r *reader) StateAt(roomID id.RoomID, pos int64, members *[]id.UserID) ([]*room.Event, error) {
	state, err := r.stateIDs(roomID, pos)
	if err != nil {
		return nil, err
	}
	var ids []id.EventID
	for k, eid := range state {
		if keep(k, members) {
			ids = append(ids, eid)
		}
	}
	return r.events(ids)
}

// StateDelta is the state entries at pos that differ from those at since.
func (r *reader) StateDelta(roomID id.RoomID, since, pos int64, members *[]id.UserID) ([]*room.Event, error) {
	before, err := r.stateIDs(roomID, since)
	if err != nil {
		return nil, err
	}
	after, err := r.stateIDs(roomID, pos)
	if err != nil {
		return nil, err
	}
	var ids []id.EventID
	for k, eid := range after {
		if before[k] != eid && keep(k, members) {
			ids = append(ids, eid)
		}
	}
	return r.events(ids)
}

// Summary counts joined and invited members at pos and lists up to five
// heroes other than self: joined or invited members in stream order, or,
// when there are none, those who left or were banned.
func (r *reader) Summary(roomID id.RoomID, pos int64, self id.UserID) (Summary, error) {
	state, err := r.stateIDs(roomID, pos)
	if err != nil {
		return Summary{}, err
	}
	var ids []id.EventID
	for k, eid := range state {
		if k.Type == "m.room.member" {
			ids = append(ids, eid)
		}
	}
	members, err := r.events(ids)
	if err != nil {
		return Summary{}, err
	}
	var sum Summary
	var gone []id.UserID
	for _, e := range members {
		user := id.UserID(*e.PDU.StateKey)
		m := membershipOf(e)
		switch m {
		case "join":
			sum.Joined++
		case "invite":
			sum.Invited++
		}
		if user == self {
			continue
		}
		switch m {
		case "join", "invite":
			if len(sum.Heroes) < 5 {
				sum.Heroes = append(sum.Heroes, user)
			}
		case "leave", "ban":
			gone = append(gone, user)
		}
	}
	if len(sum.Heroes) == 0 && len(gone) > 0 {
		sum.Heroes = gone[:min(len(gone), 5)]
	}
	return sum, nil
}

// AccountData: nothing when the notifier knows the user's account data
// did not change in the window.
func (r *reader) AccountData(user id.UserID, since, to int64) ([]AccountData, error) {
	if since > 0 && !r.s.n.userChangedAfter(user, KindAccountData, since) {
		return nil, nil
	}
	db, err := r.db()
	if err != nil {
		return nil, err
	}
	return db.AccountData(user, since, to)
}

// Receipts of rooms in the window: prefetched, or read.
func (r *reader) Receipts(user id.UserID, rooms []id.RoomID, since, to int64) ([]Receipt, error) {
	if pre, ok := r.receipts[[2]int64{since, to}]; ok && len(rooms) == 1 {
		if rcs, ok := pre[rooms[0]]; ok {
			return rcs, nil
		}
	}
	return r.fetchReceipts(user, rooms, since, to)
}

// fetchReceipts reads receipts, skipped when the notifier knows none of
// the rooms' receipts (nor the user's own private ones) changed.
func (r *reader) fetchReceipts(user id.UserID, rooms []id.RoomID, since, to int64) ([]Receipt, error) {
	if since > 0 && !r.s.n.userChangedAfter(user, KindReceipts, since) &&
		!slices.ContainsFunc(rooms, func(rid id.RoomID) bool { return r.s.n.roomChangedAfter(rid, KindReceipts, since) }) {
		return nil, nil
	}
	db, err := r.db()
	if err != nil {
		return nil, err
	}
	return db.Receipts(rooms, since, to)
}

// Presence in the window; skipped when no presence changed.
func (r *reader) Presence(user id.UserID, since, to int64) ([]Presence, error) {
	if since > 0 && !r.s.n.presenceChangedAfter(since) {
		return nil, nil
	}
	db, err := r.db()
	if err != nil {
		return nil, err
	}
	return db.Presence(user, since, to)
}
