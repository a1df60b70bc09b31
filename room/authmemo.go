package room

import (
	"strings"
	"sync"

	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/federation/pdu"
	"maunium.net/go/mautrix/id"
)

// authMemo remembers which message events the auth rules allowed, so that
// a room's stream of messages is not authorised from scratch each time:
// eventauth.Authorize decodes the create, member and power levels events
// again for every event, a tenth of the CPU a send costs.
//
// For an event without a state key, other than m.room.create (rule 1) and
// m.room.redaction (left out: its rules have changed between room
// versions and may again), the rules read nothing of the event itself but
// its room ID, sender, type and auth_events (rules 2 to 8 and 11), and
// every auth event is fixed by its ID (an event's content, room and
// rejection never change once stored). So Authorize allowing one such
// event allows every event with the same room version, room ID, sender,
// type and auth_events, which is the memo's key. Only allowances are
// remembered: a refusal is rare and answered by Authorize again.
type authMemo struct {
	mu sync.Mutex
	m  map[string]struct{}
}

// authMemoSize bounds the memo; it is emptied when full. One entry is a
// sender sending one type on one room state: a few hundred bytes.
const authMemoSize = 8192

// authMemoKey is the memo's key for p, and whether p may be remembered.
func authMemoKey(version id.RoomVersion, p *pdu.PDU) (string, bool) {
	if p.StateKey != nil || p.Type == event.StateCreate.Type || p.Type == event.EventRedaction.Type {
		return "", false
	}
	var b strings.Builder
	n := len(version) + len(p.RoomID) + len(p.Sender) + len(p.Type) + 4
	for _, a := range p.AuthEvents {
		n += len(a) + 1
	}
	b.Grow(n)
	// NUL cannot occur in any part (IDs and event types are printable), so
	// the parts cannot run into each other.
	for _, s := range []string{string(version), string(p.RoomID), string(p.Sender), p.Type} {
		b.WriteString(s)
		b.WriteByte(0)
	}
	for _, a := range p.AuthEvents {
		b.WriteString(string(a))
		b.WriteByte(0)
	}
	return b.String(), true
}

func (m *authMemo) allowed(key string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	_, ok := m.m[key]
	return ok
}

func (m *authMemo) allow(key string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.m == nil || len(m.m) >= authMemoSize {
		m.m = make(map[string]struct{})
	}
	m.m[key] = struct{}{}
}
