package storage_test

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	mrand "math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"maunium.net/go/mautrix/id"

	"github.com/weftchat/weft/push"
	"github.com/weftchat/weft/room"
	"github.com/weftchat/weft/storage"
	"github.com/weftchat/weft/syncapi"
)

const notifServer = "notif.example"

// notifStore is a database with rooms written through the room domain
// (without push evaluation) and per-user notification rows (event_push_exceptions) written directly.
type notifStore struct {
	t     *testing.T
	ctx   context.Context
	db    *storage.DB
	sync  *storage.Sync
	conn  *pgx.Conn
	rooms *room.Service
	txn   int
}

type noNotifProfiles struct{}

func (noNotifProfiles) MemberProfile(context.Context, id.UserID) (string, string, error) {
	return "", "", nil
}

func newNotifStore(t *testing.T) *notifStore {
	t.Helper()
	db, conn, rooms := newRoomDB(t, notifServer, noNotifProfiles{})
	return &notifStore{t: t, ctx: context.Background(), db: db, sync: db.Sync(), conn: conn, rooms: rooms}
}

func notifUser(localpart string) id.UserID { return id.NewUserID(localpart, notifServer) }

// room creates a public room of creator that members join.
func (s *notifStore) room(creator id.UserID, members ...id.UserID) id.RoomID {
	s.t.Helper()
	rid, err := s.rooms.Create(s.ctx, room.CreateParams{Creator: creator, Preset: "public_chat"})
	if err != nil {
		s.t.Fatal(err)
	}
	for _, m := range members {
		if err := s.rooms.Join(s.ctx, room.MembershipParams{Sender: m, RoomID: rid}); err != nil {
			s.t.Fatal(err)
		}
	}
	return rid
}

// send sends a text message, in a thread when root is set.
func (s *notifStore) send(sender id.UserID, rid id.RoomID, body string, root id.EventID) id.EventID {
	s.t.Helper()
	content := map[string]any{"msgtype": "m.text", "body": body}
	if root != "" {
		content["m.relates_to"] = map[string]any{"rel_type": "m.thread", "event_id": root}
	}
	raw, _ := json.Marshal(content)
	s.txn++
	eid, err := s.rooms.Send(s.ctx, room.SendParams{Sender: sender, Device: "D", RoomID: rid, Type: "m.room.message", TxnID: fmt.Sprint(s.txn), Content: raw})
	if err != nil {
		s.t.Fatal(err)
	}
	return eid
}

// pos is the event's stream position.
func (s *notifStore) pos(eid id.EventID) int64 {
	s.t.Helper()
	var p int64
	if err := s.conn.QueryRow(s.ctx, `SELECT stream_pos FROM events WHERE event_id = $1`, eid).Scan(&p); err != nil {
		s.t.Fatal(err)
	}
	return p
}

// notify writes the push row push evaluation would write for user.
func (s *notifStore) notify(user id.UserID, eid id.EventID, thread string, highlight bool) {
	s.t.Helper()
	actions := `["notify"]`
	if highlight {
		actions = `["notify",{"set_tweak":"highlight"}]`
	}
	if thread == "" {
		thread = room.MainThread
	}
	_, err := s.conn.Exec(s.ctx, `INSERT INTO event_push_exceptions (user_id, room_id, stream_pos, event_id, thread_id, highlight, actions, ts)
		SELECT $1, room_id, stream_pos, event_id, $3, $4, $5, origin_server_ts FROM events WHERE event_id = $2`,
		user, eid, thread, highlight, actions)
	if err != nil {
		s.t.Fatal(err)
	}
}

func (s *notifStore) receipt(user id.UserID, rid id.RoomID, typ string, eid id.EventID, thread string) {
	s.t.Helper()
	var th *string
	if thread != "" {
		th = &thread
	}
	if err := s.rooms.SendReceipt(s.ctx, user, rid, typ, eid, th); err != nil {
		s.t.Fatal(err)
	}
}

func (s *notifStore) maxPos() int64 {
	s.t.Helper()
	p, err := s.db.MaxStreamPos(s.ctx)
	if err != nil {
		s.t.Fatal(err)
	}
	return p
}

// unread reads the user's counts both ways (pool and snapshot), which
// must agree.
func (s *notifStore) unread(user id.UserID, rooms []id.RoomID, to int64) map[id.RoomID]*syncapi.RoomUnread {
	s.t.Helper()
	var keys []syncapi.UnreadKey
	for _, r := range rooms {
		keys = append(keys, syncapi.UnreadKey{User: user, Room: r})
	}
	got, err := s.sync.Unread(s.ctx, keys, to)
	if err != nil {
		s.t.Fatal(err)
	}
	snap, err := s.sync.Snapshot(s.ctx)
	if err != nil {
		s.t.Fatal(err)
	}
	defer snap.Close()
	inSnap, err := snap.Unread(keys, to)
	if err != nil {
		s.t.Fatal(err)
	}
	if a, b := fmt.Sprint(countsString(got)), fmt.Sprint(countsString(inSnap)); a != b {
		s.t.Fatalf("pool read %s, snapshot read %s", a, b)
	}
	out := map[id.RoomID]*syncapi.RoomUnread{}
	for k, v := range got {
		if k.User != user {
			s.t.Fatalf("counts of %s in a read for %s", k.User, user)
		}
		out[k.Room] = v
	}
	return out
}

func countsString(m map[syncapi.UnreadKey]*syncapi.RoomUnread) map[syncapi.UnreadKey]string {
	out := map[syncapi.UnreadKey]string{}
	for k, u := range m {
		out[k] = fmt.Sprint(u.Threads, " changed ", u.Changed)
	}
	return out
}

func wantThreads(t *testing.T, what string, got *syncapi.RoomUnread, want map[string]syncapi.Unread) {
	t.Helper()
	if got == nil {
		t.Fatalf("%s: room missing from the result", what)
	}
	if len(got.Threads) != len(want) {
		t.Fatalf("%s: threads %v, want %v", what, got.Threads, want)
	}
	for th, w := range want {
		if got.Threads[th] != w {
			t.Fatalf("%s: thread %s: %+v, want %+v (all: %v)", what, th, got.Threads[th], w, got.Threads)
		}
	}
}

func un(n, h int) syncapi.Unread { return syncapi.Unread{NotificationCount: n, HighlightCount: h} }

func TestUnreadCountsFollowReceiptsAndOwnEvents(t *testing.T) {
	s := newNotifStore(t)
	alice, bob := notifUser("alice"), notifUser("bob")
	rid := s.room(alice, bob)
	quiet := s.room(alice, bob)

	root := s.send(alice, rid, "root", "")
	s.notify(bob, root, "", false)
	m2 := s.send(alice, rid, "two", "")
	s.notify(bob, m2, "", true)
	t1 := s.send(alice, rid, "in thread", root)
	s.notify(bob, t1, string(root), false)
	m3 := s.send(alice, rid, "three", "")
	s.notify(bob, m3, "", false)
	t2 := s.send(alice, rid, "in thread again", root)
	s.notify(bob, t2, string(root), true)
	// alice's own rows are not bob's.
	s.notify(alice, m3, "", true)

	got := s.unread(bob, []id.RoomID{rid, quiet}, s.maxPos())
	wantThreads(t, "nothing read", got[rid], map[string]syncapi.Unread{"main": un(3, 1), string(root): un(2, 1)})
	if got[rid].Changed != s.pos(t2) {
		t.Fatalf("changed %d, want the newest push row %d", got[rid].Changed, s.pos(t2))
	}
	wantThreads(t, "a room without rows", got[quiet], nil)
	var join int64
	if err := s.conn.QueryRow(s.ctx, `SELECT stream_pos FROM events WHERE room_id = $1 AND sender = $2`, quiet, bob).Scan(&join); err != nil {
		t.Fatal(err)
	}
	if got[quiet].Changed != join {
		t.Fatalf("quiet room changed %d, want bob's join at %d (his own event)", got[quiet].Changed, join)
	}

	// Rows above the position read are not counted yet.
	got = s.unread(bob, []id.RoomID{rid}, s.pos(m3)-1)
	wantThreads(t, "up to t1", got[rid], map[string]syncapi.Unread{"main": un(2, 1), string(root): un(1, 0)})
	if got[rid].Changed != s.pos(t1) {
		t.Fatalf("changed %d, want %d", got[rid].Changed, s.pos(t1))
	}

	// A private unthreaded receipt reads every thread up to its event.
	s.receipt(bob, rid, room.ReceiptReadPrivate, t1, "")
	got = s.unread(bob, []id.RoomID{rid}, s.maxPos())
	wantThreads(t, "private receipt at t1", got[rid], map[string]syncapi.Unread{"main": un(1, 0), string(root): un(1, 1)})
	if got[rid].Changed <= s.pos(t2) {
		t.Fatalf("changed %d, want the receipt's position (above %d)", got[rid].Changed, s.pos(t2))
	}

	// A public receipt behind the private one changes nothing: the
	// further of the two counts.
	s.receipt(bob, rid, room.ReceiptRead, root, "")
	got = s.unread(bob, []id.RoomID{rid}, s.maxPos())
	wantThreads(t, "m.read behind m.read.private", got[rid], map[string]syncapi.Unread{"main": un(1, 0), string(root): un(1, 1)})

	// A threaded receipt reads its thread only.
	s.receipt(bob, rid, room.ReceiptRead, t2, string(root))
	got = s.unread(bob, []id.RoomID{rid}, s.maxPos())
	wantThreads(t, "thread read", got[rid], map[string]syncapi.Unread{"main": un(1, 0)})
	s.receipt(bob, rid, room.ReceiptRead, m3, room.MainThread)
	got = s.unread(bob, []id.RoomID{rid}, s.maxPos())
	wantThreads(t, "main read", got[rid], nil)

	// New notifications, then bob's own message: read up to it, in every
	// thread, but only once the position read reaches it.
	m4 := s.send(alice, rid, "four", "")
	s.notify(bob, m4, "", false)
	t3 := s.send(alice, rid, "thread three", root)
	s.notify(bob, t3, string(root), false)
	before := s.maxPos()
	own := s.send(bob, rid, "I read it all", "")
	got = s.unread(bob, []id.RoomID{rid}, before)
	wantThreads(t, "before bob's message", got[rid], map[string]syncapi.Unread{"main": un(1, 0), string(root): un(1, 0)})
	got = s.unread(bob, []id.RoomID{rid}, s.maxPos())
	wantThreads(t, "after bob's message", got[rid], nil)
	if got[rid].Changed != s.pos(own) {
		t.Fatalf("changed %d, want bob's message at %d", got[rid].Changed, s.pos(own))
	}

	// Nothing asked, nothing read.
	if got := s.unread(bob, nil, s.maxPos()); len(got) != 0 {
		t.Fatalf("no rooms: %v", got)
	}
}

// TestUnreadCountsOfManyUsersInOneRead: one read for several users and
// rooms gives each pair what a read of it alone gives.
func TestUnreadCountsOfManyUsersInOneRead(t *testing.T) {
	s := newNotifStore(t)
	alice, bob, carol := notifUser("alice"), notifUser("bob"), notifUser("carol")
	r1 := s.room(alice, bob, carol)
	r2 := s.room(alice, bob)
	for i := range 4 {
		e1 := s.send(alice, r1, fmt.Sprint("one ", i), "")
		s.notify(bob, e1, "", i == 0)
		s.notify(carol, e1, "", false)
		e2 := s.send(alice, r2, fmt.Sprint("two ", i), "")
		s.notify(bob, e2, "", false)
		if i == 1 {
			s.receipt(carol, r1, room.ReceiptRead, e1, "")
			s.send(bob, r2, "mine", "")
		}
	}
	keys := []syncapi.UnreadKey{{User: bob, Room: r1}, {User: bob, Room: r2}, {User: carol, Room: r1}, {User: alice, Room: r2}, {User: bob, Room: r1}}
	to := s.maxPos()
	all, err := s.sync.Unread(s.ctx, keys, to)
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != 4 {
		t.Fatalf("%d results for 4 distinct keys: %v", len(all), countsString(all))
	}
	want := map[syncapi.UnreadKey]map[string]syncapi.Unread{
		{User: bob, Room: r1}:   {"main": un(4, 1)},
		{User: bob, Room: r2}:   {"main": un(2, 0)},
		{User: carol, Room: r1}: {"main": un(2, 0)},
		{User: alice, Room: r2}: nil,
	}
	for k, w := range want {
		wantThreads(t, fmt.Sprint(k), all[k], w)
		alone := s.unread(k.User, []id.RoomID{k.Room}, to)[k.Room]
		if fmt.Sprint(alone.Threads, alone.Changed) != fmt.Sprint(all[k].Threads, all[k].Changed) {
			t.Fatalf("%v: alone %v/%d, together %v/%d", k, alone.Threads, alone.Changed, all[k].Threads, all[k].Changed)
		}
	}
}

func TestNotificationsPagesNewestFirstWithReadFlags(t *testing.T) {
	s := newNotifStore(t)
	alice, bob := notifUser("alice"), notifUser("bob")
	r1 := s.room(alice, bob)
	r2 := s.room(alice, bob)
	var evs []id.EventID
	for i := range 6 {
		rid := r1
		if i%2 == 1 {
			rid = r2
		}
		eid := s.send(alice, rid, fmt.Sprint("m", i), "")
		s.notify(bob, eid, "", i%3 == 0)
		evs = append(evs, eid)
		if i == 3 {
			// bob's own message reads r2 up to evs[3], not evs[5].
			s.send(bob, r2, "me", "")
		}
	}
	// bob read r1 up to evs[2], not evs[4].
	s.receipt(bob, r1, room.ReceiptRead, evs[2], "")
	// A row of another user is not bob's.
	s.notify(alice, evs[5], "", true)

	list := func(before int64, limit int, highlight bool) []syncapi.StoredNotification {
		t.Helper()
		got, err := s.sync.Notifications(s.ctx, syncapi.NotificationsQuery{User: bob, Before: before, Limit: limit, HighlightOnly: highlight})
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	got := list(0, 10, false)
	if len(got) != 6 {
		t.Fatalf("%d notifications, want 6", len(got))
	}
	wantRead := []bool{false, false, true, true, true, true} // evs[5] first
	for i, n := range got {
		want := evs[5-i]
		if n.Event.ID != want || n.Pos != s.pos(want) {
			t.Fatalf("notification %d is %s at %d, want %s", i, n.Event.ID, n.Pos, want)
		}
		if n.Read != wantRead[i] {
			t.Fatalf("notification %d (%s) read=%v, want %v", i, n.Event.ID, n.Read, wantRead[i])
		}
		if n.Highlight != ((5-i)%3 == 0) || n.TS != n.Event.PDU.OriginServerTS {
			t.Fatalf("notification %d: highlight %v ts %d", i, n.Highlight, n.TS)
		}
		var actions []any
		if err := json.Unmarshal(n.Actions, &actions); err != nil || actions[0] != "notify" {
			t.Fatalf("actions %s", n.Actions)
		}
	}
	page := list(0, 2, false)
	if len(page) != 2 || page[1].Event.ID != evs[4] {
		t.Fatalf("first page of 2: %v", page)
	}
	page = list(page[1].Pos, 2, false)
	if len(page) != 2 || page[0].Event.ID != evs[3] || page[1].Event.ID != evs[2] {
		t.Fatalf("second page: %v", page)
	}
	hl := list(0, 10, true)
	if len(hl) != 2 || hl[0].Event.ID != evs[3] || hl[1].Event.ID != evs[0] {
		t.Fatalf("highlights: %v", hl)
	}
}

// TestUnreadCountsFoldLikeTheFullCount runs random sequences of room
// activity with push evaluation on and checks, after every step and for
// every joined member, that counts carried forward by folding the room's
// new events (UnreadEvents and RoomUnread.Fold, what /sync does when the
// member had no receipt since) equal the full count. A member's folded
// counts are carried from step to step; only a receipt of theirs starts
// them again from the full count, as /sync does.
func TestUnreadCountsFoldLikeTheFullCount(t *testing.T) {
	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	rng := mrand.New(mrand.NewPCG(uint64(seed), 0))
	s := newNotifStore(t)
	rules := push.NewService(s.db.PushRules(), nil)
	s.rooms.SetPushRules(rules)
	users := []id.UserID{notifUser("alice"), notifUser("bob"), notifUser("carol"), notifUser("dave")}
	for _, u := range users {
		// Push rules are account data, which belongs to an account.
		if _, err := s.conn.Exec(s.ctx, `INSERT INTO users (user_id, localpart) VALUES ($1, $2)`, u, u.Localpart()); err != nil {
			t.Fatal(err)
		}
	}
	muted := map[syncapi.UnreadKey]bool{}
	alice := users[0]
	names := map[id.UserID]string{}
	type roomState struct {
		id      id.RoomID
		joined  map[id.UserID]bool
		main    []id.EventID                // events of the main timeline
		threads map[id.EventID][]id.EventID // root: its replies
	}
	var rooms []*roomState
	for range 2 {
		r := &roomState{id: s.room(alice, users[1:]...), joined: map[id.UserID]bool{}, threads: map[id.EventID][]id.EventID{}}
		for _, u := range users {
			r.joined[u] = true
		}
		rooms = append(rooms, r)
	}
	// Per member and room: the counts carried forward and their position.
	type carried struct {
		counts   *syncapi.RoomUnread
		at       int64
		receipts bool // a receipt since: start again from the full count
	}
	state := map[syncapi.UnreadKey]*carried{}
	pick := func(list []id.UserID) id.UserID { return list[rng.IntN(len(list))] }
	members := func(r *roomState, joined bool) []id.UserID {
		var out []id.UserID
		for _, u := range users {
			if r.joined[u] == joined {
				out = append(out, u)
			}
		}
		return out
	}
	sendRaw := func(r *roomState, sender id.UserID, content map[string]any) id.EventID {
		t.Helper()
		raw, _ := json.Marshal(content)
		s.txn++
		eid, err := s.rooms.Send(s.ctx, room.SendParams{Sender: sender, Device: "D", RoomID: r.id, Type: "m.room.message", TxnID: fmt.Sprint(s.txn), Content: raw})
		if err != nil {
			t.Fatal(err)
		}
		return eid
	}
	folds, receipts, leaves := 0, 0, 0
	nonzero, highlights, threaded := 0, 0, 0
	for step := range 250 {
		r := rooms[rng.IntN(len(rooms))]
		in := members(r, true)
		sender := pick(in)
		var did string
		switch k := rng.IntN(100); {
		case k < 25:
			body := "hello"
			if rng.IntN(3) == 0 {
				// The legacy display-name rule highlights a member named
				// in the body.
				if n := names[pick(users)]; n != "" {
					body = "hi " + n
				}
			}
			r.main = append(r.main, sendRaw(r, sender, map[string]any{"msgtype": "m.text", "body": body}))
			did = "message: " + body
		case k < 35:
			target := pick(users)
			mentions := map[string]any{"user_ids": []id.UserID{target}}
			if rng.IntN(4) == 0 {
				mentions = map[string]any{"room": true}
				sender = alice // who may notify the room
				if !r.joined[alice] {
					continue
				}
			}
			r.main = append(r.main, sendRaw(r, sender, map[string]any{"msgtype": "m.text", "body": "look", "m.mentions": mentions}))
			did = fmt.Sprint("mention ", mentions)
		case k < 50:
			if len(r.main) == 0 {
				continue
			}
			root := r.main[rng.IntN(len(r.main))]
			content := map[string]any{"msgtype": "m.text", "body": "in thread",
				"m.relates_to": map[string]any{"rel_type": "m.thread", "event_id": root}}
			if rng.IntN(3) == 0 {
				content["m.mentions"] = map[string]any{"user_ids": []id.UserID{pick(users)}}
			}
			reply := sendRaw(r, sender, content)
			r.threads[root] = append(r.threads[root], reply)
			did = "thread reply"
		case k < 56:
			r.main = append(r.main, sendRaw(r, sender, map[string]any{"msgtype": "m.notice", "body": "bot"}))
			did = "notice"
		case k < 78:
			typ := room.ReceiptRead
			if rng.IntN(2) == 0 {
				typ = room.ReceiptReadPrivate
			}
			var eid id.EventID
			var thread string
			roots := slices.Collect(maps.Keys(r.threads))
			slices.Sort(roots)
			switch c := rng.IntN(3); {
			case c == 0 && len(roots) > 0:
				root := roots[rng.IntN(len(roots))]
				replies := r.threads[root]
				eid, thread = replies[rng.IntN(len(replies))], string(root)
			case len(r.main) > 0:
				eid = r.main[rng.IntN(len(r.main))]
				if c == 1 {
					thread = room.MainThread
				}
			default:
				continue
			}
			if thread == "" && rng.IntN(2) == 0 && len(roots) > 0 {
				// An unthreaded receipt may name a thread's event.
				replies := r.threads[roots[rng.IntN(len(roots))]]
				eid = replies[rng.IntN(len(replies))]
			}
			s.receipt(sender, r.id, typ, eid, thread)
			if c := state[syncapi.UnreadKey{User: sender, Room: r.id}]; c != nil {
				c.receipts = true
			}
			receipts++
			did = fmt.Sprintf("%s receipt in thread %q", typ, thread)
		case k < 88:
			names[sender] = fmt.Sprintf("Name%d", step)
			content, _ := json.Marshal(map[string]any{"membership": "join", "displayname": names[sender]})
			if _, err := s.rooms.SetState(s.ctx, sender, r.id, "m.room.member", string(sender), content); err != nil {
				t.Fatal(err)
			}
			did = "display name " + names[sender]
		case k < 91:
			// A muted room gives the member an exception that does not
			// notify while the others are notified.
			mk := syncapi.UnreadKey{User: sender, Room: r.id}
			var err error
			if muted[mk] {
				err = rules.DeleteRule(s.ctx, sender, "global", "room", string(r.id))
				did = "unmute"
			} else {
				err = rules.PutRule(s.ctx, sender, "global", "room", string(r.id), "", "", json.RawMessage(`{"actions":[]}`))
				did = "mute"
			}
			if err != nil {
				t.Fatal(err)
			}
			muted[mk] = !muted[mk]
		case k < 95:
			if sender == alice {
				continue // alice stays to invite and notify the room
			}
			if err := s.rooms.Leave(s.ctx, room.MembershipParams{Sender: sender, RoomID: r.id}); err != nil {
				t.Fatal(err)
			}
			r.joined[sender] = false
			leaves++
			did = "leave"
		default:
			out := members(r, false)
			if len(out) == 0 {
				continue
			}
			sender = pick(out)
			if rng.IntN(2) == 0 {
				if err := s.rooms.Invite(s.ctx, room.MembershipParams{Sender: alice, RoomID: r.id, Target: sender}); err != nil {
					t.Fatal(err)
				}
				did = "invite and "
			}
			if err := s.rooms.Join(s.ctx, room.MembershipParams{Sender: sender, RoomID: r.id}); err != nil {
				t.Fatal(err)
			}
			r.joined[sender] = true
			did += "join"
		}
		to := s.maxPos()
		for _, rr := range rooms {
			for _, u := range members(rr, true) {
				k := syncapi.UnreadKey{User: u, Room: rr.id}
				full := s.unread(u, []id.RoomID{rr.id}, to)[rr.id]
				c := state[k]
				if c == nil || c.receipts {
					state[k] = &carried{counts: full, at: to}
					continue
				}
				events := s.unreadEvents(rr.id, c.at, to)
				folded, ok := c.counts.Fold(u, events)
				if !ok {
					t.Fatalf("step %d (%s by %s): %s's counts in %s do not fold over %d events", step, did, sender, u, rr.id, len(events))
				}
				if a, b := fmt.Sprint(folded.Threads, " changed ", folded.Changed), fmt.Sprint(full.Threads, " changed ", full.Changed); a != b {
					t.Fatalf("step %d (%s by %s in %s): %s in %s: folded %s, full count %s", step, did, sender, r.id, u, rr.id, a, b)
				}
				c.counts, c.at = folded, to
				folds++
				total, hl, threads := 0, 0, 0
				for th, n := range folded.Threads {
					total += n.NotificationCount
					hl += n.HighlightCount
					if th != room.MainThread {
						threads++
					}
				}
				if total > 0 {
					nonzero++
				}
				if hl > 0 {
					highlights++
				}
				if threads > 0 {
					threaded++
				}
			}
		}
	}
	t.Logf("%d folds checked (%d with counts, %d with highlights, %d with threads); %d receipts, %d leaves",
		folds, nonzero, highlights, threaded, receipts, leaves)
	if nonzero == 0 || highlights == 0 || threaded == 0 {
		t.Fatal("the sequence never had unread counts of every kind to check")
	}
}

// unreadEvents reads the room's events in (after, to] both ways (pool
// and snapshot), which must agree.
func (s *notifStore) unreadEvents(rid id.RoomID, after, to int64) []syncapi.UnreadEvent {
	s.t.Helper()
	got, err := s.sync.UnreadEvents(s.ctx, rid, after, to, 1000)
	if err != nil {
		s.t.Fatal(err)
	}
	snap, err := s.sync.Snapshot(s.ctx)
	if err != nil {
		s.t.Fatal(err)
	}
	defer snap.Close()
	inSnap, err := snap.UnreadEvents(rid, after, to, 1000)
	if err != nil {
		s.t.Fatal(err)
	}
	if a, b := eventsString(got), eventsString(inSnap); a != b {
		s.t.Fatalf("pool read %s, snapshot read %s", a, b)
	}
	return got
}

func eventsString(evs []syncapi.UnreadEvent) string {
	var b strings.Builder
	for _, e := range evs {
		fmt.Fprintf(&b, "%d %s state=%v member=%s/%s", e.Pos, e.Sender, e.State, e.Member, e.Membership)
		if e.Summary != nil {
			fmt.Fprintf(&b, " summary=%+v", *e.Summary)
		}
		fmt.Fprintf(&b, " exceptions=%v;", e.Exceptions)
	}
	return b.String()
}
