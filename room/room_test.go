package room_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	jsonv2 "encoding/json/v2"
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"maunium.net/go/mautrix/federation/eventauth"
	"maunium.net/go/mautrix/federation/pdu"
	"maunium.net/go/mautrix/id"

	"github.com/weftchat/weft/account"
	"github.com/weftchat/weft/room"
	"github.com/weftchat/weft/storage"
	"github.com/weftchat/weft/storage/pgtest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

const testServer = "example.org"

// localpartProfiles gives every user their localpart as display name.
type localpartProfiles struct{}

func (localpartProfiles) MemberProfile(_ context.Context, u id.UserID) (string, string, error) {
	return u.Localpart(), "", nil
}

// harness is a room service over real storage on a fresh database, plus a
// direct pool on the same database for reading tables the domain does not
// expose (the whole events table, account_data).
type harness struct {
	db     *storage.DB
	store  *storage.Rooms
	pool   *pgxpool.Pool
	rooms  *room.Service
	pub    ed25519.PublicKey
	keyID  id.KeyID
	signer room.Signer
	txn    int // the last transaction ID send used
}

func newHarness(t testing.TB, maxConns int32) *harness {
	t.Helper()
	ctx := context.Background()
	url := pgtest.NewDatabase(t)
	db, err := storage.Open(ctx, url, storage.Options{MaxConns: maxConns})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(db.Close)
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{db: db, store: db.Rooms(), pool: pool, pub: pub, keyID: "ed25519:test"}
	h.signer = room.Signer{ServerName: testServer, KeyID: h.keyID, Key: priv}
	h.rooms = room.New(room.Config{Signer: h.signer}, h.store, localpartProfiles{}, nil)
	return h
}

func user(localpart string) id.UserID { return id.NewUserID(localpart, testServer) }

// getKey serves the test's public key, and no other.
func (h *harness) getKey(server string, keyID id.KeyID, _ time.Time) (id.SigningKey, time.Time, error) {
	if server != testServer || keyID != h.keyID {
		return "", time.Time{}, nil
	}
	return id.SigningKey(base64.RawStdEncoding.EncodeToString(h.pub)), time.Now().Add(24 * time.Hour), nil
}

func textContent(body string) json.RawMessage {
	b, _ := json.Marshal(map[string]string{"msgtype": "m.text", "body": body})
	return b
}

// timeline pages the Store's Timeline forward over the whole stream, in
// small pages so that paging itself is exercised.
func (h *harness) timeline(t *testing.T, roomID id.RoomID) []*room.Event {
	t.Helper()
	ctx := context.Background()
	max, err := h.store.MaxStreamPos(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var out []*room.Event
	from := int64(0)
	for {
		page, err := h.store.Timeline(ctx, roomID, from, max, false, 7)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, page...)
		if len(page) < 7 {
			return out
		}
		from = page[len(page)-1].StreamPos
	}
}

// storedRow is one row of the events table, read directly.
type storedRow struct {
	EventID   id.EventID
	RoomID    id.RoomID
	StreamPos int64
	Depth     int64
	Type      string
	PDU       *pdu.PDU
}

// allEvents reads every row of the events table, in stream order.
func (h *harness) allEvents(t *testing.T) []storedRow {
	t.Helper()
	rows, err := h.pool.Query(context.Background(), `SELECT event_id, room_id, stream_pos, depth, type, pdu::text FROM events ORDER BY stream_pos`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []storedRow
	for rows.Next() {
		var r storedRow
		var raw string
		if err := rows.Scan(&r.EventID, &r.RoomID, &r.StreamPos, &r.Depth, &r.Type, &raw); err != nil {
			t.Fatal(err)
		}
		var p pdu.PDU
		if err := jsonv2.Unmarshal([]byte(raw), &p); err != nil {
			t.Fatalf("event %s: stored PDU does not decode: %v", r.EventID, err)
		}
		r.PDU = &p
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// checkLinear asserts that evs (one room's events in stream order) form a
// single chain: the first is the create event at depth 1 with no
// prev_events, and every later one has exactly the previous event as
// prev_events and its depth plus one.
func checkLinear(t *testing.T, roomID id.RoomID, ids []id.EventID, pdus []*pdu.PDU) {
	t.Helper()
	for i, p := range pdus {
		if i == 0 {
			if p.Type != "m.room.create" || len(p.PrevEvents) != 0 || p.Depth != 1 {
				t.Errorf("%s: first event is %s with prev_events %v, depth %d; want the create event, no prev_events, depth 1", roomID, p.Type, p.PrevEvents, p.Depth)
			}
			continue
		}
		if !slices.Equal(p.PrevEvents, []id.EventID{ids[i-1]}) {
			t.Errorf("%s: event %d (%s) has prev_events %v, want [%s]", roomID, i, ids[i], p.PrevEvents, ids[i-1])
		}
		if p.Depth != pdus[i-1].Depth+1 {
			t.Errorf("%s: event %d (%s) has depth %d after depth %d", roomID, i, ids[i], p.Depth, pdus[i-1].Depth)
		}
	}
}

// scenario runs a room through its life: creation with a preset, joins,
// messages, state, invite, join, kick, ban, unban, a rejected invite,
// redactions, leave and rejoin.
func scenario(t *testing.T, h *harness, version id.RoomVersion, preset string) id.RoomID {
	t.Helper()
	ctx := context.Background()
	alice, bob, carol, dave, eve := user("alice"), user("bob"), user("carol"), user("dave"), user("eve")
	must := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s %s: %s: %v", version, preset, what, err)
		}
	}
	topic := "the topic"
	params := room.CreateParams{
		Creator: alice, Preset: preset, RoomVersion: version, Name: "Room " + preset, Topic: &topic,
		RoomAliasName: fmt.Sprintf("a%s_%s", version, preset),
		InitialState: []room.StateEvent{
			{Type: "org.example.flavour", StateKey: "", Content: json.RawMessage(`{"flavour":"lemon"}`)},
		},
	}
	if preset == "public_chat" {
		params.Visibility = "public"
	} else {
		params.Invite = []id.UserID{bob}
		params.IsDirect = preset == "trusted_private_chat"
	}
	rid, err := h.rooms.Create(ctx, params)
	must("create", err)
	mp := func(sender, target id.UserID, reason string) room.MembershipParams {
		return room.MembershipParams{Sender: sender, RoomID: rid, Target: target, Reason: reason}
	}
	send := func(sender id.UserID, txn, body string) id.EventID {
		t.Helper()
		eid, err := h.rooms.Send(ctx, room.SendParams{Sender: sender, Device: "DEV", RoomID: rid, Type: "m.room.message", TxnID: txn, Content: textContent(body)})
		must("send "+txn, err)
		return eid
	}
	must("bob joins", h.rooms.Join(ctx, mp(bob, bob, "")))
	send(alice, "a1", "hello")
	b1 := send(bob, "b1", "hi")
	_, err = h.rooms.SetState(ctx, alice, rid, "m.room.topic", "", json.RawMessage(`{"topic":"a new topic"}`))
	must("topic", err)
	must("invite carol", h.rooms.Invite(ctx, mp(alice, carol, "")))
	must("carol joins", h.rooms.Join(ctx, mp(carol, carol, "")))
	send(carol, "c1", "I am carol")
	must("kick carol", h.rooms.Kick(ctx, mp(alice, carol, "bye")))
	must("ban carol", h.rooms.Ban(ctx, mp(alice, carol, "and stay out")))
	must("invite dave", h.rooms.Invite(ctx, mp(alice, dave, "")))
	must("dave rejects", h.rooms.Leave(ctx, mp(dave, dave, "no thanks")))
	must("ban eve", h.rooms.Ban(ctx, mp(alice, eve, "pre-emptive")))
	must("unban eve", h.rooms.Unban(ctx, mp(alice, eve, "")))
	b2 := send(bob, "b2", "oops")
	r1, err := h.rooms.Redact(ctx, alice, "DEV", rid, b1, "r1", "moderated")
	must("alice redacts bob's message", err)
	_, err = h.rooms.Redact(ctx, bob, "DEV", rid, b2, "r2", "")
	must("bob redacts his own message", err)
	must("bob leaves", h.rooms.Leave(ctx, mp(bob, bob, "")))
	must("invite bob again", h.rooms.Invite(ctx, mp(alice, bob, "")))
	must("bob rejoins", h.rooms.Join(ctx, mp(bob, bob, "")))
	send(bob, "b3", "back")
	send(alice, "a2", "welcome back")

	e, err := h.store.Event(ctx, b1)
	must("reading b1", err)
	if e.RedactedBy != r1 {
		t.Errorf("%s %s: redacted event has redacted_by %q, want %q", version, preset, e.RedactedBy, r1)
	}
	return rid
}

// TestStoredEventsVerify checks every event the room domain stored, as a
// remote server would on receipt: content hash, signature with our public
// key, event ID as the reference hash of the stored bytes, and the auth
// rules against the stored auth events. It also checks that auth_events are
// exactly the auth selection from the stored state before each event, and
// that each room's graph is one chain.
func TestStoredEventsVerify(t *testing.T) {
	h := newHarness(t, 10)
	ctx := context.Background()
	versions := map[id.RoomID]id.RoomVersion{}
	var roomIDs []id.RoomID
	for _, v := range []id.RoomVersion{id.RoomV10, id.RoomV11, id.RoomV12} {
		for _, preset := range []string{"private_chat", "trusted_private_chat", "public_chat"} {
			rid := scenario(t, h, v, preset)
			versions[rid] = v
			roomIDs = append(roomIDs, rid)
		}
	}

	// Every row of the events table, grouped by room: the Store's timeline
	// must return exactly these, so the checks below cover every stored event.
	all := h.allEvents(t)
	byRoom := map[id.RoomID][]id.EventID{}
	for _, r := range all {
		byRoom[r.RoomID] = append(byRoom[r.RoomID], r.EventID)
	}
	if len(byRoom) != len(roomIDs) {
		t.Fatalf("events table holds %d rooms, want %d", len(byRoom), len(roomIDs))
	}
	checked := 0
	for _, rid := range roomIDs {
		version := versions[rid]
		tl := h.timeline(t, rid)
		ids := make([]id.EventID, len(tl))
		pdus := make([]*pdu.PDU, len(tl))
		for i, e := range tl {
			ids[i], pdus[i] = e.ID, e.PDU
		}
		if !slices.Equal(ids, byRoom[rid]) {
			t.Fatalf("%s: timeline %v differs from the events table %v", rid, ids, byRoom[rid])
		}
		checkLinear(t, rid, ids, pdus)
		pos := map[id.EventID]int64{}
		for _, e := range tl {
			pos[e.ID] = e.StreamPos
		}

		getEvents := func(want []id.EventID) ([]*pdu.PDU, error) {
			out := make([]*pdu.PDU, len(want))
			for i, eid := range want {
				e, err := h.store.Event(ctx, eid)
				if errors.Is(err, room.ErrNotFound) {
					if len(want) == 1 && version == id.RoomV12 && eid == id.EventID("$"+rid[1:]) {
						return nil, nil // the create event lookup: not found is an empty answer
					}
					continue // a missing auth event is a nil in its place
				}
				if err != nil {
					return nil, err
				}
				out[i] = e.PDU
			}
			return out, nil
		}

		for _, e := range tl {
			checked++
			p := e.PDU
			if e.RoomID != rid || e.RoomVersion != version {
				t.Errorf("%s: stored with room %s version %s, want %s %s", e.ID, e.RoomID, e.RoomVersion, rid, version)
			}
			if !p.VerifyContentHash() {
				t.Errorf("%s %s (%s): content hash does not verify", version, e.ID, p.Type)
			}
			if err := p.VerifySignature(version, testServer, h.getKey); err != nil {
				t.Errorf("%s %s (%s): signature: %v", version, e.ID, p.Type, err)
			}
			if got, err := p.GetEventID(version); err != nil || got != e.ID {
				t.Errorf("%s %s (%s): reference hash gives %s (%v), stored as %s", version, e.ID, p.Type, got, err, e.ID)
			}
			wantRoom := p.RoomID
			if version == id.RoomV12 && p.Type == "m.room.create" {
				if p.RoomID != "" {
					t.Errorf("v12 create event %s carries room_id %s", e.ID, p.RoomID)
				}
				var err error
				if wantRoom, err = p.GetRoomID(); err != nil {
					t.Errorf("v12 create event %s: %v", e.ID, err)
				}
			}
			if wantRoom != rid {
				t.Errorf("%s: room_id %s, want %s", e.ID, wantRoom, rid)
			}
			if err := eventauth.Authorize(version, p, nil, getEvents, h.getKey); err != nil {
				t.Errorf("%s %s (%s %v): not authorised by its stored auth events: %v", version, e.ID, p.Type, p.StateKey, err)
			}

			// auth_events = the auth selection applied to the stored state
			// before the event, and all of them earlier in the same room.
			before, err := h.store.StateAt(ctx, rid, e.ID, false)
			if err != nil {
				t.Fatal(err)
			}
			stateIDs := map[pdu.StateKey]id.EventID{}
			for _, s := range before {
				stateIDs[pdu.StateKey{Type: s.PDU.Type, StateKey: *s.PDU.StateKey}] = s.ID
			}
			var want []id.EventID
			for _, k := range p.AuthEventSelection(version) {
				if eid, ok := stateIDs[k]; ok {
					want = append(want, eid)
				}
			}
			got := slices.Clone(p.AuthEvents)
			slices.Sort(got)
			slices.Sort(want)
			if !slices.Equal(got, want) {
				t.Errorf("%s %s (%s): auth_events %v, want %v (selection from the state before it)", version, e.ID, p.Type, got, want)
			}
			for _, a := range p.AuthEvents {
				if ap, ok := pos[a]; !ok || ap >= e.StreamPos {
					t.Errorf("%s: auth event %s is not an earlier event of the room", e.ID, a)
				}
			}
		}

		// The state after the last event, resolved from snapshots, is the
		// room's current state.
		after, err := h.store.StateAt(ctx, rid, tl[len(tl)-1].ID, true)
		if err != nil {
			t.Fatal(err)
		}
		cur, err := h.store.CurrentState(ctx, rid)
		if err != nil {
			t.Fatal(err)
		}
		if a, c := eventIDs(after), eventIDs(cur); !slices.Equal(a, c) {
			t.Errorf("%s: state after the last event %v differs from current state %v", rid, a, c)
		}
	}
	if checked != len(all) {
		t.Fatalf("checked %d events, the events table holds %d", checked, len(all))
	}
	// 9 rooms of at least 24 events: the scenario really ran.
	if len(all) < 9*24 {
		t.Fatalf("only %d events stored", len(all))
	}
}

func eventIDs(evs []*room.Event) []id.EventID {
	out := make([]id.EventID, len(evs))
	for i, e := range evs {
		out[i] = e.ID
	}
	slices.Sort(out)
	return out
}

// TestConcurrentAppends hammers one room from 16 goroutines while 16 others
// each write their own room. Every acknowledged event must be stored once,
// each room must stay one chain, and stream positions must be unique.
func TestConcurrentAppends(t *testing.T) {
	const writers, perWriter = 16, 50
	h := newHarness(t, 40)
	ctx := context.Background()
	alice := user("alice")
	shared, err := h.rooms.Create(ctx, room.CreateParams{Creator: alice, Preset: "public_chat"})
	if err != nil {
		t.Fatal(err)
	}
	users := make([]id.UserID, writers)
	own := make([]id.RoomID, writers)
	for i := range writers {
		users[i] = user(fmt.Sprintf("u%02d", i))
		if err := h.rooms.Join(ctx, room.MembershipParams{Sender: users[i], RoomID: shared}); err != nil {
			t.Fatal(err)
		}
		if own[i], err = h.rooms.Create(ctx, room.CreateParams{Creator: users[i], Preset: "private_chat"}); err != nil {
			t.Fatal(err)
		}
	}

	type ack struct {
		room id.RoomID
		body string
		id   id.EventID
	}
	acks := make([][]ack, 2*writers)
	start := make(chan struct{})
	var wg sync.WaitGroup
	run := func(slot int, sender id.UserID, rid id.RoomID, prefix string) {
		wg.Go(func() {
			<-start
			for j := range perWriter {
				body := fmt.Sprintf("%s-%s-%d", prefix, sender.Localpart(), j)
				eid, err := h.rooms.Send(ctx, room.SendParams{Sender: sender, Device: "DEV", RoomID: rid, Type: "m.room.message", TxnID: body, Content: textContent(body)})
				if err != nil {
					t.Errorf("%s: %v", body, err)
					return
				}
				acks[slot] = append(acks[slot], ack{rid, body, eid})
			}
		})
	}
	for i := range writers {
		run(i, users[i], shared, "shared")
		run(writers+i, users[i], own[i], "own")
	}
	close(start)
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}

	all := h.allEvents(t)
	occurrences := map[id.EventID]int{}
	byID := map[id.EventID]storedRow{}
	perRoom := map[id.RoomID][]storedRow{}
	for i, r := range all {
		if i > 0 && r.StreamPos <= all[i-1].StreamPos {
			t.Errorf("stream positions not strictly increasing: %d after %d", r.StreamPos, all[i-1].StreamPos)
		}
		if r.Depth != r.PDU.Depth {
			t.Errorf("%s: depth column %d, PDU depth %d", r.EventID, r.Depth, r.PDU.Depth)
		}
		occurrences[r.EventID]++
		byID[r.EventID] = r
		perRoom[r.RoomID] = append(perRoom[r.RoomID], r)
	}
	seen := map[id.EventID]bool{}
	for _, slot := range acks {
		if len(slot) != perWriter {
			t.Errorf("a writer got %d acknowledgements, want %d", len(slot), perWriter)
		}
		for _, a := range slot {
			if seen[a.id] {
				t.Errorf("event ID %s acknowledged for two sends", a.id)
			}
			seen[a.id] = true
			if occurrences[a.id] != 1 {
				t.Errorf("acknowledged %s (%s) stored %d times", a.id, a.body, occurrences[a.id])
				continue
			}
			r := byID[a.id]
			var c struct{ Body string }
			_ = json.Unmarshal(r.PDU.Content, &c)
			if r.RoomID != a.room || r.Type != "m.room.message" || c.Body != a.body {
				t.Errorf("acknowledged %s for %q in %s, stored as %s %q in %s", a.id, a.body, a.room, r.Type, c.Body, r.RoomID)
			}
		}
	}
	for rid, rows := range perRoom {
		ids := make([]id.EventID, len(rows))
		pdus := make([]*pdu.PDU, len(rows))
		messages := 0
		for i, r := range rows {
			ids[i], pdus[i] = r.EventID, r.PDU
			if r.Type == "m.room.message" {
				messages++
			}
		}
		checkLinear(t, rid, ids, pdus)
		want := perWriter
		if rid == shared {
			want = writers * perWriter
		}
		if messages != want {
			t.Errorf("%s holds %d messages, want %d", rid, messages, want)
		}
	}
	if len(perRoom) != writers+1 {
		t.Errorf("%d rooms hold events, want %d", len(perRoom), writers+1)
	}
}

// TestTxnIdempotentUnderConcurrency sends the same (user, device, txn ID)
// from 8 goroutines at once: one event, one ID for all. The same txn ID
// from another device is another event; concurrent identical redactions
// make one redaction.
func TestTxnIdempotentUnderConcurrency(t *testing.T) {
	h := newHarness(t, 20)
	ctx := context.Background()
	alice := user("alice")
	rid, err := h.rooms.Create(ctx, room.CreateParams{Creator: alice, Preset: "private_chat"})
	if err != nil {
		t.Fatal(err)
	}
	concurrently := func(fn func() (id.EventID, error)) id.EventID {
		t.Helper()
		const n = 8
		got := make([]id.EventID, n)
		errs := make([]error, n)
		start := make(chan struct{})
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() {
				<-start
				got[i], errs[i] = fn()
			})
		}
		close(start)
		wg.Wait()
		for i := range n {
			if errs[i] != nil {
				t.Fatalf("attempt %d: %v", i, errs[i])
			}
			if got[i] == "" || got[i] != got[0] {
				t.Fatalf("concurrent retries got different event IDs: %v", got)
			}
		}
		return got[0]
	}
	send := func(device id.DeviceID) func() (id.EventID, error) {
		return func() (id.EventID, error) {
			return h.rooms.Send(ctx, room.SendParams{Sender: alice, Device: device, RoomID: rid, Type: "m.room.message", TxnID: "same-txn", Content: textContent("once")})
		}
	}
	first := concurrently(send("DEV1"))
	other := concurrently(send("DEV2"))
	if first == other {
		t.Fatalf("the same txn ID from two devices gave one event %s; txn IDs are per device", first)
	}
	redaction := concurrently(func() (id.EventID, error) {
		return h.rooms.Redact(ctx, alice, "DEV1", rid, first, "redact-txn", "")
	})

	count := func(typ string) int {
		var n int
		if err := h.pool.QueryRow(ctx, `SELECT count(*) FROM events WHERE room_id = $1 AND type = $2`, rid, typ).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	if n := count("m.room.message"); n != 2 {
		t.Errorf("%d messages stored, want 2 (one per device)", n)
	}
	if n := count("m.room.redaction"); n != 1 {
		t.Errorf("%d redactions stored, want 1", n)
	}
	for _, eid := range []id.EventID{first, other, redaction} {
		if _, err := h.store.Event(ctx, eid); err != nil {
			t.Errorf("returned event %s is not stored: %v", eid, err)
		}
	}
	// A retry after everything settled still answers the first event.
	if again, err := send("DEV1")(); err != nil || again != first {
		t.Errorf("later retry: %s, %v; want %s", again, err, first)
	}
}

// TestStreamPositionsBecomeVisibleInOrder checks the design's one
// invariant: no reader may see position N until every position below N is
// committed. Writers append room events (single sends and whole room
// creations, many positions in one transaction) and account data while
// readers sample MaxStreamPos and list every position at or below it. A
// position at or below an observed maximum that shows up later breaks the
// invariant: a syncing client would have skipped it for ever.
func TestStreamPositionsBecomeVisibleInOrder(t *testing.T) {
	const (
		roomsN        = 4
		sendersPer    = 2
		sends         = 40
		dataWriters   = 4
		dataWrites    = 40
		creators      = 2
		creates       = 6
		readers       = 4
		recheckRounds = 2
	)
	h := newHarness(t, 40)
	ctx := context.Background()

	roomIDs := make([]id.RoomID, roomsN)
	for i := range roomsN {
		var err error
		roomIDs[i], err = h.rooms.Create(ctx, room.CreateParams{Creator: user(fmt.Sprintf("owner%d", i)), Preset: "public_chat"})
		if err != nil {
			t.Fatal(err)
		}
	}
	dataUsers := make([]id.UserID, dataWriters)
	for i := range dataWriters {
		dataUsers[i] = user(fmt.Sprintf("data%d", i))
		if err := h.db.Accounts().CreateUser(ctx, account.User{UserID: dataUsers[i], Localpart: dataUsers[i].Localpart()}, "", nil, ""); err != nil {
			t.Fatal(err)
		}
	}

	// positionsUpTo lists every committed position <= max, from one snapshot.
	// Account data types are all distinct, so no row is ever replaced and
	// the set of positions only grows.
	positionsUpTo := func(max int64) ([]int64, error) {
		rows, err := h.pool.Query(ctx, `SELECT stream_pos FROM events WHERE stream_pos <= $1
			UNION ALL SELECT stream_pos FROM account_data WHERE stream_pos <= $1 ORDER BY 1`, max)
		if err != nil {
			return nil, err
		}
		return pgx.CollectRows(rows, pgx.RowTo[int64])
	}

	var writersWG, readersWG sync.WaitGroup
	start := make(chan struct{})
	done := make(chan struct{})
	for i := range roomsN {
		for s := range sendersPer {
			sender := user(fmt.Sprintf("sender%d_%d", i, s))
			writersWG.Go(func() {
				<-start
				if err := h.rooms.Join(ctx, room.MembershipParams{Sender: sender, RoomID: roomIDs[i]}); err != nil {
					t.Errorf("join: %v", err)
					return
				}
				for j := range sends {
					txn := fmt.Sprintf("t%d", j)
					if _, err := h.rooms.Send(ctx, room.SendParams{Sender: sender, Device: "D", RoomID: roomIDs[i], Type: "m.room.message", TxnID: txn, Content: textContent(txn)}); err != nil {
						t.Errorf("send: %v", err)
						return
					}
				}
			})
		}
	}
	for i := range dataWriters {
		writersWG.Go(func() {
			<-start
			for j := range dataWrites {
				if _, err := h.db.Accounts().SetAccountData(ctx, dataUsers[i], "", fmt.Sprintf("org.example.t%d", j), json.RawMessage(`{}`)); err != nil {
					t.Errorf("account data: %v", err)
					return
				}
			}
		})
	}
	for i := range creators {
		writersWG.Go(func() {
			<-start
			for range creates {
				if _, err := h.rooms.Create(ctx, room.CreateParams{Creator: user(fmt.Sprintf("creator%d", i)), Preset: "private_chat", Name: "busy"}); err != nil {
					t.Errorf("create: %v", err)
					return
				}
			}
		})
	}

	type observation struct {
		max   int64
		count int
	}
	observed := make([][]observation, readers)
	for r := range readers {
		readersWG.Go(func() {
			<-start
			last := int64(0)
			for {
				select {
				case <-done:
					return
				default:
				}
				max, err := h.db.MaxStreamPos(ctx)
				if err != nil {
					t.Errorf("MaxStreamPos: %v", err)
					return
				}
				if max < last {
					t.Errorf("MaxStreamPos went back from %d to %d", last, max)
				}
				last = max
				first, err := positionsUpTo(max)
				if err != nil {
					t.Errorf("listing: %v", err)
					return
				}
				if n := len(first); n > 0 && first[n-1] != max {
					// Not an error by itself (a rolled-back writer leaves a
					// gap), but none of these writers rolls back.
					t.Errorf("MaxStreamPos %d is not a visible position (highest visible <= it: %d)", max, first[n-1])
				}
				for range recheckRounds {
					again, err := positionsUpTo(max)
					if err != nil {
						t.Errorf("listing: %v", err)
						return
					}
					if !slices.Equal(first, again) {
						t.Errorf("after MaxStreamPos %d: positions <= it grew from %d to %d: %v appeared late",
							max, len(first), len(again), newPositions(first, again))
						return
					}
				}
				observed[r] = append(observed[r], observation{max, len(first)})
			}
		})
	}
	close(start)
	writersWG.Wait()
	close(done)
	readersWG.Wait()
	if t.Failed() {
		t.FailNow()
	}

	final, err := h.db.MaxStreamPos(ctx)
	if err != nil {
		t.Fatal(err)
	}
	during := 0
	for _, obs := range observed {
		for _, o := range obs {
			got, err := positionsUpTo(o.max)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != o.count {
				t.Errorf("a reader saw %d positions <= %d; after the run there are %d", o.count, o.max, len(got))
			}
			if o.max < final {
				during++
			}
		}
	}
	// The readers must really have read while writers wrote, or the test
	// proved nothing.
	if during < 2 {
		t.Fatalf("only %d observations were taken while writes were in flight", during)
	}
	all, err := positionsUpTo(final)
	if err != nil {
		t.Fatal(err)
	}
	wantMin := roomsN*sendersPer*(sends+1) + dataWriters*dataWrites
	if len(all) < wantMin {
		t.Fatalf("%d positions after the run, want at least %d", len(all), wantMin)
	}
	t.Logf("%d positions, %d observations during writes", len(all), during)
}

func newPositions(before, after []int64) []int64 {
	var out []int64
	for _, p := range after {
		if _, found := slices.BinarySearch(before, p); !found {
			out = append(out, p)
		}
	}
	return out
}
