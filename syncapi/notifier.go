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
	// last change per room (stream and typing) and per user
	roomPos    map[id.RoomID]int64
	roomTyping map[id.RoomID]int64
	userPos    map[id.UserID]int64
	byRoom     map[id.RoomID]map[*Listener]struct{}
	byUser     map[id.UserID]map[*Listener]struct{}
	waiting    int
}

// NewNotifier starts at the database's highest committed position. The
// typing serial starts at the current time in milliseconds, so that it is
// above any serial of an earlier process (unless that one saw more than a
// thousand typing changes a second) and old tokens do not hide new typing.
func NewNotifier(pos int64, now time.Time) *Notifier {
	return &Notifier{
		pos:        pos,
		typing:     now.UnixMilli(),
		roomPos:    map[id.RoomID]int64{},
		roomTyping: map[id.RoomID]int64{},
		userPos:    map[id.UserID]int64{},
		byRoom:     map[id.RoomID]map[*Listener]struct{}{},
		byUser:     map[id.UserID]map[*Listener]struct{}{},
	}
}

// Listener is one waiting request. C receives a value when something it
// registered for changed.
type Listener struct {
	C     chan struct{}
	user  id.UserID
	rooms []id.RoomID
}

// Current is the position a response may read up to now.
func (n *Notifier) Current() Token {
	n.mu.Lock()
	defer n.mu.Unlock()
	return Token{Pos: n.pos, Typing: n.typing}
}

// Committed is the storage stream listener: every position at or below
// pos is committed, and rooms and users changed.
func (n *Notifier) Committed(pos int64, rooms []id.RoomID, users []id.UserID) {
	n.mu.Lock()
	defer n.mu.Unlock()
	// Calls may arrive out of commit order; positions below pos are
	// committed either way, so the maximum is right.
	n.pos = max(n.pos, pos)
	for _, r := range rooms {
		n.roomPos[r] = max(n.roomPos[r], pos)
		wake(n.byRoom[r])
	}
	for _, u := range users {
		n.userPos[u] = max(n.userPos[u], pos)
		wake(n.byUser[u])
	}
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
		select {
		case l.C <- struct{}{}:
		default: // already signalled
		}
	}
}

// Listen registers a request for user and rooms, waiting for changes after
// since. If something already changed, C is signalled at once.
func (n *Notifier) Listen(user id.UserID, rooms []id.RoomID, since Token) *Listener {
	l := &Listener{C: make(chan struct{}, 1), user: user, rooms: rooms}
	n.mu.Lock()
	defer n.mu.Unlock()
	changed := n.userPos[user] > since.Pos
	n.waiting++
	add(n.byUser, user, l)
	for _, r := range rooms {
		changed = changed || n.roomPos[r] > since.Pos || n.roomTyping[r] > since.Typing
		add(n.byRoom, r, l)
	}
	if changed {
		l.C <- struct{}{}
	}
	return l
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

// Waiting is the number of registered listeners: requests waiting.
func (n *Notifier) Waiting() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.waiting
}
