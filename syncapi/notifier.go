package syncapi

import (
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
	userKinds    map[id.UserID]*[kinds]int64
	presencePos  int64
	byRoom       map[id.RoomID]map[*Listener]struct{}
	byUser       map[id.UserID]map[*Listener]struct{}
	waiting      int
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
	// the rooms they are in, so that everyone sharing one wakes).
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
		typing:       now.UnixMilli(),
		roomPos:      map[id.RoomID]int64{},
		roomTyping:   map[id.RoomID]int64{},
		userPos:      map[id.UserID]int64{},
		roomEvents:   map[id.RoomID]int64{},
		roomReceipts: map[id.RoomID]int64{},
		userKinds:    map[id.UserID]*[kinds]int64{},
		byRoom:       map[id.RoomID]map[*Listener]struct{}{},
		byUser:       map[id.UserID]map[*Listener]struct{}{},
	}
}

// Listener is one waiting request's registration.
type Listener struct {
	wake  func()
	user  id.UserID
	rooms []id.RoomID
}

// Start sets the database's highest committed position, read after the
// notifier became the storage listener: the notifier knows nothing of the
// changes at or below it, so tokens from before it are read in full.
func (n *Notifier) Start(pos int64) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.pos = max(n.pos, pos)
	n.base = pos
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
	for _, r := range rooms {
		n.roomPos[r] = max(n.roomPos[r], pos)
		if k&KindEvents != 0 {
			n.roomEvents[r] = max(n.roomEvents[r], pos)
		}
		if k&KindReceipts != 0 {
			n.roomReceipts[r] = max(n.roomReceipts[r], pos)
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
// (KindEvents or KindReceipts) after pos.
func (n *Notifier) roomChangedAfter(roomID id.RoomID, k Kind, pos int64) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if pos < n.base {
		return true
	}
	if k == KindEvents {
		return n.roomEvents[roomID] > pos
	}
	return n.roomReceipts[roomID] > pos
}

// presenceChangedAfter reports whether any presence changed after pos.
func (n *Notifier) presenceChangedAfter(pos int64) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return pos < n.base || n.presencePos > pos
}

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
	changed := n.userPos[user] > since.Pos
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
