package syncapi

import (
	"cmp"
	"slices"
	"sync"
	"time"

	"maunium.net/go/mautrix/id"
)

// Notifier wakes waiting /sync requests. It is told positions, never data:
// after a commit, the highest committed stream position and the rooms and
// users it touched; after a typing change, the room. A waiting request
// registers the user and rooms it cares about and is woken only when one
// of them changes; it then reads the changes itself.
//
// Lost wake-ups are impossible because registration and the "did anything
// change since my token?" check happen under the same lock as the updates:
// the notifier remembers, per room and per user, the last position that
// touched it, so a change that lands between a request's read and its
// registration is seen by the check.
type Notifier struct {
	mu     sync.Mutex
	pos    int64 // every stream position at or below this is committed
	typing int64 // the typing serial
	// base is the position the notifier started at: it knows nothing of
	// changes at or below it.
	base int64
	// last change per room (stream and typing) and per user: any kind
	// (for waking), and per kind (so a response can skip reading what
	// did not change).
	roomPos      map[id.RoomID]int64
	roomTyping   map[id.RoomID]int64
	userPos      map[id.UserID]int64
	roomEvents   map[id.RoomID]int64
	roomReceipts map[id.RoomID]int64
	// roomDeviceLists: a member's devices or keys changed (a device-list
	// change is told with the changing user's joined rooms).
	roomDeviceLists map[id.RoomID]int64
	// keyLog is the users of the recent KindDeviceLists commits, in
	// position order; it holds every such commit above keyLogFrom.
	keyLog      []keyLogEntry
	keyLogFrom  int64
	userKinds   map[id.UserID]*[kinds]int64
	presencePos int64
	byRoom      map[id.RoomID]map[*Listener]struct{}
	byUser      map[id.UserID]map[*Listener]struct{}
	waiting     int
}

// Kind is what a committed change was: a set of bits.
type Kind uint8

const (
	// KindEvents: room events (rooms); member events (their users).
	KindEvents Kind = 1 << iota
	// KindReceipts: receipts (rooms for public ones, users for all).
	KindReceipts
	// KindAccountData: account data of users.
	KindAccountData
	// KindPresence: presence of users (waking the rooms they are in).
	KindPresence
	// KindToDevice: to-device messages (their target users).
	KindToDevice
	// KindDeviceLists: a user's devices or keys changed (the user, and
	// the rooms they are in, so that everyone sharing one wakes). The
	// users must include every user whose change the commit recorded
	// (device_list_changes): the notifier keeps a log of them
	// (keyChangesIn), and a user missing there would be missed by
	// device_lists.
	KindDeviceLists
	kinds = 6
)

// NewNotifier starts at the database's highest committed position. The
// typing serial starts at the current time in milliseconds, so that it is
// above any serial of an earlier process (unless that one saw more than a
// thousand typing changes a second) and old tokens do not hide new typing.
func NewNotifier(pos int64, now time.Time) *Notifier {
	return &Notifier{
		pos:          pos,
		base:         pos,
		keyLogFrom:   pos,
		typing:       now.UnixMilli(),
		roomPos:      map[id.RoomID]int64{},
		roomTyping:   map[id.RoomID]int64{},
		userPos:      map[id.UserID]int64{},
		roomEvents:   map[id.RoomID]int64{},
		roomReceipts: map[id.RoomID]int64{},
		userKinds:    map[id.UserID]*[kinds]int64{},
		byRoom:       map[id.RoomID]map[*Listener]struct{}{},
		byUser:       map[id.UserID]map[*Listener]struct{}{},

		roomDeviceLists: map[id.RoomID]int64{},
	}
}

// Listener is one waiting request's registration.
type Listener struct {
	wake  func()
	user  id.UserID
	rooms []id.RoomID
}

// keyLogEntry is one user's device-list change at pos.
type keyLogEntry struct {
	pos  int64
	user id.UserID
}

// maxKeyLog bounds the device-list change log: older windows are read from
// the database.
const maxKeyLog = 20_000

// Start sets the database's highest committed position, read after the
// notifier became the storage listener: the notifier knows nothing of the
// changes at or below it, so tokens from before it are read in full.
func (n *Notifier) Start(pos int64) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.pos = max(n.pos, pos)
	n.base = pos
	n.keyLogFrom = max(n.keyLogFrom, pos)
}

// Current is the position a response may read up to now.
func (n *Notifier) Current() Token {
	n.mu.Lock()
	defer n.mu.Unlock()
	return Token{Pos: n.pos, Typing: n.typing}
}

// Committed is the storage stream listener: every position at or below
// pos is committed, and changes of the given kinds touched rooms and users.
func (n *Notifier) Committed(pos int64, k Kind, rooms []id.RoomID, users []id.UserID) {
	n.mu.Lock()
	defer n.mu.Unlock()
	// Calls may arrive out of commit order; positions below pos are
	// committed either way, so the maximum is right.
	n.pos = max(n.pos, pos)
	if k&KindPresence != 0 {
		n.presencePos = max(n.presencePos, pos)
	}
	if k&KindDeviceLists != 0 {
		if len(n.keyLog) > 0 && len(n.keyLog)+len(users) > maxKeyLog {
			// Forget the older half (whole commits): the log then covers
			// only what is above the last position forgotten.
			n.keyLogFrom = max(n.keyLogFrom, n.keyLog[len(n.keyLog)/2].pos)
			i, _ := slices.BinarySearchFunc(n.keyLog, n.keyLogFrom+1, keyLogCmp)
			n.keyLog = slices.Clone(n.keyLog[i:])
		}
		// Commits arrive in position order (storage's stream gate); an
		// out-of-order one would still be placed in order.
		i, _ := slices.BinarySearchFunc(n.keyLog, pos+1, keyLogCmp)
		for _, u := range users {
			n.keyLog = slices.Insert(n.keyLog, i, keyLogEntry{pos, u})
			i++
		}
	}
	for _, r := range rooms {
		n.roomPos[r] = max(n.roomPos[r], pos)
		if k&KindEvents != 0 {
			n.roomEvents[r] = max(n.roomEvents[r], pos)
		}
		if k&KindReceipts != 0 {
			n.roomReceipts[r] = max(n.roomReceipts[r], pos)
		}
		if k&KindDeviceLists != 0 {
			n.roomDeviceLists[r] = max(n.roomDeviceLists[r], pos)
		}
		wake(n.byRoom[r])
	}
	for _, u := range users {
		n.userPos[u] = max(n.userPos[u], pos)
		uk := n.userKinds[u]
		if uk == nil {
			uk = new([kinds]int64)
			n.userKinds[u] = uk
		}
		for i := range kinds {
			if k&(1<<i) != 0 {
				uk[i] = max(uk[i], pos)
			}
		}
		wake(n.byUser[u])
	}
}

// kindIndex is the bit number of a single kind.
func kindIndex(k Kind) int {
	for i := range kinds {
		if k == 1<<i {
			return i
		}
	}
	panic("not a single kind")
}

// userChangedAfter reports whether changes of kind k for user may exist
// after pos. It cannot rule out changes from before the notifier started.
func (n *Notifier) userChangedAfter(user id.UserID, k Kind, pos int64) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if pos < n.base {
		return true
	}
	uk := n.userKinds[user]
	return uk != nil && uk[kindIndex(k)] > pos
}

// userLastChange is the last position of a kind-k change for user, or
// the notifier's base if none since it started.
func (n *Notifier) userLastChange(user id.UserID, k Kind) int64 {
	n.mu.Lock()
	defer n.mu.Unlock()
	if uk := n.userKinds[user]; uk != nil {
		return max(uk[kindIndex(k)], n.base)
	}
	return n.base
}

// roomChangedAfter reports whether the room had changes of kind k
// (KindEvents, KindReceipts or KindDeviceLists) after pos.
func (n *Notifier) roomChangedAfter(roomID id.RoomID, k Kind, pos int64) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if pos < n.base {
		return true
	}
	switch k {
	case KindEvents:
		return n.roomEvents[roomID] > pos
	case KindReceipts:
		return n.roomReceipts[roomID] > pos
	case KindDeviceLists:
		return n.roomDeviceLists[roomID] > pos
	}
	panic("not a room kind")
}

// roomLastEvent is the position of the room's last event, or the
// notifier's base if none since it started: what is read of the room's
// current state is the same for every read keyed by it.
func (n *Notifier) roomLastEvent(roomID id.RoomID) int64 {
	n.mu.Lock()
	defer n.mu.Unlock()
	return max(n.roomEvents[roomID], n.base)
}

// presenceChangedAfter reports whether any presence changed after pos.
func (n *Notifier) presenceChangedAfter(pos int64) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return pos < n.base || n.presencePos > pos
}

// keyChangesIn lists the users with a device-list change in (since, to],
// each once, from the log; ok is false when the log does not reach back to
// since (before the notifier started, or trimmed), and the database must
// be asked. Commits arrive in position order, so the log is sorted.
func (n *Notifier) keyChangesIn(since, to int64) (users []id.UserID, ok bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if since < n.keyLogFrom {
		return nil, false
	}
	i, _ := slices.BinarySearchFunc(n.keyLog, since+1, keyLogCmp)
	seen := map[id.UserID]bool{}
	for ; i < len(n.keyLog) && n.keyLog[i].pos <= to; i++ {
		if u := n.keyLog[i].user; !seen[u] {
			seen[u] = true
			users = append(users, u)
		}
	}
	return users, true
}

func keyLogCmp(e keyLogEntry, pos int64) int { return cmp.Compare(e.pos, pos) }

// TypingChanged bumps the typing serial for a room and returns it.
func (n *Notifier) TypingChanged(roomID id.RoomID) int64 {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.typing++
	n.roomTyping[roomID] = n.typing
	wake(n.byRoom[roomID])
	return n.typing
}

// typingSince reports whether roomID's typing changed after serial.
func (n *Notifier) typingSince(roomID id.RoomID, serial int64) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.roomTyping[roomID] > serial
}

func wake(ls map[*Listener]struct{}) {
	for l := range ls {
		l.wake()
	}
}

// Listen registers a request for user and rooms, waiting for changes after
// since, and reports whether something already changed. Otherwise wake is
// called when something does, until Close. wake runs under the notifier's
// lock, on the committing goroutine: it must not block or call the
// notifier, and it may be called more than once.
func (n *Notifier) Listen(user id.UserID, rooms []id.RoomID, since Token, wake func()) (*Listener, bool) {
	l := &Listener{wake: wake, user: user, rooms: rooms}
	n.mu.Lock()
	defer n.mu.Unlock()
	// A token from before the notifier started may be behind changes it
	// never heard of (to-device messages left after a restart, say): the
	// request reads once instead of waiting for its timeout.
	changed := since.Pos < n.base || n.userPos[user] > since.Pos
	n.waiting++
	add(n.byUser, user, l)
	for _, r := range rooms {
		changed = changed || n.roomPos[r] > since.Pos || n.roomTyping[r] > since.Typing
		add(n.byRoom, r, l)
	}
	return l, changed
}

func add[K comparable](m map[K]map[*Listener]struct{}, k K, l *Listener) {
	s := m[k]
	if s == nil {
		s = map[*Listener]struct{}{}
		m[k] = s
	}
	s[l] = struct{}{}
}

func remove[K comparable](m map[K]map[*Listener]struct{}, k K, l *Listener) {
	if s := m[k]; s != nil {
		delete(s, l)
		if len(s) == 0 {
			delete(m, k)
		}
	}
}

// Close unregisters l.
func (n *Notifier) Close(l *Listener) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.waiting--
	remove(n.byUser, l.user, l)
	for _, r := range l.rooms {
		remove(n.byRoom, r, l)
	}
}

// WakeAll wakes every listener (shutdown). Every listener is registered
// under its user, so the user index reaches them all.
func (n *Notifier) WakeAll() {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, ls := range n.byUser {
		wake(ls)
	}
}

// Waiting is the number of registered listeners: requests waiting.
func (n *Notifier) Waiting() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.waiting
}
