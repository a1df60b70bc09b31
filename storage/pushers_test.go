package storage_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"maunium.net/go/mautrix/id"

	"github.com/weftchat/weft/account"
	"github.com/weftchat/weft/internal/pushgateway"
	"github.com/weftchat/weft/push"
	"github.com/weftchat/weft/room"
	"github.com/weftchat/weft/storage"
)

const pusherServer = "push.example"

// pusherFixture is a database with users (each with device "D1"), rooms
// written through the room domain without push evaluation, and
// per-user notification rows (event_push_exceptions) and receipts written directly.
type pusherFixture struct {
	t     *testing.T
	ctx   context.Context
	db    *storage.DB
	ps    *storage.Pushers
	conn  *pgx.Conn
	rooms *room.Service
	txn   int
}

// pusherProfiles names every user "Name of <localpart>" in member events.
type pusherProfiles struct{}

func (pusherProfiles) MemberProfile(_ context.Context, u id.UserID) (string, string, error) {
	return "Name of " + u.Localpart(), "", nil
}

func newPusherFixture(t *testing.T, users ...string) *pusherFixture {
	t.Helper()
	ctx := context.Background()
	db, conn, rooms := newRoomDB(t, pusherServer, pusherProfiles{})
	for _, lp := range users {
		sess := &account.NewSession{DeviceID: "D1", AccessTokenHash: []byte("token of " + lp)}
		if err := db.Accounts().CreateUser(ctx, account.User{UserID: pusherUser(lp), Localpart: lp}, "", sess, ""); err != nil {
			t.Fatal(err)
		}
	}
	return &pusherFixture{t: t, ctx: ctx, db: db, ps: db.Pushers(), conn: conn, rooms: rooms}
}

func pusherUser(lp string) id.UserID { return id.NewUserID(lp, pusherServer) }

func (f *pusherFixture) room(p room.CreateParams, members ...id.UserID) id.RoomID {
	f.t.Helper()
	if p.Preset == "" {
		p.Preset = "public_chat"
	}
	rid, err := f.rooms.Create(f.ctx, p)
	if err != nil {
		f.t.Fatal(err)
	}
	for _, m := range members {
		if err := f.rooms.Join(f.ctx, room.MembershipParams{Sender: m, RoomID: rid}); err != nil {
			f.t.Fatal(err)
		}
	}
	return rid
}

func (f *pusherFixture) send(sender id.UserID, rid id.RoomID, evType string, content map[string]any) id.EventID {
	f.t.Helper()
	raw, _ := json.Marshal(content)
	f.txn++
	eid, err := f.rooms.Send(f.ctx, room.SendParams{Sender: sender, Device: "D1", RoomID: rid, Type: evType, TxnID: fmt.Sprint(f.txn), Content: raw})
	if err != nil {
		f.t.Fatal(err)
	}
	return eid
}

func (f *pusherFixture) text(sender id.UserID, rid id.RoomID, body string) id.EventID {
	f.t.Helper()
	return f.send(sender, rid, "m.room.message", map[string]any{"msgtype": "m.text", "body": body})
}

func (f *pusherFixture) pos(eid id.EventID) int64 {
	f.t.Helper()
	var p int64
	if err := f.conn.QueryRow(f.ctx, `SELECT stream_pos FROM events WHERE event_id = $1`, eid).Scan(&p); err != nil {
		f.t.Fatal(err)
	}
	return p
}

// notify writes the row push evaluation writes for user and the event.
func (f *pusherFixture) notify(user id.UserID, eid id.EventID, thread string, actions string) {
	f.t.Helper()
	if thread == "" {
		thread = "main"
	}
	_, err := f.conn.Exec(f.ctx, `INSERT INTO event_push_exceptions (user_id, room_id, stream_pos, event_id, thread_id, highlight, actions, ts)
		SELECT $1, room_id, stream_pos, event_id, $3, $4, $5, origin_server_ts FROM events WHERE event_id = $2`,
		user, eid, thread, actions == highlightActions, actions)
	if err != nil {
		f.t.Fatal(err)
	}
}

const (
	notifyActions    = `["notify"]`
	highlightActions = `["notify",{"set_tweak":"highlight"}]`
)

// receipt writes the user's receipt (as the receipts API stores it).
func (f *pusherFixture) receipt(user id.UserID, rid id.RoomID, typ, thread string, eid id.EventID) {
	f.t.Helper()
	_, err := f.conn.Exec(f.ctx, `INSERT INTO receipts (room_id, user_id, receipt_type, thread_id, event_id, ts, stream_pos)
		VALUES ($1, $2, $3, $4, $5, 0, nextval('stream_pos_seq'))
		ON CONFLICT (room_id, user_id, receipt_type, thread_id) DO UPDATE SET event_id = EXCLUDED.event_id`,
		rid, user, typ, thread, eid)
	if err != nil {
		f.t.Fatal(err)
	}
}

func (f *pusherFixture) set(p push.Pusher, exclusive bool) {
	f.t.Helper()
	if p.Kind == "" {
		p.Kind = "http"
	}
	if p.DeviceID == "" {
		p.DeviceID = "D1"
	}
	if p.Data == nil {
		p.Data = json.RawMessage(`{"url":"https://gw.example/_matrix/push/v1/notify"}`)
	}
	if err := f.ps.SetPusher(f.ctx, p, exclusive); err != nil {
		f.t.Fatal(err)
	}
}

func (f *pusherFixture) list(user id.UserID) []push.Pusher {
	f.t.Helper()
	ps, err := f.ps.Pushers(f.ctx, user)
	if err != nil {
		f.t.Fatal(err)
	}
	return ps
}

func pusherKeys(ps []push.Pusher) []string {
	var out []string
	for _, p := range ps {
		out = append(out, string(p.UserID)+"/"+p.AppID+"/"+p.PushKey)
	}
	return out
}

func TestPusherSetReplaceAndList(t *testing.T) {
	f := newPusherFixture(t, "a")
	a := pusherUser("a")
	f.set(push.Pusher{UserID: a, AppID: "app.two", PushKey: "k", Lang: "en", AppDisplayName: "Two", DeviceDisplayName: "Phone", PushKeyTS: 100}, true)
	f.set(push.Pusher{UserID: a, AppID: "app.one", PushKey: "k", Lang: "en", ProfileTag: "tag", PushKeyTS: 100,
		Data: json.RawMessage(`{"url":"https://gw.example/_matrix/push/v1/notify","format":"event_id_only","x":1}`)}, true)
	ps := f.list(a)
	if got := fmt.Sprint(pusherKeys(ps)); got != "[@a:push.example/app.one/k @a:push.example/app.two/k]" {
		t.Fatalf("pushers %s", got)
	}
	one := ps[0]
	if one.Kind != "http" || one.DeviceID != "D1" || one.Lang != "en" || one.ProfileTag != "tag" || one.PushKeyTS != 100 ||
		string(one.Data) != `{"url":"https://gw.example/_matrix/push/v1/notify","format":"event_id_only","x":1}` || one.FailingSince != 0 {
		t.Fatalf("stored pusher %+v", one)
	}

	// Replacing keeps the cursor but clears a failure, and takes every
	// other field from the new request.
	if err := f.ps.AdvancePusher(f.ctx, a, "app.one", "k", one.LastPos+7); err != nil {
		t.Fatal(err)
	}
	if err := f.ps.MarkPusherFailing(f.ctx, a, "app.one", "k", 555); err != nil {
		t.Fatal(err)
	}
	f.set(push.Pusher{UserID: a, AppID: "app.one", PushKey: "k", Lang: "fr", AppDisplayName: "One", PushKeyTS: 200}, true)
	one = f.list(a)[0]
	if one.LastPos != ps[0].LastPos+7 || one.FailingSince != 0 || one.Lang != "fr" || one.ProfileTag != "" ||
		one.AppDisplayName != "One" || one.PushKeyTS != 200 || string(one.Data) != `{"url":"https://gw.example/_matrix/push/v1/notify"}` {
		t.Fatalf("replaced pusher %+v", one)
	}

	if err := f.ps.DeletePusher(f.ctx, a, "app.one", "k"); err != nil {
		t.Fatal(err)
	}
	if err := f.ps.DeletePusher(f.ctx, a, "app.one", "k"); err != nil {
		t.Fatalf("deleting a deleted pusher: %v", err)
	}
	if got := fmt.Sprint(pusherKeys(f.list(a))); got != "[@a:push.example/app.two/k]" {
		t.Fatalf("after delete: %s", got)
	}
}

// Without append, a pusher takes its app ID and pushkey from every other
// user; with append, they share it. The user's own other pushers stay.
func TestPusherExclusiveAcrossUsers(t *testing.T) {
	f := newPusherFixture(t, "a", "b", "c")
	a, b, c := pusherUser("a"), pusherUser("b"), pusherUser("c")
	f.set(push.Pusher{UserID: a, AppID: "app", PushKey: "shared"}, true)
	f.set(push.Pusher{UserID: a, AppID: "app", PushKey: "own"}, true)
	f.set(push.Pusher{UserID: b, AppID: "app", PushKey: "shared"}, false)
	if len(f.list(a)) != 2 || len(f.list(b)) != 1 {
		t.Fatalf("append removed a pusher: %v %v", pusherKeys(f.list(a)), pusherKeys(f.list(b)))
	}
	f.set(push.Pusher{UserID: c, AppID: "app", PushKey: "shared"}, true)
	if got := fmt.Sprint(pusherKeys(f.list(a)), pusherKeys(f.list(b)), pusherKeys(f.list(c))); got !=
		"[@a:push.example/app/own] [] [@c:push.example/app/shared]" {
		t.Fatalf("after an exclusive set: %s", got)
	}
	// Another app with the same pushkey is another pusher.
	f.set(push.Pusher{UserID: a, AppID: "other", PushKey: "shared"}, true)
	if len(f.list(c)) != 1 {
		t.Fatal("an exclusive set of another app removed a pusher")
	}
}

// A new pusher starts at the current stream position: nothing from before
// it is pushed to it.
func TestPusherCursorStartsAtTheStreamPosition(t *testing.T) {
	f := newPusherFixture(t, "a", "b")
	a, b := pusherUser("a"), pusherUser("b")
	rid := f.room(room.CreateParams{Creator: b}, a)
	eid := f.text(b, rid, "before the pusher")
	f.notify(a, eid, "", notifyActions)
	max, err := f.db.MaxStreamPos(f.ctx)
	if err != nil {
		t.Fatal(err)
	}
	f.set(push.Pusher{UserID: a, AppID: "app", PushKey: "k"}, true)
	p := f.list(a)[0]
	if p.LastPos != max {
		t.Fatalf("cursor %d, stream at %d", p.LastPos, max)
	}
	pending, err := f.ps.PendingPushers(f.ctx)
	if err != nil || len(pending) != 0 {
		t.Fatalf("a new pusher has pending notifications: %v %v", pending, err)
	}
}

func TestPusherGoesWithItsDevice(t *testing.T) {
	f := newPusherFixture(t, "a")
	a := pusherUser("a")
	f.set(push.Pusher{UserID: a, AppID: "app", PushKey: "k"}, true)
	if err := f.db.Accounts().DeleteDevices(f.ctx, a, []id.DeviceID{"D1"}); err != nil {
		t.Fatal(err)
	}
	if ps := f.list(a); len(ps) != 0 {
		t.Fatalf("pusher outlived its device: %v", pusherKeys(ps))
	}
	// A pusher for a device that does not exist is refused.
	err := f.ps.SetPusher(f.ctx, push.Pusher{UserID: a, DeviceID: "GONE", AppID: "app", PushKey: "k", Kind: "http", Data: json.RawMessage(`{}`)}, true)
	if err == nil {
		t.Fatal("a pusher for a missing device was stored")
	}
}

func TestPusherQueueAndCursor(t *testing.T) {
	f := newPusherFixture(t, "a", "b", "c")
	a, b, c := pusherUser("a"), pusherUser("b"), pusherUser("c")
	f.set(push.Pusher{UserID: a, AppID: "app", PushKey: "ka"}, true)
	f.set(push.Pusher{UserID: c, AppID: "app", PushKey: "kc"}, true)
	rid := f.room(room.CreateParams{Creator: b}, a, c)
	var eids []id.EventID
	for i := range 3 {
		eid := f.text(b, rid, fmt.Sprint("m", i))
		f.notify(a, eid, "", notifyActions)
		eids = append(eids, eid)
	}
	enc := f.send(b, rid, "m.room.encrypted", map[string]any{"algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "x"})
	f.notify(a, enc, "", highlightActions)
	eids = append(eids, enc)

	pending, err := f.ps.PendingPushers(f.ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(pusherKeys(pending)); got != "[@a:push.example/app/ka]" {
		t.Fatalf("pending %s", got)
	}
	// Limited to rooms: only notifications in them count, and only the
	// pushers of their members or of the users named.
	other := f.room(room.CreateParams{Creator: b})
	for _, c := range []struct {
		rooms []id.RoomID
		users []id.UserID
		want  string
	}{
		{[]id.RoomID{rid}, nil, "[@a:push.example/app/ka]"},
		{[]id.RoomID{other}, nil, "[]"},
		{[]id.RoomID{other}, []id.UserID{a}, "[]"},
		{[]id.RoomID{other, rid}, []id.UserID{c}, "[@a:push.example/app/ka]"},
	} {
		pending, err := f.ps.PendingPushersIn(f.ctx, c.rooms, c.users)
		if got := fmt.Sprint(pusherKeys(pending)); err != nil || got != c.want {
			t.Fatalf("pending in %v for %v: %s %v, want %s", c.rooms, c.users, got, err, c.want)
		}
	}
	// An invitee is notified without being joined.
	if err := f.rooms.Invite(f.ctx, room.MembershipParams{Sender: b, RoomID: other, Target: c}); err != nil {
		t.Fatal(err)
	}
	var invite id.EventID
	if err := f.conn.QueryRow(f.ctx, `SELECT event_id FROM current_state WHERE room_id = $1 AND type = 'm.room.member' AND state_key = $2`, other, c).Scan(&invite); err != nil {
		t.Fatal(err)
	}
	f.notify(c, invite, "", notifyActions)
	if pending, err := f.ps.PendingPushersIn(f.ctx, []id.RoomID{other}, nil); err != nil || fmt.Sprint(pusherKeys(pending)) != "[@c:push.example/app/kc]" {
		t.Fatalf("pending for the invitee: %v %v", pusherKeys(pending), err)
	}
	if err := f.ps.AdvancePusher(f.ctx, c, "app", "kc", f.pos(invite)); err != nil {
		t.Fatal(err)
	}

	cursor := f.list(a)[0].LastPos
	ns, err := f.ps.NotificationsAfter(f.ctx, a, cursor, 3)
	if err != nil {
		t.Fatal(err)
	}
	if len(ns) != 3 {
		t.Fatalf("%d notifications, want 3 (the limit)", len(ns))
	}
	for i, n := range ns {
		if n.EventID != eids[i] || n.RoomID != rid || n.StreamPos != f.pos(eids[i]) || n.EventType != "m.room.message" ||
			n.Highlight || string(n.Actions) != notifyActions {
			t.Fatalf("notification %d: %+v", i, n)
		}
	}
	rest, err := f.ps.NotificationsAfter(f.ctx, a, ns[2].StreamPos, 10)
	if err != nil || len(rest) != 1 || rest[0].EventID != enc || rest[0].EventType != "m.room.encrypted" || !rest[0].Highlight {
		t.Fatalf("rest %+v %v", rest, err)
	}

	// The cursor only moves forward; a failure is recorded once, and
	// cleared by a move.
	if err := f.ps.AdvancePusher(f.ctx, a, "app", "ka", f.pos(eids[1])); err != nil {
		t.Fatal(err)
	}
	if err := f.ps.AdvancePusher(f.ctx, a, "app", "ka", f.pos(eids[0])); err != nil {
		t.Fatal(err)
	}
	for _, since := range []int64{1000, 2000} {
		if err := f.ps.MarkPusherFailing(f.ctx, a, "app", "ka", since); err != nil {
			t.Fatal(err)
		}
	}
	p := f.list(a)[0]
	if p.LastPos != f.pos(eids[1]) || p.FailingSince != 1000 {
		t.Fatalf("cursor %d (want %d), failing since %d (want 1000)", p.LastPos, f.pos(eids[1]), p.FailingSince)
	}
	if err := f.ps.AdvancePusher(f.ctx, a, "app", "ka", f.pos(enc)); err != nil {
		t.Fatal(err)
	}
	p = f.list(a)[0]
	if p.LastPos != f.pos(enc) || p.FailingSince != 0 {
		t.Fatalf("after the last: %+v", p)
	}
	if pending, err := f.ps.PendingPushers(f.ctx); err != nil || len(pending) != 0 {
		t.Fatalf("pending when caught up: %v %v", pusherKeys(pending), err)
	}
	if pending, err := f.ps.PendingPushersIn(f.ctx, []id.RoomID{rid}, nil); err != nil || len(pending) != 0 {
		t.Fatalf("pending in the room when caught up: %v %v", pusherKeys(pending), err)
	}
	// Moving a deleted pusher does not bring it back.
	if err := f.ps.DeletePusher(f.ctx, a, "app", "ka"); err != nil {
		t.Fatal(err)
	}
	if err := f.ps.AdvancePusher(f.ctx, a, "app", "ka", f.pos(enc)+10); err != nil || len(f.list(a)) != 0 {
		t.Fatalf("advance after delete: %v %v", err, pusherKeys(f.list(a)))
	}
}

func TestPushEventDescribesTheEventAndRoom(t *testing.T) {
	f := newPusherFixture(t, "a", "b")
	a, b := pusherUser("a"), pusherUser("b")
	rid := f.room(room.CreateParams{Creator: b, Name: "Mission Control", RoomAliasName: "mission"}, a)
	eid := f.text(b, rid, "I'm floating")
	ev, ok, err := f.ps.PushEvent(f.ctx, eid)
	if err != nil || !ok {
		t.Fatalf("%v %v", ok, err)
	}
	if ev.Type != "m.room.message" || ev.Sender != b || ev.StateKey != nil || string(ev.Content) != `{"body":"I'm floating","msgtype":"m.text"}` ||
		ev.SenderDisplayName != "Name of b" || ev.RoomName != "Mission Control" || ev.RoomAlias != "#mission:push.example" {
		t.Fatalf("push event %+v content %s", ev, ev.Content)
	}

	// A room without name or alias leaves them empty; a member event
	// carries its state key.
	bare := f.room(room.CreateParams{Creator: b}, a)
	var member id.EventID
	if err := f.conn.QueryRow(f.ctx, `SELECT event_id FROM events WHERE room_id = $1 AND type = 'm.room.member' AND state_key = $2`, bare, a).Scan(&member); err != nil {
		t.Fatal(err)
	}
	ev, ok, err = f.ps.PushEvent(f.ctx, member)
	if err != nil || !ok || ev.StateKey == nil || *ev.StateKey != a.String() || ev.RoomName != "" || ev.RoomAlias != "" || ev.SenderDisplayName != "Name of a" {
		t.Fatalf("member event %+v %v %v", ev, ok, err)
	}

	// A redacted event is described without its content.
	if _, err := f.conn.Exec(f.ctx, `UPDATE events SET redacted_by = '$r' WHERE event_id = $1`, eid); err != nil {
		t.Fatal(err)
	}
	if ev, ok, err = f.ps.PushEvent(f.ctx, eid); err != nil || !ok || ev.Content != nil {
		t.Fatalf("redacted: %+v %v %v", ev, ok, err)
	}
	if _, ok, err := f.ps.PushEvent(f.ctx, "$missing"); ok || err != nil {
		t.Fatalf("missing event: %v %v", ok, err)
	}
}

func TestPusherUnreadCounts(t *testing.T) {
	f := newPusherFixture(t, "a", "b")
	a, b := pusherUser("a"), pusherUser("b")
	counts := func() int {
		t.Helper()
		u, err := f.ps.UnreadCount(f.ctx, a)
		if err != nil {
			t.Fatal(err)
		}
		return u
	}
	if u := counts(); u != 0 {
		t.Fatalf("no rooms: %d", u)
	}
	r1 := f.room(room.CreateParams{Creator: b}, a)
	r2 := f.room(room.CreateParams{Creator: b}, a)
	var m1 []id.EventID
	for i := range 3 {
		eid := f.text(b, r1, fmt.Sprint("r1 ", i))
		f.notify(a, eid, "", notifyActions)
		m1 = append(m1, eid)
	}
	root := m1[0]
	t1 := f.text(b, r1, "in thread")
	f.notify(a, t1, string(root), notifyActions)
	call := f.send(b, r2, "m.call.invite", map[string]any{"call_id": "c", "version": "1", "lifetime": 60000, "offer": map[string]any{"type": "offer", "sdp": "x"}})
	f.notify(a, call, "", notifyActions)
	if u := counts(); u != 5 {
		t.Fatalf("unread %d, want 5", u)
	}

	// A threaded receipt reads only its thread.
	f.receipt(a, r1, "m.read", "main", m1[1])
	if u := counts(); u != 3 {
		t.Fatalf("after a main-thread receipt at the 2nd: %d, want 3", u)
	}
	f.receipt(a, r1, "m.read", string(root), t1)
	if u := counts(); u != 2 {
		t.Fatalf("after the thread's receipt: %d, want 2", u)
	}
	// The further of m.read and m.read.private counts.
	f.receipt(a, r1, "m.read", "", m1[0])
	f.receipt(a, r1, "m.read.private", "", m1[2])
	if u := counts(); u != 1 {
		t.Fatalf("after a private receipt at the last: %d, want 1", u)
	}
	// The user's own event reads what came before it.
	later := f.text(b, r2, "later")
	f.notify(a, later, "", highlightActions)
	f.text(a, r2, "my answer")
	if u := counts(); u != 0 {
		t.Fatalf("after my own message: %d", u)
	}
	// Rooms the user left do not count.
	after := f.text(b, r2, "after my answer")
	f.notify(a, after, "", notifyActions)
	if u := counts(); u != 1 {
		t.Fatalf("unread %d, want 1", u)
	}
	if err := f.rooms.Leave(f.ctx, room.MembershipParams{Sender: a, RoomID: r2}); err != nil {
		t.Fatal(err)
	}
	if u := counts(); u != 0 {
		t.Fatalf("after leaving: %d", u)
	}
}

// Delivery over this store and the real gateway client: the queue is the
// rows and the cursor, so a new deliverer (a restart) resumes after what
// was delivered and sends nothing twice.
func TestPushDeliveryOverPostgres(t *testing.T) {
	f := newPusherFixture(t, "a", "b")
	a, b := pusherUser("a"), pusherUser("b")
	rid := f.room(room.CreateParams{Creator: b, Name: "Ops"}, a)

	var mu sync.Mutex
	var bodies []string
	status := 200
	gw := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		mu.Lock()
		defer mu.Unlock()
		bodies = append(bodies, string(body))
		w.WriteHeader(status)
		_, _ = io.WriteString(w, `{"rejected":[]}`)
	}))
	defer gw.Close()
	f.set(push.Pusher{UserID: a, AppID: "app", PushKey: "PK", PushKeyTS: 1_700_000_000_000,
		Data: json.RawMessage(`{"url":"` + gw.URL + `/_matrix/push/v1/notify"}`)}, true)

	run := func() (stop func()) {
		client := pushgateway.New(pushgateway.Config{AllowedCIDRs: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}})
		d := push.NewDeliverer(push.DeliveryConfig{MinBackoff: 20 * time.Millisecond, MaxBackoff: 50 * time.Millisecond, Sweep: time.Hour},
			f.ps, client, nil, nil)
		ctx, cancel := context.WithCancel(f.ctx)
		done := make(chan struct{})
		go func() { defer close(done); d.Run(ctx) }()
		return func() { cancel(); <-done }
	}
	waitFor := func(n int) []string {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			mu.Lock()
			got := slices.Clone(bodies)
			mu.Unlock()
			if len(got) >= n {
				return got
			}
			if time.Now().After(deadline) {
				t.Fatalf("%d pushes, want %d", len(got), n)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}

	first := f.text(b, rid, "first")
	f.notify(a, first, "", `["notify",{"set_tweak":"sound","value":"default"},{"set_tweak":"highlight","value":false}]`)
	stop := run()
	got := waitFor(1)
	want := `{"notification":{"devices":[{"app_id":"app","pushkey":"PK","pushkey_ts":1700000000,"tweaks":{"highlight":false,"sound":"default"}}],` +
		`"counts":{"unread":1},"event_id":"` + string(first) + `","prio":"high","room_id":"` + string(rid) + `","room_name":"Ops",` +
		`"sender":"@b:push.example","sender_display_name":"Name of b","type":"m.room.message","content":{"body":"first","msgtype":"m.text"}}}`
	if got[0] != want {
		t.Fatalf("push\n got %s\nwant %s", got[0], want)
	}
	// The gateway fails: the next notifications queue behind the first
	// failing one, which is retried.
	mu.Lock()
	status = 500
	mu.Unlock()
	second := f.text(b, rid, "second")
	f.notify(a, second, "", notifyActions)
	third := f.text(b, rid, "third")
	f.notify(a, third, "", notifyActions)
	stop()
	stop = run()
	waitFor(3) // at least two failed attempts at the second
	stop()
	p := f.list(a)[0]
	if p.LastPos != f.pos(first) || p.FailingSince == 0 {
		t.Fatalf("while failing: cursor %d (want %d), failing since %d", p.LastPos, f.pos(first), p.FailingSince)
	}
	// A restart with the gateway back delivers the rest in order, once.
	mu.Lock()
	status = 200
	failedAttempts := len(bodies) - 1
	mu.Unlock()
	stop = run()
	defer stop()
	got = waitFor(failedAttempts + 3)
	var ids []string
	for _, body := range got {
		var req struct {
			Notification struct {
				EventID string `json:"event_id"`
				Counts  struct {
					Unread int `json:"unread"`
				} `json:"counts"`
			} `json:"notification"`
		}
		if err := json.Unmarshal([]byte(body), &req); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, req.Notification.EventID)
	}
	for i, eid := range ids {
		want := second
		switch {
		case i == 0:
			want = first
		case i == len(ids)-1:
			want = third
		}
		if eid != string(want) {
			t.Fatalf("pushes in this order: %v", ids)
		}
	}
	time.Sleep(100 * time.Millisecond)
	mu.Lock()
	n := len(bodies)
	mu.Unlock()
	if n != len(ids) {
		t.Fatalf("%d pushes after catching up, want %d", n, len(ids))
	}
	if p := f.list(a)[0]; p.LastPos != f.pos(third) || p.FailingSince != 0 {
		t.Fatalf("after catching up: %+v", p)
	}
}
