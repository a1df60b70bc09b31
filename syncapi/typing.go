package syncapi

import (
	"slices"
	"sync"
	"time"

	"maunium.net/go/mautrix/id"
)

// maxTypingTimeout caps how long one typing notification lasts.
const maxTypingTimeout = 2 * time.Minute

// typing holds who is typing in which room, in memory: typing is
// ephemeral and never persisted. Every change (including an expiry) bumps
// the notifier's typing serial for the room, which is how /sync learns of
// it. (Several processes will share it through the notifier's channel;
// today it is per process.)
type typing struct {
	mu    sync.Mutex
	n     *Notifier
	rooms map[id.RoomID]map[id.UserID]*time.Timer
}

func newTyping(n *Notifier) *typing {
	return &typing{n: n, rooms: map[id.RoomID]map[id.UserID]*time.Timer{}}
}

// set starts (for timeout) or stops user typing in roomID.
func (t *typing) set(roomID id.RoomID, user id.UserID, on bool, timeout time.Duration) {
	t.mu.Lock()
	users := t.rooms[roomID]
	timer, was := users[user]
	if was {
		timer.Stop()
	}
	switch {
	case on:
		if users == nil {
			users = map[id.UserID]*time.Timer{}
			t.rooms[roomID] = users
		}
		var self *time.Timer
		self = time.AfterFunc(min(timeout, maxTypingTimeout), func() { t.expire(roomID, user, self) })
		users[user] = self
	case was:
		t.drop(roomID, user)
	}
	t.mu.Unlock()
	// A renewed notification changes nothing others can see.
	if on != was {
		t.n.TypingChanged(roomID)
	}
}

// expire ends a typing notification whose timer fired, unless it was
// renewed or stopped meanwhile (then the timer is no longer the room's).
func (t *typing) expire(roomID id.RoomID, user id.UserID, timer *time.Timer) {
	t.mu.Lock()
	current := t.rooms[roomID][user] == timer
	if current {
		t.drop(roomID, user)
	}
	t.mu.Unlock()
	if current {
		t.n.TypingChanged(roomID)
	}
}

func (t *typing) drop(roomID id.RoomID, user id.UserID) {
	delete(t.rooms[roomID], user)
	if len(t.rooms[roomID]) == 0 {
		delete(t.rooms, roomID)
	}
}

// users lists who is typing in roomID now, sorted.
func (t *typing) users(roomID id.RoomID) []id.UserID {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]id.UserID, 0, len(t.rooms[roomID]))
	for u := range t.rooms[roomID] {
		out = append(out, u)
	}
	slices.Sort(out)
	return out
}
