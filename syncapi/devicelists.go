package syncapi

import (
	"context"
	"fmt"
	"slices"
	"sync"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"

	"github.com/weftchat/weft/room"
)

// Device lists: /sync's device_lists and GET /keys/changes, one code path.
//
// For the user U and a window (since, to]:
//
//   - changed: users whose devices or keys changed in the window (a row
//     of device_list_changes) and who share an encrypted room with U, and
//     U themself when their own changed; and users who started sharing an
//     encrypted room with U: they joined one of U's encrypted rooms (from
//     another membership, so a profile change is not a join), one of U's
//     rooms became encrypted (all its members), or U joined an encrypted
//     room (all its members; the spec allows this even when they already
//     shared another room).
//   - left: users who left, were kicked or banned from an encrypted room
//     U is in, and the members of an encrypted room U left (at the token
//     and at the leave), who now share no encrypted room with U.
//
// Only joined members count as sharing a room, as /keys/changes says.
//
// Who shares which room is read from current state (joined members,
// m.room.encryption), not from state at `to`. The two differ only by
// member or encryption events after `to`, and each of those falls in the
// next window, where it is reported: a user who left after `to` is not
// reported as changed now and is reported as left next time; one who
// joined after `to` may be reported as changed now and is again next
// time. The client's list ends up right either way, and current-state
// reads can be shared by every request, keyed by the room's last event.
//
// Cost: the notifier knows which of U's rooms had a device-list change
// (a change is told with the changing user's joined rooms) or any event
// after the token; the other rooms are not looked at, and an idle
// wake-up reads nothing. The users changed in a window come from the
// notifier's log of recent changes (the database only for windows older
// than it). The rest goes through caches shared by all requests: a room's
// members and whether it is encrypted, the member events of a window
// (taken from the timeline cache when its page holds the whole window).

// deviceLists computes device_lists for (since, to]; nil when there is
// nothing to report. now is the user's newest member event per room at
// to; before their memberships at since (filled when one changed in the
// window); page the timeline page size whose cache entries may hold the
// window's events.
func (s *Service) deviceLists(rd *reader, user id.UserID, since, to int64, page int, now []*room.Event, before map[id.RoomID]string) (*mautrix.DeviceLists, error) {
	var joined, touched, gained, scan []id.RoomID
	var lost []*room.Event
	for _, m := range now {
		rid, ms := m.RoomID, membershipOf(m)
		if m.StreamPos > since {
			switch was := before[rid]; {
			case ms == "join" && was != "join":
				joined, gained = append(joined, rid), append(gained, rid)
				continue
			case ms != "join" && was == "join":
				lost = append(lost, m)
				continue
			}
		}
		if ms != "join" {
			continue
		}
		joined = append(joined, rid)
		if s.n.roomChangedAfter(rid, KindDeviceLists, since) {
			touched = append(touched, rid)
		}
		if s.n.roomChangedAfter(rid, KindEvents, since) {
			scan = append(scan, rid)
		}
	}
	self := s.n.userChangedAfter(user, KindDeviceLists, since)
	if !self && len(touched) == 0 && len(gained) == 0 && len(lost) == 0 && len(scan) == 0 {
		return nil, nil
	}
	changed := map[id.UserID]bool{}
	left := map[id.UserID]bool{}
	selfChanged := false

	// Devices or keys changed. A change of someone sharing an encrypted
	// room with the user was told to that room (they were in it then),
	// unless they joined it since, which the membership part reports.
	if self || len(touched) > 0 {
		users, err := rd.keyChanges(since, to)
		if err != nil {
			return nil, err
		}
		others := false
		for _, u := range users {
			if u == user {
				selfChanged = true
			} else {
				others = true
			}
		}
		if others && len(touched) > 0 {
			members, err := rd.encryptedMembers(touched)
			if err != nil {
				return nil, err
			}
			for _, u := range users {
				if inAny(members, u) {
					changed[u] = true
				}
			}
		}
	}

	// Rooms the user joined: every member is new to them.
	if len(gained) > 0 {
		members, err := rd.encryptedMembers(gained)
		if err != nil {
			return nil, err
		}
		for _, ms := range members {
			for u := range ms {
				changed[u] = true
			}
		}
	}

	// Rooms the user left: everyone they shared it with, at the token or
	// at the leave.
	if len(lost) > 0 {
		rooms := make([]id.RoomID, len(lost))
		for i, m := range lost {
			rooms[i] = m.RoomID
		}
		enc, err := rd.encrypted(rooms)
		if err != nil {
			return nil, err
		}
		for _, m := range lost {
			if !enc[m.RoomID] {
				continue
			}
			for _, at := range []int64{since, m.StreamPos} {
				us, err := rd.membersAt(m.RoomID, at)
				if err != nil {
					return nil, err
				}
				for u := range us {
					left[u] = true
				}
			}
		}
	}

	// Joins, leaves and encryption in the rooms the user stayed in.
	if len(scan) > 0 {
		evs, err := rd.sharingEvents(scan, since, to, page)
		if err != nil {
			return nil, err
		}
		var relevant []id.RoomID
		for _, rid := range scan {
			if slices.ContainsFunc(evs[rid], func(e *room.Event) bool { return !isMemberEventOf(e, user) }) {
				relevant = append(relevant, rid)
			}
		}
		members, err := rd.encryptedMembers(relevant)
		if err != nil {
			return nil, err
		}
		for _, rid := range relevant {
			ms, encrypted := members[rid]
			if !encrypted {
				continue
			}
			last := map[id.UserID]string{} // membership after each user's previous event in the window
			for _, e := range evs[rid] {
				if e.PDU.Type != "m.room.member" { // m.room.encryption
					for u := range ms {
						changed[u] = true
					}
					continue
				}
				u := id.UserID(*e.PDU.StateKey)
				if u == user {
					continue
				}
				cur := membershipOf(e)
				prev, ok := last[u]
				if !ok {
					if prev, err = rd.prevMembership(e); err != nil {
						return nil, err
					}
				}
				last[u] = cur
				switch {
				case cur == "join" && prev != "join":
					if _, in := ms[u]; in {
						changed[u] = true
					}
				case cur != "join" && prev == "join":
					left[u] = true
				}
			}
		}
	}

	// Left means sharing no encrypted room any more.
	if len(left) > 0 {
		shared, err := rd.encryptedMembers(joined)
		if err != nil {
			return nil, err
		}
		for u := range left {
			if u == user || inAny(shared, u) {
				delete(left, u)
			} else {
				delete(changed, u)
			}
		}
	}
	delete(changed, user)
	if selfChanged {
		changed[user] = true
	}
	if len(changed) == 0 && len(left) == 0 {
		return nil, nil
	}
	return &mautrix.DeviceLists{Changed: sortedUsers(changed), Left: sortedUsers(left)}, nil
}

// KeyChanges is GET /keys/changes: device_lists for (from, to], two sync
// tokens. to above the current position is read as the current position.
func (s *Service) KeyChanges(ctx context.Context, user id.UserID, from, to string) (*mautrix.RespKeyChanges, error) {
	f, err := ParseToken(from)
	if err != nil {
		return nil, mautrix.MInvalidParam.WithMessage("from is not a sync token")
	}
	cur := s.n.Current()
	if f.Pos > cur.Pos {
		return nil, mautrix.MInvalidParam.WithMessage("from is a sync token from the future: it was not issued by this server")
	}
	t := cur
	if to != "" {
		tt, err := ParseToken(to)
		if err != nil {
			return nil, mautrix.MInvalidParam.WithMessage("to is not a sync token")
		}
		t.Pos = min(tt.Pos, cur.Pos)
	}
	resp := &mautrix.RespKeyChanges{Changed: []id.UserID{}, Left: []id.UserID{}}
	if t.Pos <= f.Pos {
		return resp, nil
	}
	rd := &reader{s: s, ctx: context.WithoutCancel(ctx), to: t.Pos}
	defer rd.close()
	now, err := rd.MemberEvents(user, t.Pos)
	if err != nil {
		return nil, fmt.Errorf("reading memberships: %w", err)
	}
	before, err := rd.membershipsBefore(user, &f, now)
	if err != nil {
		return nil, err
	}
	dl, err := s.deviceLists(rd, user, f.Pos, t.Pos, defaultPage, now, before)
	if err != nil {
		return nil, fmt.Errorf("device lists: %w", err)
	}
	if dl != nil {
		resp.Changed = append(resp.Changed, dl.Changed...)
		resp.Left = append(resp.Left, dl.Left...)
	}
	return resp, nil
}

// defaultPage is the timeline page of a sync without a timeline limit:
// GET /keys/changes looks for the window's events in cache entries of
// that size.
const defaultPage = 50

func isMemberEventOf(e *room.Event, user id.UserID) bool {
	return e.PDU.Type == "m.room.member" && e.PDU.StateKey != nil && *e.PDU.StateKey == string(user)
}

func inAny(sets map[id.RoomID]map[id.UserID]struct{}, u id.UserID) bool {
	for _, s := range sets {
		if _, ok := s[u]; ok {
			return true
		}
	}
	return false
}

func sortedUsers(m map[id.UserID]bool) []id.UserID {
	out := make([]id.UserID, 0, len(m))
	for u := range m {
		out = append(out, u)
	}
	slices.Sort(out)
	return out
}

// roomSet is a bounded set of rooms, safe for concurrent use.
type roomSet struct {
	mu  sync.Mutex
	m   map[id.RoomID]struct{}
	max int
}

func (s *roomSet) has(r id.RoomID) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.m[r]
	return ok
}

func (s *roomSet) add(r id.RoomID) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.m) >= s.max {
		clear(s.m) // forgetting costs a read, never a wrong answer
	}
	s.m[r] = struct{}{}
}

// roomKey is the cache key of what is read of a room's current state:
// the room's last event as the notifier knows it. cacheable is false when
// that event is above r.to: the snapshot (which holds everything up to
// r.to) may have been opened before it, and its state must not be
// remembered as the state after that event. Remembering state newer than
// its key is harmless (see the top of this file).
func (r *reader) roomKey(rid id.RoomID) (k stateKey, cacheable bool) {
	k = stateKey{rid, r.s.n.roomLastEvent(rid)}
	return k, k.Pos <= r.to
}

// encrypted reports which rooms have m.room.encryption in their current
// state. A room, once encrypted, stays so; an unencrypted one is cached
// until its next event.
func (r *reader) encrypted(rooms []id.RoomID) (map[id.RoomID]bool, error) {
	out := make(map[id.RoomID]bool, len(rooms))
	var missing []id.RoomID
	var keys []stateKey
	var cacheable []bool
	for _, rid := range rooms {
		if r.s.cache.encrypted.has(rid) {
			out[rid] = true
			continue
		}
		k, ok := r.roomKey(rid)
		if plain, hit := r.s.cache.plain.peek(k); hit && plain && ok {
			out[rid] = false
			continue
		}
		missing, keys, cacheable = append(missing, rid), append(keys, k), append(cacheable, ok)
	}
	if len(missing) == 0 {
		return out, nil
	}
	db, err := r.db()
	if err != nil {
		return nil, err
	}
	enc, err := db.EncryptedRooms(missing)
	if err != nil {
		return nil, fmt.Errorf("reading which rooms are encrypted: %w", err)
	}
	for _, rid := range enc {
		r.s.cache.encrypted.add(rid)
	}
	for i, rid := range missing {
		e := slices.Contains(enc, rid)
		out[rid] = e
		if !e && cacheable[i] {
			r.s.cache.plain.put(keys[i], true)
		}
	}
	return out, nil
}

// members is each room's joined members in its current state.
func (r *reader) members(rooms []id.RoomID) (map[id.RoomID]map[id.UserID]struct{}, error) {
	out := make(map[id.RoomID]map[id.UserID]struct{}, len(rooms))
	var missing []id.RoomID
	var keys []stateKey
	var cacheable []bool
	for _, rid := range rooms {
		k, ok := r.roomKey(rid)
		if ms, hit := r.s.cache.roomMembers.peek(k); hit && ok {
			out[rid] = ms
			continue
		}
		missing, keys, cacheable = append(missing, rid), append(keys, k), append(cacheable, ok)
	}
	if len(missing) == 0 {
		return out, nil
	}
	db, err := r.db()
	if err != nil {
		return nil, err
	}
	got, err := db.JoinedMembers(missing)
	if err != nil {
		return nil, fmt.Errorf("reading joined members: %w", err)
	}
	for i, rid := range missing {
		ms := make(map[id.UserID]struct{}, len(got[rid]))
		for _, u := range got[rid] {
			ms[u] = struct{}{}
		}
		out[rid] = ms
		if cacheable[i] {
			r.s.cache.roomMembers.put(keys[i], ms)
		}
	}
	return out, nil
}

// encryptedMembers is members for those of rooms that are encrypted; the
// others are left out of the map.
func (r *reader) encryptedMembers(rooms []id.RoomID) (map[id.RoomID]map[id.UserID]struct{}, error) {
	if len(rooms) == 0 {
		return nil, nil
	}
	enc, err := r.encrypted(rooms)
	if err != nil {
		return nil, err
	}
	var encRooms []id.RoomID
	for _, rid := range rooms {
		if enc[rid] {
			encRooms = append(encRooms, rid)
		}
	}
	if len(encRooms) == 0 {
		return nil, nil
	}
	return r.members(encRooms)
}

// membersAt is the room's joined members in its state after every event
// at or below pos.
func (r *reader) membersAt(rid id.RoomID, pos int64) (map[id.UserID]struct{}, error) {
	state, err := r.stateIDs(rid, pos)
	if err != nil {
		return nil, fmt.Errorf("reading state: %w", err)
	}
	var ids []id.EventID
	for k, eid := range state {
		if k.Type == "m.room.member" {
			ids = append(ids, eid)
		}
	}
	evs, err := r.events(ids)
	if err != nil {
		return nil, err
	}
	out := map[id.UserID]struct{}{}
	for _, e := range evs {
		if membershipOf(e) == "join" {
			out[id.UserID(*e.PDU.StateKey)] = struct{}{}
		}
	}
	return out, nil
}

// keyChanges lists the users whose devices or keys changed in (since, to]:
// from the notifier's log of recent changes, or else from the database.
func (r *reader) keyChanges(since, to int64) ([]id.UserID, error) {
	if users, ok := r.s.n.keyChangesIn(since, to); ok {
		return users, nil
	}
	return shared(r, r.s.cache.keyChanges, [2]int64{since, to}, func() ([]id.UserID, error) {
		db, err := r.db()
		if err != nil {
			return nil, err
		}
		users, err := db.DeviceListChanges(since, to)
		if err != nil {
			return nil, fmt.Errorf("reading device list changes: %w", err)
		}
		return users, nil
	})
}

// sharingEvents is each room's member and encryption events in
// (since, to], oldest first: from the timeline cache when its entry for
// the window holds all of it (fewer events than the page), else read.
func (r *reader) sharingEvents(rooms []id.RoomID, since, to int64, page int) (map[id.RoomID][]*room.Event, error) {
	out := make(map[id.RoomID][]*room.Event, len(rooms))
	var missing []TimelineReq
	for _, rid := range rooms {
		if tl, ok := r.s.cache.timelines.peek(TimelineReq{Room: rid, From: since, To: to, Limit: page}); ok && len(tl) < page {
			var evs []*room.Event
			for _, e := range slices.Backward(tl) { // tl is newest first
				if isSharingEvent(e) {
					evs = append(evs, e)
				}
			}
			out[rid] = evs
			continue
		}
		q := TimelineReq{Room: rid, From: since, To: to}
		if evs, ok := r.s.cache.sharing.peek(q); ok {
			out[rid] = evs
			continue
		}
		missing = append(missing, q)
	}
	if len(missing) == 0 {
		return out, nil
	}
	db, err := r.db()
	if err != nil {
		return nil, err
	}
	got, err := db.SharingEvents(missing)
	if err != nil {
		return nil, fmt.Errorf("reading member events: %w", err)
	}
	for _, q := range missing {
		out[q.Room] = got[q]
		r.s.cache.sharing.put(q, got[q])
	}
	return out, nil
}

func isSharingEvent(e *room.Event) bool {
	p := e.PDU
	return p.StateKey != nil && (p.Type == "m.room.member" || p.Type == "m.room.encryption" && *p.StateKey == "")
}

// prevMembership is the membership of a member event's user just before
// it ("" if none): what tells a join from a profile change.
func (r *reader) prevMembership(e *room.Event) (string, error) {
	return shared(r, r.s.cache.prevMember, e.ID, func() (string, error) {
		_, m, err := r.SnapshotVisibility(e.StateBefore, id.UserID(*e.PDU.StateKey))
		if err != nil {
			return "", fmt.Errorf("reading the membership before %s: %w", e.ID, err)
		}
		return m, nil
	})
}
