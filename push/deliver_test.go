package push

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"sync"
	"testing"
	"time"

	"maunium.net/go/mautrix/id"
	"maunium.net/go/mautrix/pushrules/pushgateway"
)

// memDeliveryStore is an in-memory DeliveryStore.
type memDeliveryStore struct {
	mu      sync.Mutex
	pushers map[pusherKey]*Pusher
	rows    map[id.UserID][]PendingNotification
	events  map[id.EventID]PushEvent
	unread  map[id.UserID]int
}

func newMemDeliveryStore() *memDeliveryStore {
	return &memDeliveryStore{
		pushers: map[pusherKey]*Pusher{}, rows: map[id.UserID][]PendingNotification{},
		events: map[id.EventID]PushEvent{}, unread: map[id.UserID]int{},
	}
}

func (m *memDeliveryStore) addPusher(p Pusher) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.pushers[keyOf(p)] = &p
}

func (m *memDeliveryStore) pusher(user id.UserID, appID, pushKey string) (Pusher, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	p, ok := m.pushers[pusherKey{user, appID, pushKey}]
	if !ok {
		return Pusher{}, false
	}
	return *p, true
}

// addRow appends a notification at pos (above every earlier one).
func (m *memDeliveryStore) addRow(user id.UserID, pos int64, eventType, actions string) id.EventID {
	m.mu.Lock()
	defer m.mu.Unlock()
	eid := id.EventID(fmt.Sprintf("$e%d", pos))
	m.rows[user] = append(m.rows[user], PendingNotification{
		StreamPos: pos, RoomID: "!room:x", EventID: eid, EventType: eventType,
		Highlight: actions == `["notify",{"set_tweak":"highlight"}]`, Actions: json.RawMessage(actions),
	})
	m.unread[user]++
	return eid
}

func (m *memDeliveryStore) sorted() []Pusher {
	var out []Pusher
	for _, p := range m.pushers {
		out = append(out, *p)
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.UserID != b.UserID {
			return a.UserID < b.UserID
		}
		if a.AppID != b.AppID {
			return a.AppID < b.AppID
		}
		return a.PushKey < b.PushKey
	})
	return out
}

func (m *memDeliveryStore) PendingPushers(ctx context.Context) ([]Pusher, error) {
	return m.pending(func(PendingNotification) bool { return true }), nil
}

// PendingPushersIn: every user counts as joined to every room.
func (m *memDeliveryStore) PendingPushersIn(_ context.Context, rooms []id.RoomID, users []id.UserID) ([]Pusher, error) {
	return m.pending(func(r PendingNotification) bool { return slices.Contains(rooms, r.RoomID) }), nil
}

func (m *memDeliveryStore) pending(in func(PendingNotification) bool) []Pusher {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []Pusher
	for _, p := range m.sorted() {
		for _, r := range m.rows[p.UserID] {
			if r.StreamPos > p.LastPos && in(r) {
				out = append(out, p)
				break
			}
		}
	}
	return out
}

func (m *memDeliveryStore) Pushers(_ context.Context, user id.UserID) ([]Pusher, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []Pusher
	for _, p := range m.sorted() {
		if p.UserID == user {
			out = append(out, p)
		}
	}
	return out, nil
}

func (m *memDeliveryStore) NotificationsAfter(_ context.Context, user id.UserID, after int64, limit int) ([]PendingNotification, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []PendingNotification
	for _, r := range m.rows[user] {
		if r.StreamPos > after && len(out) < limit {
			out = append(out, r)
		}
	}
	return out, nil
}

func (m *memDeliveryStore) PushEvent(_ context.Context, eventID id.EventID) (PushEvent, bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	ev, ok := m.events[eventID]
	return ev, ok, nil
}

func (m *memDeliveryStore) UnreadCount(_ context.Context, user id.UserID) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.unread[user], nil
}

func (m *memDeliveryStore) AdvancePusher(_ context.Context, user id.UserID, appID, pushKey string, pos int64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if p, ok := m.pushers[pusherKey{user, appID, pushKey}]; ok {
		p.LastPos, p.FailingSince = max(p.LastPos, pos), 0
	}
	return nil
}

func (m *memDeliveryStore) MarkPusherFailing(_ context.Context, user id.UserID, appID, pushKey string, since int64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if p, ok := m.pushers[pusherKey{user, appID, pushKey}]; ok && p.FailingSince == 0 {
		p.FailingSince = since
	}
	return nil
}

func (m *memDeliveryStore) DeletePusher(_ context.Context, user id.UserID, appID, pushKey string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.pushers, pusherKey{user, appID, pushKey})
	return nil
}

// memGateway records every request; answer decides each one's fate.
type memGateway struct {
	mu       sync.Mutex
	requests []gatewayRequest
	answer   func(n *pushgateway.PushNotification) ([]string, error)
	got      chan struct{}
}

type gatewayRequest struct {
	url  string
	body string
	at   time.Time
}

func newMemGateway() *memGateway { return &memGateway{got: make(chan struct{}, 1000)} }

func (g *memGateway) Notify(_ context.Context, url string, n *pushgateway.PushNotification) ([]string, error) {
	body, err := json.Marshal(&pushgateway.ReqPush{Notification: n})
	if err != nil {
		return nil, err
	}
	g.mu.Lock()
	g.requests = append(g.requests, gatewayRequest{url: url, body: string(body), at: time.Now()})
	answer := g.answer
	g.mu.Unlock()
	defer func() { g.got <- struct{}{} }()
	if answer != nil {
		return answer(n)
	}
	return nil, nil
}

func (g *memGateway) setAnswer(f func(n *pushgateway.PushNotification) ([]string, error)) {
	g.mu.Lock()
	g.answer = f
	g.mu.Unlock()
}

func (g *memGateway) sent() []gatewayRequest {
	g.mu.Lock()
	defer g.mu.Unlock()
	return slices.Clone(g.requests)
}

// eventIDs are the event IDs of the requests, in order.
func (g *memGateway) eventIDs() []string {
	var out []string
	for _, r := range g.sent() {
		var req struct {
			Notification struct {
				EventID string `json:"event_id"`
			} `json:"notification"`
		}
		_ = json.Unmarshal([]byte(r.body), &req)
		out = append(out, req.Notification.EventID)
	}
	return out
}

type syncingDevices map[id.DeviceID]bool

func (s syncingDevices) DeviceSyncing(_ id.UserID, d id.DeviceID) bool { return s[d] }

// runDeliverer runs d until the test ends.
func runDeliverer(t *testing.T, d *Deliverer) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); d.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
}

// eventually waits up to 5 s for cond.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

const (
	dlUser       = id.UserID("@dlUser:x")
	soundActions = `["notify",{"set_tweak":"sound","value":"default"},{"set_tweak":"highlight","value":false}]`
	plainActions = `["notify"]`
	hlActions    = `["notify",{"set_tweak":"highlight"}]`
	gatewayURL   = "https://gw.example/_matrix/push/v1/notify"
)

func dlPusher(format string) Pusher {
	data := `{"url":"` + gatewayURL + `","custom":{"big":12345678901234567890,"s":"x"}}`
	if format != "" {
		data = `{"url":"` + gatewayURL + `","format":"` + format + `"}`
	}
	return Pusher{
		UserID: dlUser, DeviceID: "PHONE", AppID: "com.example.app", PushKey: "PK", Kind: "http",
		Data: json.RawMessage(data), PushKeyTS: 1_700_000_000_999, LastPos: 10,
	}
}

func fastConfig() DeliveryConfig {
	return DeliveryConfig{Workers: 2, MinBackoff: 10 * time.Millisecond, MaxBackoff: 40 * time.Millisecond, Sweep: time.Hour, Settle: time.Millisecond}
}

func TestDeliverFullFormat(t *testing.T) {
	store, gw := newMemDeliveryStore(), newMemGateway()
	store.addPusher(dlPusher(""))
	store.addRow(dlUser, 5, "m.room.message", plainActions) // before the cursor
	eid := store.addRow(dlUser, 11, "m.room.message", soundActions)
	store.unread[dlUser] = 3
	store.events[eid] = PushEvent{
		Type: "m.room.message", Sender: "@bob:x", Content: json.RawMessage(`{"body":"hi","msgtype":"m.text"}`),
		SenderDisplayName: "Bob", RoomName: "Room", RoomAlias: "#room:x",
	}
	runDeliverer(t, NewDeliverer(fastConfig(), store, gw, nil, nil))
	eventually(t, "a push", func() bool { return len(gw.sent()) == 1 })
	got := gw.sent()[0]
	want := `{"notification":{"devices":[{"app_id":"com.example.app","pushkey":"PK","pushkey_ts":1700000000,` +
		`"data":{"custom":{"big":12345678901234567890,"s":"x"}},"tweaks":{"highlight":false,"sound":"default"}}],` +
		`"counts":{"unread":3},"event_id":"$e11","prio":"high","room_alias":"#room:x","room_id":"!room:x",` +
		`"room_name":"Room","sender":"@bob:x","sender_display_name":"Bob","type":"m.room.message","content":{"body":"hi","msgtype":"m.text"}}}`
	if got.url != gatewayURL || got.body != want {
		t.Fatalf("request to %s\n got %s\nwant %s", got.url, got.body, want)
	}
	eventually(t, "the cursor", func() bool { p, _ := store.pusher(dlUser, "com.example.app", "PK"); return p.LastPos == 11 })
}

func TestDeliverEventIDOnlyAndPriorities(t *testing.T) {
	store, gw := newMemDeliveryStore(), newMemGateway()
	store.addPusher(dlPusher(FormatEventIDOnly))
	store.addRow(dlUser, 11, "m.room.message", plainActions)
	store.addRow(dlUser, 12, "m.room.message", hlActions)
	store.addRow(dlUser, 13, "m.room.encrypted", plainActions)
	store.addRow(dlUser, 14, "m.room.member", `["notify",{"set_tweak":"sound","value":"ping"}]`)
	runDeliverer(t, NewDeliverer(fastConfig(), store, gw, nil, nil))
	eventually(t, "four pushes", func() bool { return len(gw.sent()) == 4 })
	dev := `"devices":[{"app_id":"com.example.app","pushkey":"PK","pushkey_ts":1700000000,"data":{"format":"event_id_only"}%s}]`
	want := []string{
		`{"notification":{` + fmt.Sprintf(dev, ``) + `,"counts":{"unread":4},"event_id":"$e11","prio":"low","room_id":"!room:x"}}`,
		`{"notification":{` + fmt.Sprintf(dev, `,"tweaks":{"highlight":true}`) + `,"counts":{"unread":4},"event_id":"$e12","prio":"high","room_id":"!room:x"}}`,
		`{"notification":{` + fmt.Sprintf(dev, ``) + `,"counts":{"unread":4},"event_id":"$e13","prio":"high","room_id":"!room:x"}}`,
		`{"notification":{` + fmt.Sprintf(dev, `,"tweaks":{"sound":"ping"}`) + `,"counts":{"unread":4},"event_id":"$e14","prio":"high","room_id":"!room:x"}}`,
	}
	for i, r := range gw.sent() {
		if r.body != want[i] {
			t.Errorf("push %d\n got %s\nwant %s", i, r.body, want[i])
		}
	}
}

// A full-format push of a member event about the user says so; an event
// the store no longer has is pushed with what the row knows.
func TestDeliverUserIsTargetAndMissingEvent(t *testing.T) {
	store, gw := newMemDeliveryStore(), newMemGateway()
	store.addPusher(dlPusher(""))
	invite := store.addRow(dlUser, 11, "m.room.member", plainActions)
	target := dlUser.String()
	store.events[invite] = PushEvent{Type: "m.room.member", Sender: "@bob:x", StateKey: &target, Content: json.RawMessage(`{"membership":"invite"}`)}
	store.addRow(dlUser, 12, "m.room.message", plainActions)
	runDeliverer(t, NewDeliverer(fastConfig(), store, gw, nil, nil))
	eventually(t, "two pushes", func() bool { return len(gw.sent()) == 2 })
	dev := `"devices":[{"app_id":"com.example.app","pushkey":"PK","pushkey_ts":1700000000,"data":{"custom":{"big":12345678901234567890,"s":"x"}}}]`
	want := []string{
		`{"notification":{` + dev + `,"counts":{"unread":2},"event_id":"$e11","prio":"low","room_id":"!room:x","sender":"@bob:x","type":"m.room.member","content":{"membership":"invite"},"user_is_target":true}}`,
		`{"notification":{` + dev + `,"counts":{"unread":2},"event_id":"$e12","prio":"low","room_id":"!room:x"}}`,
	}
	for i, r := range gw.sent() {
		if r.body != want[i] {
			t.Errorf("push %d\n got %s\nwant %s", i, r.body, want[i])
		}
	}
}

// A failing gateway holds the pusher's queue: retried with growing waits,
// nothing after the failing notification is sent before it, and once the
// gateway answers every notification arrives once, in order.
func TestDeliverRetriesInOrder(t *testing.T) {
	store, gw := newMemDeliveryStore(), newMemGateway()
	store.addPusher(dlPusher(FormatEventIDOnly))
	for pos := int64(11); pos <= 13; pos++ {
		store.addRow(dlUser, pos, "m.room.message", plainActions)
	}
	var mu sync.Mutex
	failures := 4
	gw.setAnswer(func(*pushgateway.PushNotification) ([]string, error) {
		mu.Lock()
		defer mu.Unlock()
		if failures > 0 {
			failures--
			return nil, errors.New("gateway down")
		}
		return nil, nil
	})
	runDeliverer(t, NewDeliverer(fastConfig(), store, gw, nil, nil))
	eventually(t, "the first failure recorded", func() bool {
		p, _ := store.pusher(dlUser, "com.example.app", "PK")
		return p.FailingSince != 0 || len(gw.sent()) > 4
	})
	eventually(t, "all delivered", func() bool { p, _ := store.pusher(dlUser, "com.example.app", "PK"); return p.LastPos == 13 })
	if got := fmt.Sprint(gw.eventIDs()); got != "[$e11 $e11 $e11 $e11 $e11 $e12 $e13]" {
		t.Fatalf("pushes %s", got)
	}
	reqs := gw.sent()
	// Each wait is as long as the failures so far (at least MinBackoff, at
	// most MaxBackoff): 10, 10, 20, then 40 ms (the cap), or more.
	for i, least := range []time.Duration{10, 10, 20, 40} {
		if gap := reqs[i+1].at.Sub(reqs[i].at); gap < least*time.Millisecond {
			t.Errorf("wait %d: %s, want at least %s", i+1, gap, least*time.Millisecond)
		}
	}
	if p, _ := store.pusher(dlUser, "com.example.app", "PK"); p.FailingSince != 0 {
		t.Fatal("failure not cleared after delivery")
	}
}

// A notification failing for longer than GiveUpAfter is dropped and the
// next one is tried.
func TestDeliverGivesUp(t *testing.T) {
	store, gw := newMemDeliveryStore(), newMemGateway()
	store.addPusher(dlPusher(FormatEventIDOnly))
	store.addRow(dlUser, 11, "m.room.message", plainActions)
	store.addRow(dlUser, 12, "m.room.message", plainActions)
	gw.setAnswer(func(n *pushgateway.PushNotification) ([]string, error) {
		if n.EventID == "$e11" {
			return nil, errors.New("this one always fails")
		}
		return nil, nil
	})
	cfg := fastConfig()
	cfg.GiveUpAfter = 100 * time.Millisecond
	runDeliverer(t, NewDeliverer(cfg, store, gw, nil, nil))
	eventually(t, "the second delivered", func() bool { p, _ := store.pusher(dlUser, "com.example.app", "PK"); return p.LastPos == 12 })
	ids := gw.eventIDs()
	if len(ids) < 3 || ids[len(ids)-1] != "$e12" || slices.Index(ids, "$e12") != len(ids)-1 {
		t.Fatalf("pushes %v", ids)
	}
	first, last := gw.sent()[0].at, gw.sent()[len(ids)-2].at
	if last.Sub(first) < 60*time.Millisecond {
		t.Fatalf("gave up after %s of failures", last.Sub(first))
	}
}

// A gateway that rejects the pushkey makes the pusher go; nothing more is
// sent to it.
func TestDeliverRejectedPushkeyDeletesThePusher(t *testing.T) {
	store, gw := newMemDeliveryStore(), newMemGateway()
	store.addPusher(dlPusher(FormatEventIDOnly))
	other := dlPusher(FormatEventIDOnly)
	other.PushKey = "OTHER"
	store.addPusher(other)
	store.addRow(dlUser, 11, "m.room.message", plainActions)
	store.addRow(dlUser, 12, "m.room.message", plainActions)
	gw.setAnswer(func(n *pushgateway.PushNotification) ([]string, error) {
		if n.Devices[0].PushKey == "PK" {
			return []string{"PK"}, nil
		}
		return []string{"SOMEONE_ELSES"}, nil
	})
	runDeliverer(t, NewDeliverer(fastConfig(), store, gw, nil, nil))
	eventually(t, "the other pusher caught up", func() bool { p, _ := store.pusher(dlUser, "com.example.app", "OTHER"); return p.LastPos == 12 })
	eventually(t, "the rejected pusher deleted", func() bool { _, ok := store.pusher(dlUser, "com.example.app", "PK"); return !ok })
	n := 0
	for _, r := range gw.sent() {
		if json.Valid([]byte(r.body)) && containsPushKey(r.body, "PK") {
			n++
		}
	}
	if n != 1 {
		t.Fatalf("%d pushes to the rejected pushkey, want 1", n)
	}
}

func containsPushKey(body, key string) bool {
	var req pushgateway.ReqPush
	if json.Unmarshal([]byte(body), &req) != nil {
		return false
	}
	return req.Notification.Devices[0].PushKey == key
}

// While the pusher's device syncs, its notifications are skipped: the
// cursor moves past them and nothing is sent.
func TestDeliverSkipsSyncingDevices(t *testing.T) {
	store, gw := newMemDeliveryStore(), newMemGateway()
	store.addPusher(dlPusher(FormatEventIDOnly))
	away := dlPusher(FormatEventIDOnly)
	away.PushKey, away.DeviceID = "AWAY", "TABLET"
	store.addPusher(away)
	store.addRow(dlUser, 11, "m.room.message", plainActions)
	d := NewDeliverer(fastConfig(), store, gw, syncingDevices{"PHONE": true}, nil)
	runDeliverer(t, d)
	eventually(t, "both cursors", func() bool {
		p, _ := store.pusher(dlUser, "com.example.app", "PK")
		q, _ := store.pusher(dlUser, "com.example.app", "AWAY")
		return p.LastPos == 11 && q.LastPos == 11
	})
	for _, r := range gw.sent() {
		if containsPushKey(r.body, "PK") {
			t.Fatal("pushed to a syncing device")
		}
	}
	if len(gw.sent()) != 1 {
		t.Fatalf("%d pushes, want 1 (to the tablet)", len(gw.sent()))
	}
}

// Notify wakes delivery for rows written after it caught up, in the
// rooms it names; nothing is sent twice.
func TestDeliverWakesOnNotify(t *testing.T) {
	store, gw := newMemDeliveryStore(), newMemGateway()
	store.addPusher(dlPusher(FormatEventIDOnly))
	d := NewDeliverer(fastConfig(), store, gw, nil, nil)
	runDeliverer(t, d)
	for pos := int64(11); pos <= 15; pos++ {
		store.addRow(dlUser, pos, "m.room.message", plainActions)
		d.Notify([]id.RoomID{"!other:x", "!room:x"}, nil)
		eventually(t, fmt.Sprint("push ", pos), func() bool { return len(gw.sent()) == int(pos-10) })
	}
	// An announcement of another room does not look at this one.
	store.addRow(dlUser, 16, "m.room.message", plainActions)
	d.Notify([]id.RoomID{"!other:x"}, []id.UserID{"@someone:x"})
	time.Sleep(50 * time.Millisecond)
	if got := fmt.Sprint(gw.eventIDs()); got != "[$e11 $e12 $e13 $e14 $e15]" {
		t.Fatalf("pushes %s", got)
	}
	d.Notify([]id.RoomID{"!room:x"}, nil)
	eventually(t, "push 16", func() bool { return len(gw.sent()) == 6 })
}

// Too much announced at once makes the next check look at every pusher.
func TestDeliverAnnouncementOverflow(t *testing.T) {
	d := NewDeliverer(fastConfig(), newMemDeliveryStore(), newMemGateway(), nil, nil)
	rooms := make([]id.RoomID, maxAnnounced+1)
	for i := range rooms {
		rooms[i] = id.RoomID(fmt.Sprintf("!r%d:x", i))
	}
	d.Notify(rooms[:10], []id.UserID{"@u:x"})
	if a := d.takeAnnounced(); a.all || len(a.rooms) != 10 || len(a.users) != 1 {
		t.Fatalf("announced %+v", a)
	}
	d.Notify(rooms, nil)
	d.Notify(rooms[:1], nil)
	if a := d.takeAnnounced(); !a.all || a.rooms != nil {
		t.Fatalf("after too many rooms: all=%v, %d rooms", a.all, len(a.rooms))
	}
	if a := d.takeAnnounced(); a.all || len(a.rooms) != 0 {
		t.Fatal("taking did not reset")
	}
}

// The periodic sweep finds rows nobody announced.
func TestDeliverSweepFindsUnannouncedRows(t *testing.T) {
	store, gw := newMemDeliveryStore(), newMemGateway()
	store.addPusher(dlPusher(FormatEventIDOnly))
	cfg := fastConfig()
	cfg.Sweep = 20 * time.Millisecond
	runDeliverer(t, NewDeliverer(cfg, store, gw, nil, nil))
	store.addRow(dlUser, 11, "m.room.message", plainActions)
	eventually(t, "the sweep's push", func() bool { return len(gw.sent()) == 1 })
}

// A new deliverer (a restart) resumes after the stored cursor; a stored
// failure carries its backoff over.
func TestDeliverResumesFromTheStoredCursor(t *testing.T) {
	store, gw := newMemDeliveryStore(), newMemGateway()
	p := dlPusher(FormatEventIDOnly)
	p.LastPos = 12
	p.FailingSince = time.Now().Add(-time.Minute).UnixMilli()
	store.addPusher(p)
	for pos := int64(11); pos <= 14; pos++ {
		store.addRow(dlUser, pos, "m.room.message", plainActions)
	}
	runDeliverer(t, NewDeliverer(fastConfig(), store, gw, nil, nil))
	eventually(t, "caught up", func() bool { q, _ := store.pusher(dlUser, "com.example.app", "PK"); return q.LastPos == 14 })
	if got := fmt.Sprint(gw.eventIDs()); got != "[$e13 $e14]" {
		t.Fatalf("pushes %s", got)
	}
	d := NewDeliverer(DeliveryConfig{MinBackoff: time.Second, MaxBackoff: 10 * time.Minute}, store, gw, nil, nil)
	if b := d.backoff(time.Minute); b != time.Minute {
		t.Fatalf("backoff after a minute of failures: %s", b)
	}
	if b := d.backoff(0); b != time.Second {
		t.Fatalf("first backoff: %s", b)
	}
	if b := d.backoff(time.Hour); b != 10*time.Minute {
		t.Fatalf("capped backoff: %s", b)
	}
}

// At most Workers users are delivered at once, and one user's pushers
// never concurrently.
func TestDeliverBoundsConcurrency(t *testing.T) {
	store, gw := newMemDeliveryStore(), newMemGateway()
	const users = 6
	owner := map[string]id.UserID{}
	for i := range users {
		u := id.UserID(fmt.Sprintf("@u%d:x", i))
		for _, key := range []string{"K1", "K2"} {
			p := dlPusher(FormatEventIDOnly)
			p.UserID, p.PushKey = u, fmt.Sprintf("%s-%d", key, i)
			owner[p.PushKey] = u
			store.addPusher(p)
		}
		store.addRow(u, 11, "m.room.message", plainActions)
	}
	var mu sync.Mutex
	active, most := map[id.UserID]int{}, 0
	release := make(chan struct{})
	gw.setAnswer(func(n *pushgateway.PushNotification) ([]string, error) {
		user := owner[n.Devices[0].PushKey]
		mu.Lock()
		active[user]++
		total := 0
		for _, c := range active {
			total += c
		}
		most = max(most, total)
		twice := active[user] > 1
		mu.Unlock()
		if twice {
			t.Errorf("two pushers of %s at once", user)
		}
		<-release
		mu.Lock()
		active[user]--
		mu.Unlock()
		return nil, nil
	})
	runDeliverer(t, NewDeliverer(fastConfig(), store, gw, nil, nil))
	go func() {
		for range 2 * users {
			time.Sleep(5 * time.Millisecond)
			release <- struct{}{}
		}
	}()
	eventually(t, "every pusher delivered", func() bool { return len(gw.sent()) == 2*users })
	mu.Lock()
	defer mu.Unlock()
	if most != 2 {
		t.Fatalf("at most %d deliveries at once, want 2 (the workers)", most)
	}
}
