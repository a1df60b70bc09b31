package syncapi

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"
)

// ackStore records acknowledgements and sends; nothing else is used.
type ackStore struct {
	Store
	mu    sync.Mutex
	acks  []int64
	sends []ToDeviceSend
	drop  int
}

func (s *ackStore) AckToDevice(_ context.Context, _ id.UserID, _ id.DeviceID, upTo int64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.acks = append(s.acks, upTo)
	return nil
}

func (s *ackStore) SendToDevice(_ context.Context, m ToDeviceSend) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sends = append(s.sends, m)
	return s.drop, nil
}

func (s *ackStore) taken() []int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := s.acks
	s.acks = nil
	return out
}

// TestToDeviceAckOnlyWhenSomethingMayBeWaiting: a sync's token deletes the
// device's delivered messages, but a device with nothing sent to its user
// since its last acknowledgement costs no write.
func TestToDeviceAckOnlyWhenSomethingMayBeWaiting(t *testing.T) {
	n := NewNotifier(0, time.Now())
	n.Start(10)
	st := &ackStore{}
	s := New(Config{}, st, nil, n, nil)
	ctx := context.Background()
	ack := func(user id.UserID, dev id.DeviceID, since int64) []int64 {
		t.Helper()
		if err := s.ackToDevice(ctx, user, dev, since); err != nil {
			t.Fatal(err)
		}
		return st.taken()
	}
	if got := ack("@a:x", "D", 10); len(got) != 1 || got[0] != 10 {
		t.Fatalf("first sync of a device in this process: acks %v, want [10]", got)
	}
	if got := ack("@a:x", "D", 10); len(got) != 0 {
		t.Fatalf("same token again, nothing sent: acks %v", got)
	}
	n.Committed(11, KindEvents, []id.RoomID{"!r:x"}, []id.UserID{"@a:x"})
	if got := ack("@a:x", "D", 11); len(got) != 0 {
		t.Fatalf("a newer token with no to-device message since: acks %v", got)
	}
	n.Committed(12, KindToDevice, nil, []id.UserID{"@b:x"})
	if got := ack("@a:x", "D", 12); len(got) != 0 {
		t.Fatalf("a message for another user: acks %v", got)
	}
	n.Committed(13, KindToDevice, nil, []id.UserID{"@a:x"})
	if got := ack("@a:x", "D", 12); len(got) != 1 {
		// the message at 13 is not below the token, but the device's
		// messages below it are not known to be gone: one DELETE
		t.Fatalf("a message for the user after the last ack: acks %v, want one", got)
	}
	if got := ack("@a:x", "D", 13); len(got) != 1 || got[0] != 13 {
		t.Fatalf("the token past the message: acks %v, want [13]", got)
	}
	if got := ack("@a:x", "D", 13); len(got) != 0 {
		t.Fatalf("acknowledged already: %v", got)
	}
	if got := ack("@a:x", "D", 5); len(got) != 0 {
		t.Fatalf("an old token (a lost response) behind the acknowledged position: %v", got)
	}
	if got := ack("@a:x", "OTHER", 13); len(got) != 1 {
		t.Fatalf("another device of the user has its own acknowledgements: %v", got)
	}
	if got := ack("@a:x", "", 13); len(got) != 0 {
		t.Fatalf("a request without a device: %v", got)
	}
}

func TestSendToDeviceValidation(t *testing.T) {
	n := NewNotifier(0, time.Now())
	st := &ackStore{}
	s := New(Config{ServerName: "here", ToDeviceBacklog: 3}, st, nil, n, nil)
	ctx := context.Background()
	obj := json.RawMessage(`{"a":1}`)
	for _, c := range []struct {
		name     string
		typ, txn string
		msgs     map[id.UserID]map[id.DeviceID]json.RawMessage
		errcode  string
	}{
		{"not a user", "m.t", "1", map[id.UserID]map[id.DeviceID]json.RawMessage{"alice": {"*": obj}}, "M_INVALID_PARAM"},
		{"no server", "m.t", "1", map[id.UserID]map[id.DeviceID]json.RawMessage{"@alice": {"*": obj}}, "M_INVALID_PARAM"},
		{"empty device", "m.t", "1", map[id.UserID]map[id.DeviceID]json.RawMessage{"@a:here": {"": obj}}, "M_INVALID_PARAM"},
		{"array", "m.t", "1", map[id.UserID]map[id.DeviceID]json.RawMessage{"@a:here": {"D": json.RawMessage(` [1]`)}}, "M_BAD_JSON"},
		{"string", "m.t", "1", map[id.UserID]map[id.DeviceID]json.RawMessage{"@a:here": {"D": json.RawMessage(`"x"`)}}, "M_BAD_JSON"},
		{"remote content is checked too", "m.t", "1", map[id.UserID]map[id.DeviceID]json.RawMessage{"@a:there": {"D": json.RawMessage(`null`)}}, "M_BAD_JSON"},
		{"no type", "", "1", nil, "M_INVALID_PARAM"},
		{"no txn", "m.t", "", nil, "M_INVALID_PARAM"},
	} {
		err := s.SendToDevice(ctx, "@s:here", "SD", c.typ, c.txn, c.msgs)
		var re mautrix.RespError
		if !asRespError(err, &re) || re.ErrCode != c.errcode {
			t.Errorf("%s: %v, want %s", c.name, err, c.errcode)
		}
	}
	if len(st.sends) != 0 {
		t.Fatalf("refused requests reached the store: %v", st.sends)
	}
	// Remote users are dropped; only local ones reach the store, with
	// the configured backlog; the dropped count is kept.
	st.drop = 2
	err := s.SendToDevice(ctx, "@s:here", "SD", "m.t", "9", map[id.UserID]map[id.DeviceID]json.RawMessage{
		"@a:here": {"*": obj}, "@b:there": {"*": obj}, "@c:here": {},
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(st.sends) != 1 || len(st.sends[0].Messages) != 1 || st.sends[0].Messages["@a:here"] == nil ||
		st.sends[0].Backlog != 3 || st.sends[0].TxnID != "9" || st.sends[0].SenderDevice != "SD" {
		t.Fatalf("stored %+v", st.sends)
	}
	if s.ToDeviceDropped() != 2 {
		t.Fatalf("dropped counter %d, want 2", s.ToDeviceDropped())
	}
	// Only remote users: nothing to store.
	if err := s.SendToDevice(ctx, "@s:here", "SD", "m.t", "10", map[id.UserID]map[id.DeviceID]json.RawMessage{"@b:there": {"*": obj}}); err != nil || len(st.sends) != 1 {
		t.Fatalf("remote-only request: %v, %d stores", err, len(st.sends))
	}
}

func asRespError(err error, re *mautrix.RespError) bool {
	r, ok := err.(mautrix.RespError)
	if ok {
		*re = r
	}
	return ok
}

// TestResponseNews: to_device and device_lists are news; key counts are
// not, and device_unused_fallback_key_types is never null.
func TestResponseNews(t *testing.T) {
	r := &Response{NextBatch: "s1_0", DeviceOneTimeKeysCount: map[id.KeyAlgorithm]int{"signed_curve25519": 3}}
	if !r.empty() {
		t.Fatal("key counts alone made a response news")
	}
	raw, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(raw), `"device_unused_fallback_key_types":[]`) || strings.Contains(string(raw), "device_lists") ||
		strings.Contains(string(raw), "to_device") {
		t.Fatalf("JSON %s", raw)
	}
	if (&Response{ToDevice: &EventList{}}).empty() {
		t.Fatal("to_device is news")
	}
	if (&Response{DeviceLists: &mautrix.DeviceLists{Changed: []id.UserID{"@a:x"}}}).empty() {
		t.Fatal("device_lists is news")
	}
}

// TestNotifierDeviceListsKind: a device-list change is told per room, kept
// apart from events, and a token from before the notifier started reads
// at once instead of waiting.
func TestNotifierDeviceListsKind(t *testing.T) {
	n := NewNotifier(0, time.Now())
	n.Start(100)
	if l := listen(n, "@a:x", nil, Token{Pos: 99}); !fired(l) {
		t.Fatal("a token from before the notifier started did not report a possible change")
	}
	if l := listen(n, "@a:x", nil, Token{Pos: 100}); fired(l) {
		t.Fatal("nothing changed after the token, yet the listener fired")
	}
	inRoom := listen(n, "@b:x", []id.RoomID{"!r:x"}, n.Current())
	n.Committed(101, KindDeviceLists, []id.RoomID{"!r:x"}, []id.UserID{"@c:x"})
	if !fired(inRoom) {
		t.Fatal("a device-list change did not wake a member of the changer's room")
	}
	if !n.roomChangedAfter("!r:x", KindDeviceLists, 100) || n.roomChangedAfter("!r:x", KindEvents, 100) ||
		n.roomChangedAfter("!r:x", KindReceipts, 100) || n.roomChangedAfter("!other:x", KindDeviceLists, 100) {
		t.Fatal("device-list change not told apart")
	}
	if !n.userChangedAfter("@c:x", KindDeviceLists, 100) || n.userChangedAfter("@c:x", KindToDevice, 100) {
		t.Fatal("user kinds")
	}
	if got := n.roomLastEvent("!r:x"); got != 100 {
		t.Fatalf("last event of a room with no events since start %d, want the base 100", got)
	}
	n.Committed(102, KindEvents, []id.RoomID{"!r:x"}, nil)
	if got := n.roomLastEvent("!r:x"); got != 102 {
		t.Fatalf("last event %d, want 102", got)
	}
}

// TestNotifierKeyLog: the log of device-list changes answers windows it
// covers, users once each, and sends older windows (before the start,
// or trimmed) to the database.
func TestNotifierKeyLog(t *testing.T) {
	n := NewNotifier(0, time.Now())
	n.Start(100)
	if _, ok := n.keyChangesIn(99, 100); ok {
		t.Fatal("a window from before the start answered from the log")
	}
	if users, ok := n.keyChangesIn(100, 100); !ok || len(users) != 0 {
		t.Fatalf("empty window: %v %v", users, ok)
	}
	n.Committed(101, KindDeviceLists, nil, []id.UserID{"@a:x"})
	n.Committed(102, KindEvents, nil, []id.UserID{"@not:x"})
	n.Committed(103, KindDeviceLists, nil, []id.UserID{"@b:x", "@a:x"})
	n.Committed(105, KindDeviceLists, nil, []id.UserID{"@c:x"})
	for _, c := range []struct {
		since, to int64
		want      string
	}{{100, 105, "[@a:x @b:x @c:x]"}, {101, 104, "[@b:x @a:x]"}, {100, 101, "[@a:x]"}, {103, 104, "[]"}, {104, 110, "[@c:x]"}} {
		users, ok := n.keyChangesIn(c.since, c.to)
		if got := fmt.Sprint(users); !ok || got != c.want && !(c.want == "[]" && users == nil) {
			t.Errorf("(%d, %d]: %v %v, want %s", c.since, c.to, users, ok, c.want)
		}
	}
	// Past the bound, the older half goes: windows reaching into it are
	// the database's.
	for i := range maxKeyLog {
		n.Committed(int64(200+i), KindDeviceLists, nil, []id.UserID{id.UserID(fmt.Sprintf("@u%d:x", i))})
	}
	if len(n.keyLog) > maxKeyLog {
		t.Fatalf("log of %d entries, bound %d", len(n.keyLog), maxKeyLog)
	}
	if _, ok := n.keyChangesIn(100, 300); ok {
		t.Fatal("a window reaching into trimmed entries answered from the log")
	}
	last := int64(200 + maxKeyLog - 1)
	if users, ok := n.keyChangesIn(last-2, last); !ok || len(users) != 2 {
		t.Fatalf("recent window: %v %v", users, ok)
	}
}
