package e2e

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// End-to-end tests of rooms: createRoom and its presets, sending, state,
// the auth rules as clients meet them, membership, history visibility,
// redaction and /messages pagination.

const rmPassword = "room tests password"

// rmStart starts a parallel server for one room test.
func rmStart(t *testing.T) *Server {
	t.Helper()
	t.Parallel()
	return startAccounts(t, nil)
}

// rmSend sends a text message and returns its event ID.
func rmSend(t *testing.T, cli *mautrix.Client, roomID id.RoomID, body string) id.EventID {
	t.Helper()
	resp, err := cli.SendMessageEvent(context.Background(), roomID, event.EventMessage, map[string]any{"msgtype": "m.text", "body": body})
	if err != nil {
		t.Fatalf("%s sending %q: %v", cli.UserID, body, err)
	}
	return resp.EventID
}

// rmTimeline is the whole timeline cli may see, oldest first, paged forward
// from the start of the room.
func rmTimeline(t *testing.T, cli *mautrix.Client, roomID id.RoomID) []*event.Event {
	t.Helper()
	var out []*event.Event
	from := ""
	for range 100 {
		resp, err := cli.Messages(context.Background(), roomID, from, "", mautrix.DirectionForward, nil, 50)
		if err != nil {
			t.Fatalf("%s reading /messages: %v", cli.UserID, err)
		}
		out = append(out, resp.Chunk...)
		if resp.End == "" {
			return out
		}
		from = resp.End
	}
	t.Fatal("/messages never ended")
	return nil
}

// rmCount counts the events of the room's timeline as owner sees it.
func rmCount(t *testing.T, owner *mautrix.Client, roomID id.RoomID) int {
	t.Helper()
	return len(rmTimeline(t, owner, roomID))
}

// rmForbidden runs act, which must be refused 403 M_FORBIDDEN without any
// event being written to the room (as owner, who stays joined, sees it).
func rmForbidden(t *testing.T, owner *mautrix.Client, roomID id.RoomID, act func() error) {
	t.Helper()
	before := rmCount(t, owner, roomID)
	wantHTTPErr(t, act(), http.StatusForbidden, "M_FORBIDDEN")
	if after := rmCount(t, owner, roomID); after != before {
		t.Fatalf("a refused request wrote %d event(s)", after-before)
	}
}

// rmState GETs a state event's content (or the event with format=event) raw.
func rmState(t *testing.T, srv *Server, cli *mautrix.Client, roomID id.RoomID, typ, stateKey string, format bool) rawResponse {
	t.Helper()
	u := clientURL(srv, "v3", "rooms", string(roomID), "state", typ, stateKey)
	if format {
		u += "?format=event"
	}
	return doJSON(t, "GET", u, cli.AccessToken, nil)
}

// rmStateOK is the content of a state event that must exist.
func rmStateOK(t *testing.T, srv *Server, cli *mautrix.Client, roomID id.RoomID, typ, stateKey string) map[string]any {
	t.Helper()
	r := rmState(t, srv, cli, roomID, typ, stateKey, false)
	r.wantOK(t)
	return r.Body
}

// rmMembership is the target's membership content as cli sees it.
func rmMembership(t *testing.T, srv *Server, cli *mautrix.Client, roomID id.RoomID, target id.UserID) map[string]any {
	t.Helper()
	return rmStateOK(t, srv, cli, roomID, "m.room.member", string(target))
}

// rmJoined is cli's /joined_rooms.
func rmJoined(t *testing.T, cli *mautrix.Client) []id.RoomID {
	t.Helper()
	resp, err := cli.JoinedRooms(context.Background())
	if err != nil {
		t.Fatalf("%s /joined_rooms: %v", cli.UserID, err)
	}
	return resp.JoinedRooms
}

// rmInvite invites target and fails the test on error.
func rmInvite(t *testing.T, cli *mautrix.Client, roomID id.RoomID, target id.UserID) {
	t.Helper()
	if _, err := cli.InviteUser(context.Background(), roomID, &mautrix.ReqInviteUser{UserID: target}); err != nil {
		t.Fatalf("%s inviting %s: %v", cli.UserID, target, err)
	}
}

// rmUsers is power_levels.users of a room.
func rmUsers(t *testing.T, srv *Server, cli *mautrix.Client, roomID id.RoomID) map[string]any {
	t.Helper()
	pl := rmStateOK(t, srv, cli, roomID, "m.room.power_levels", "")
	users, ok := pl["users"].(map[string]any)
	if !ok && pl["users"] != nil {
		t.Fatalf("power_levels.users is not an object: %v", pl)
	}
	return users
}

// rmMemberIDs are the state keys of a /members answer, sorted.
func rmMemberIDs(t *testing.T, cli *mautrix.Client, roomID id.RoomID, req mautrix.ReqMembers) []string {
	t.Helper()
	resp, err := cli.Members(context.Background(), roomID, req)
	if err != nil {
		t.Fatalf("/members %+v: %v", req, err)
	}
	out := []string{}
	for _, e := range resp.Chunk {
		if e.Type != event.StateMember || e.StateKey == nil {
			t.Fatalf("/members returned %s", e.Type)
		}
		out = append(out, *e.StateKey)
	}
	slices.Sort(out)
	return out
}

func rmSorted(ids ...id.UserID) []string {
	out := make([]string, len(ids))
	for i, u := range ids {
		out[i] = string(u)
	}
	slices.Sort(out)
	return out
}

// --- createRoom -------------------------------------------------------------

func TestRoomCreateVersions(t *testing.T) {
	srv := rmStart(t)
	ctx := context.Background()
	alice := registerUser(t, srv, "alice", rmPassword)

	// Default: v12. The room ID is the create event's reference hash: "!"
	// and 43 unpadded base64 characters, no server name.
	v12 := createRoom(t, alice, &mautrix.ReqCreateRoom{})
	if len(v12) != 44 || strings.Contains(string(v12), ":") || v12[0] != '!' {
		t.Fatalf("v12 room ID %q: want ! and 43 characters, no server name", v12)
	}
	create := rmState(t, srv, alice, v12, "m.room.create", "", true)
	create.wantOK(t)
	if got := create.Body["event_id"]; got != "$"+string(v12[1:]) {
		t.Fatalf("v12 create event ID %v, want the room ID with $ (%s)", got, v12)
	}
	if create.Body["room_id"] != string(v12) || create.Body["sender"] != string(alice.UserID) {
		t.Fatalf("v12 create event as a client event: %s", create.Raw)
	}
	content := create.Body["content"].(map[string]any)
	if content["room_version"] != "12" {
		t.Fatalf("v12 create content %v: want room_version 12", content)
	}
	if _, ok := content["creator"]; ok {
		t.Fatalf("v12 create content %v has creator", content)
	}
	pl := rmStateOK(t, srv, alice, v12, "m.room.power_levels", "")
	if users, _ := pl["users"].(map[string]any); users[string(alice.UserID)] != nil {
		t.Fatalf("v12 power levels list the creator: %v", pl)
	}
	// Spec (createRoom, v12): tombstone must be above state_default.
	events, _ := pl["events"].(map[string]any)
	tomb, _ := events["m.room.tombstone"].(float64)
	if sd, _ := pl["state_default"].(float64); tomb <= sd {
		t.Fatalf("v12 power levels: m.room.tombstone %v not above state_default %v", tomb, sd)
	}
	// The creator, absent from users, still has unlimited power.
	if _, err := alice.SendStateEvent(ctx, v12, event.StatePowerLevels, "", map[string]any{"users": map[string]any{}, "events_default": 0, "state_default": 50}); err != nil {
		t.Fatalf("v12 creator changing power levels: %v", err)
	}
	if v, err := alice.Members(ctx, v12); err != nil || len(v.Chunk) != 1 {
		t.Fatalf("v12 members: %v %v", v, err)
	}

	for _, version := range []string{"10", "11"} {
		rid := createRoom(t, alice, &mautrix.ReqCreateRoom{RoomVersion: id.RoomVersion(version)})
		if !strings.HasSuffix(string(rid), ":localhost") {
			t.Fatalf("v%s room ID %q: want !opaque:localhost", version, rid)
		}
		c := rmStateOK(t, srv, alice, rid, "m.room.create", "")
		if c["room_version"] != version {
			t.Fatalf("v%s create content %v", version, c)
		}
		creator, has := c["creator"]
		if version == "10" && creator != string(alice.UserID) {
			t.Fatalf("v10 create content %v: want creator %s", c, alice.UserID)
		}
		if version == "11" && has {
			t.Fatalf("v11 create content %v has creator (removed in v11)", c)
		}
		if lvl := rmUsers(t, srv, alice, rid)[string(alice.UserID)]; lvl != float64(100) {
			t.Fatalf("v%s creator power level %v, want 100", version, lvl)
		}
		if _, err := alice.SendStateEvent(ctx, rid, event.StateTopic, "", map[string]any{"topic": "works"}); err != nil {
			t.Fatalf("v%s: sending state: %v", version, err)
		}
		rmSend(t, alice, rid, "hello v"+version)
		if got := bodies(rmTimeline(t, alice, rid)); !slices.Equal(got, []string{"hello v" + version}) {
			t.Fatalf("v%s timeline bodies %v", version, got)
		}
	}

	joined := len(rmJoined(t, alice))
	for _, bad := range []string{"9", "foo", "1"} {
		r := doJSON(t, "POST", clientURL(srv, "v3", "createRoom"), alice.AccessToken, map[string]any{"room_version": bad})
		r.wantErr(t, http.StatusBadRequest, "M_UNSUPPORTED_ROOM_VERSION")
	}
	if got := len(rmJoined(t, alice)); got != joined {
		t.Fatalf("refused createRooms left rooms behind: %d joined, want %d", got, joined)
	}
}

func TestRoomCreatePresets(t *testing.T) {
	srv := rmStart(t)
	ctx := context.Background()
	alice := registerUser(t, srv, "alice", rmPassword)
	bob := registerUser(t, srv, "bob", rmPassword)
	carol := registerUser(t, srv, "carol", rmPassword)

	check := func(rid id.RoomID, join, guest string) {
		t.Helper()
		if got := rmStateOK(t, srv, alice, rid, "m.room.join_rules", "")["join_rule"]; got != join {
			t.Fatalf("join_rule %v, want %s", got, join)
		}
		if got := rmStateOK(t, srv, alice, rid, "m.room.history_visibility", "")["history_visibility"]; got != "shared" {
			t.Fatalf("history_visibility %v, want shared", got)
		}
		if got := rmStateOK(t, srv, alice, rid, "m.room.guest_access", "")["guest_access"]; got != guest {
			t.Fatalf("guest_access %v, want %s", got, guest)
		}
	}

	private := createRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "private_chat"})
	check(private, "invite", "can_join")
	_, err := bob.JoinRoomByID(ctx, private)
	wantHTTPErr(t, err, http.StatusForbidden, "M_FORBIDDEN")

	public := createRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	check(public, "public", "forbidden")
	joinRoom(t, bob, public)

	// Without a preset, visibility picks it.
	check(createRoom(t, alice, &mautrix.ReqCreateRoom{Visibility: "public"}), "public", "forbidden")
	check(createRoom(t, alice, &mautrix.ReqCreateRoom{}), "invite", "can_join")

	// trusted_private_chat in v12: invitees become additional creators,
	// merged with creation_content's, with unlimited power once joined.
	trusted := createRoomRaw(t, srv, alice, map[string]any{
		"preset":           "trusted_private_chat",
		"invite":           []string{string(bob.UserID)},
		"creation_content": map[string]any{"additional_creators": []string{string(carol.UserID)}},
	})
	check(trusted, "invite", "can_join")
	cc := rmStateOK(t, srv, alice, trusted, "m.room.create", "")
	var creators []string
	for _, c := range cc["additional_creators"].([]any) {
		creators = append(creators, c.(string))
	}
	slices.Sort(creators)
	if want := rmSorted(bob.UserID, carol.UserID); !slices.Equal(creators, want) {
		t.Fatalf("trusted_private_chat additional_creators %v, want %v", creators, want)
	}
	if users := rmUsers(t, srv, alice, trusted); users[string(bob.UserID)] != nil || users[string(alice.UserID)] != nil {
		t.Fatalf("v12 power levels list creators: %v", users)
	}
	if m := rmMembership(t, srv, alice, trusted, bob.UserID); m["membership"] != "invite" {
		t.Fatalf("bob's membership %v, want invite", m)
	}
	joinRoom(t, bob, trusted)
	if _, err := bob.SendStateEvent(ctx, trusted, event.StateHistoryVisibility, "", map[string]any{"history_visibility": "joined"}); err != nil {
		t.Fatalf("additional creator setting a PL 100 event: %v", err)
	}

	// trusted_private_chat in v11: invitees get the creator's level.
	trusted11 := createRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "trusted_private_chat", RoomVersion: id.RoomV11, Invite: []id.UserID{bob.UserID}})
	users := rmUsers(t, srv, alice, trusted11)
	if users[string(alice.UserID)] != float64(100) || users[string(bob.UserID)] != float64(100) {
		t.Fatalf("v11 trusted_private_chat users %v: want alice and bob at 100", users)
	}
	if _, ok := rmStateOK(t, srv, alice, trusted11, "m.room.create", "")["additional_creators"]; ok {
		t.Fatal("v11 room has additional_creators")
	}
	// A plain private_chat invitee stays at the default level.
	plain := createRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "private_chat", RoomVersion: id.RoomV11, Invite: []id.UserID{bob.UserID}})
	if lvl := rmUsers(t, srv, alice, plain)[string(bob.UserID)]; lvl != nil {
		t.Fatalf("private_chat invitee has power level %v", lvl)
	}

	r := doJSON(t, "POST", clientURL(srv, "v3", "createRoom"), alice.AccessToken, map[string]any{"preset": "secret_chat"})
	if r.Status != http.StatusBadRequest {
		t.Fatalf("unknown preset: got %d %s, want 400", r.Status, r.Raw)
	}
}

func TestRoomCreateOptions(t *testing.T) {
	srv := rmStart(t)
	ctx := context.Background()
	alice := registerUser(t, srv, "alice", rmPassword)
	bob := registerUser(t, srv, "bob", rmPassword)

	rid := createRoomRaw(t, srv, alice, map[string]any{
		"name":            "The Room",
		"topic":           "Things",
		"invite":          []string{string(bob.UserID)},
		"is_direct":       true,
		"room_alias_name": "x",
		"initial_state": []map[string]any{
			{"type": "m.room.encryption", "state_key": "", "content": map[string]any{"algorithm": "m.megolm.v1.aes-sha2"}},
			{"type": "org.example.custom", "state_key": "k", "content": map[string]any{"v": 1}},
		},
		"power_level_content_override": map[string]any{
			"events_default": 20,
			"users":          map[string]any{string(bob.UserID): 50},
		},
	})

	if got := rmStateOK(t, srv, alice, rid, "m.room.name", "")["name"]; got != "The Room" {
		t.Fatalf("name %v", got)
	}
	if got := rmStateOK(t, srv, alice, rid, "m.room.topic", "")["topic"]; got != "Things" {
		t.Fatalf("topic %v", got)
	}
	if got := rmStateOK(t, srv, alice, rid, "m.room.encryption", "")["algorithm"]; got != "m.megolm.v1.aes-sha2" {
		t.Fatalf("encryption %v", got)
	}
	if got := rmStateOK(t, srv, alice, rid, "org.example.custom", "k")["v"]; got != float64(1) {
		t.Fatalf("custom initial state %v", got)
	}
	if got := rmStateOK(t, srv, alice, rid, "m.room.canonical_alias", "")["alias"]; got != "#x:localhost" {
		t.Fatalf("canonical alias %v", got)
	}
	pl := rmStateOK(t, srv, alice, rid, "m.room.power_levels", "")
	if pl["events_default"] != float64(20) || pl["ban"] != float64(50) {
		t.Fatalf("power levels %v: want the override (events_default 20) over the defaults (ban 50)", pl)
	}
	if users := pl["users"].(map[string]any); len(users) != 1 || users[string(bob.UserID)] != float64(50) {
		t.Fatalf("power levels users %v, want only bob at 50", users)
	}
	m := rmMembership(t, srv, alice, rid, bob.UserID)
	if m["membership"] != "invite" || m["is_direct"] != true {
		t.Fatalf("bob's member content %v: want invite with is_direct", m)
	}
	if slices.Contains(rmJoined(t, bob), rid) || !slices.Contains(rmJoined(t, alice), rid) {
		t.Fatal("joined_rooms: want alice in the room and bob (invited) not")
	}

	// The events come in the order the spec lays down.
	type key struct{ typ, stateKey string }
	var got []key
	for _, e := range rmTimeline(t, alice, rid) {
		sk := ""
		if e.StateKey != nil {
			sk = *e.StateKey
		}
		got = append(got, key{e.Type.Type, sk})
	}
	want := []key{
		{"m.room.create", ""},
		{"m.room.member", string(alice.UserID)},
		{"m.room.power_levels", ""},
		{"m.room.canonical_alias", ""},
		{"m.room.join_rules", ""},
		{"m.room.history_visibility", ""},
		{"m.room.guest_access", ""},
		{"m.room.encryption", ""},
		{"org.example.custom", "k"},
		{"m.room.name", ""},
		{"m.room.topic", ""},
		{"m.room.member", string(bob.UserID)},
	}
	if !slices.Equal(got, want) {
		t.Fatalf("creation events\n got %v\nwant %v", got, want)
	}

	// initial_state overrides the preset; name overrides initial_state.
	over := createRoomRaw(t, srv, alice, map[string]any{
		"preset": "public_chat",
		"name":   "From name",
		"initial_state": []map[string]any{
			{"type": "m.room.name", "content": map[string]any{"name": "From initial_state"}},
			{"type": "m.room.history_visibility", "content": map[string]any{"history_visibility": "joined"}},
		},
	})
	if got := rmStateOK(t, srv, alice, over, "m.room.name", "")["name"]; got != "From name" {
		t.Fatalf("name %v: want the name parameter to win", got)
	}
	if got := rmStateOK(t, srv, alice, over, "m.room.history_visibility", "")["history_visibility"]; got != "joined" {
		t.Fatalf("history_visibility %v: want initial_state to override the preset", got)
	}

	// The alias is taken: a second room asking for it is refused whole.
	joined := len(rmJoined(t, alice))
	_, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{RoomAliasName: "x", Name: "Second"})
	wantHTTPErr(t, err, http.StatusBadRequest, "M_ROOM_IN_USE")
	if got := len(rmJoined(t, alice)); got != joined {
		t.Fatalf("refused createRoom left a room behind: %d joined, want %d", got, joined)
	}
	resp, err := bob.JoinRoom(ctx, "#x:localhost", nil)
	if err != nil || resp.RoomID != rid {
		t.Fatalf("#x:localhost: joined %v (%v), want the first room %s", resp, err, rid)
	}
}

// --- sending ----------------------------------------------------------------

func TestSendMessage(t *testing.T) {
	srv := rmStart(t)
	ctx := context.Background()
	alice := registerUser(t, srv, "alice", rmPassword)
	rid := createRoom(t, alice, &mautrix.ReqCreateRoom{})

	body := "hello <b>&</b> wörld ☃"
	eid := rmSend(t, alice, rid, body)
	got, err := alice.GetEvent(ctx, rid, eid)
	if err != nil {
		t.Fatal(err)
	}
	if got.ID != eid || got.RoomID != rid || got.Sender != alice.UserID || got.Type != event.EventMessage ||
		got.Content.Raw["body"] != body || got.Content.Raw["msgtype"] != "m.text" || got.Timestamp == 0 {
		t.Fatalf("GET /event: %+v", got)
	}
	msgs, err := alice.Messages(ctx, rid, "", "", mautrix.DirectionBackward, nil, 1)
	if err != nil {
		t.Fatal(err)
	}
	if len(msgs.Chunk) != 1 || msgs.Chunk[0].ID != eid || msgs.Chunk[0].Content.Raw["body"] != body {
		t.Fatalf("/messages dir=b limit=1: %+v", msgs.Chunk)
	}
	_, err = alice.GetEvent(ctx, rid, "$nope")
	wantHTTPErr(t, err, http.StatusNotFound, "M_NOT_FOUND")

	// The same transaction ID twice is one event; a retry with other
	// content is still the retry.
	put := func(cli *mautrix.Client, room id.RoomID, txn, body string) string {
		t.Helper()
		r := doJSON(t, "PUT", clientURL(srv, "v3", "rooms", string(room), "send", "m.room.message", txn), cli.AccessToken,
			map[string]any{"msgtype": "m.text", "body": body})
		r.wantOK(t)
		return r.Body["event_id"].(string)
	}
	count := func(room id.RoomID, body string) int {
		t.Helper()
		n := 0
		for _, b := range bodies(rmTimeline(t, alice, room)) {
			if b == body {
				n++
			}
		}
		return n
	}
	first := put(alice, rid, "txn-1", "once")
	if again := put(alice, rid, "txn-1", "once"); again != first {
		t.Fatalf("retry got %s, want %s", again, first)
	}
	if again := put(alice, rid, "txn-1", "changed"); again != first {
		t.Fatalf("retry with other content got %s, want %s", again, first)
	}
	if n := count(rid, "once"); n != 1 || count(rid, "changed") != 0 {
		t.Fatalf("%d events for one transaction", n)
	}

	// Transaction IDs are scoped to a device...
	second := srv.Client()
	login, err := second.Login(ctx, &mautrix.ReqLogin{
		Type:       mautrix.AuthTypePassword,
		Identifier: mautrix.UserIdentifier{Type: mautrix.IdentifierTypeUser, User: "alice"},
		Password:   rmPassword, StoreCredentials: true,
	})
	if err != nil || login.DeviceID == alice.DeviceID {
		t.Fatalf("second device login: %v %v", login, err)
	}
	if other := put(second, rid, "txn-1", "once"); other == first {
		t.Fatal("another device's send with the same transaction ID was taken for a retry")
	}
	if n := count(rid, "once"); n != 2 {
		t.Fatalf("%d events, want 2 (one per device)", n)
	}
	// ...and to a request path: another room, or another endpoint, is a
	// new request.
	rid2 := createRoom(t, alice, &mautrix.ReqCreateRoom{})
	inRoom2 := put(alice, rid2, "txn-1", "room two")
	if inRoom2 == first || count(rid2, "room two") != 1 {
		t.Fatalf("the same transaction ID in another room: got %s (first %s), want a new event there", inRoom2, first)
	}
	ev, err := alice.GetEvent(ctx, rid2, id.EventID(inRoom2))
	if err != nil || ev.RoomID != rid2 {
		t.Fatalf("event %s in room two: %v %v", inRoom2, ev, err)
	}
	// An event is found only through its own room.
	_, err = alice.GetEvent(ctx, rid2, id.EventID(first))
	wantHTTPErr(t, err, http.StatusNotFound, "M_NOT_FOUND")
	_, err = alice.RedactEvent(ctx, rid2, id.EventID(first))
	wantHTTPErr(t, err, http.StatusNotFound, "M_NOT_FOUND")
	target := rmSend(t, alice, rid, "to be redacted")
	red, err := alice.RedactEvent(ctx, rid, target, mautrix.ReqRedact{TxnID: "txn-1"})
	if err != nil {
		t.Fatal(err)
	}
	if string(red.EventID) == first {
		t.Fatal("a redaction reusing a send's transaction ID was taken for a retry of the send")
	}
	if ev, err := alice.GetEvent(ctx, rid, target); err != nil || ev.Unsigned.RedactedBecause == nil {
		t.Fatalf("the redaction with txn-1 did not redact: %+v %v", ev, err)
	}
	// A redaction retried with its transaction ID is one redaction.
	red2, err := alice.RedactEvent(ctx, rid, target, mautrix.ReqRedact{TxnID: "txn-1"})
	if err != nil || red2.EventID != red.EventID {
		t.Fatalf("redaction retry: %v %v, want %s", red2, err, red.EventID)
	}
}

func TestSendValidation(t *testing.T) {
	srv := rmStart(t)
	alice := registerUser(t, srv, "alice", rmPassword)
	rid := createRoom(t, alice, &mautrix.ReqCreateRoom{})
	n := 0
	put := func(body any) rawResponse {
		n++
		return doJSON(t, "PUT", clientURL(srv, "v3", "rooms", string(rid), "send", "m.room.message", fmt.Sprintf("v%d", n)), alice.AccessToken, body)
	}
	before := rmCount(t, alice, rid)

	put(map[string]any{"msgtype": "m.text", "body": strings.Repeat("a", 70000)}).wantErr(t, http.StatusRequestEntityTooLarge, "M_TOO_LARGE")
	put(`{"msgtype":"m.text","body":"x","n":1.5}`).wantErr(t, http.StatusBadRequest, "M_BAD_JSON")
	put(`{"msgtype":"m.text","body":"x","deep":{"a":[1,{"b":2.0}]}}`).wantErr(t, http.StatusBadRequest, "M_BAD_JSON")
	put(`{"msgtype":"m.text","body":"x","n":9007199254740992}`).wantErr(t, http.StatusBadRequest, "M_BAD_JSON")
	put(`{"msgtype":"m.text","body":"x","n":-9007199254740992}`).wantErr(t, http.StatusBadRequest, "M_BAD_JSON")
	put(`{"msgtype":"m.text","body":"x","n":1e3}`).wantErr(t, http.StatusBadRequest, "M_BAD_JSON")
	put(`[{"msgtype":"m.text"}]`).wantErr(t, http.StatusBadRequest, "M_NOT_JSON")
	put(`"just a string"`).wantErr(t, http.StatusBadRequest, "M_NOT_JSON")
	put(`{"msgtype":`).wantErr(t, http.StatusBadRequest, "M_NOT_JSON")
	doJSON(t, "PUT", clientURL(srv, "v3", "rooms", string(rid), "state", "org.example.float", ""), alice.AccessToken, `{"f":0.5}`).
		wantErr(t, http.StatusBadRequest, "M_BAD_JSON")
	if after := rmCount(t, alice, rid); after != before {
		t.Fatalf("refused sends wrote %d event(s)", after-before)
	}

	// The limits are where the spec puts them, not tighter.
	big := put(map[string]any{"msgtype": "m.text", "body": strings.Repeat("a", 60000)})
	big.wantOK(t)
	edge := put(`{"msgtype":"m.text","body":"edge","max":9007199254740991,"min":-9007199254740991}`)
	edge.wantOK(t)
	r := doJSON(t, "GET", clientURL(srv, "v3", "rooms", string(rid), "event", edge.Body["event_id"].(string)), alice.AccessToken, nil)
	r.wantOK(t)
	if !strings.Contains(string(r.Raw), `"max":9007199254740991`) || !strings.Contains(string(r.Raw), `"min":-9007199254740991`) {
		t.Fatalf("the largest safe integers did not survive: %s", r.Raw)
	}
	// Content as it came, whitespace and all, or with a name twice (the
	// last one counts, as encoding/json reads it), or with HTML: stored
	// and served as the same JSON values.
	for _, c := range []struct{ send, body string }{
		{"{\n  \"msgtype\": \"m.text\",\n  \"body\": \"spaced <b>&</b>\"\n}\n", "spaced <b>&</b>"},
		{`{"msgtype":"m.text","body":"first","body":"last"}`, "last"},
	} {
		sent := put(c.send)
		sent.wantOK(t)
		r := doJSON(t, "GET", clientURL(srv, "v3", "rooms", string(rid), "event", sent.Body["event_id"].(string)), alice.AccessToken, nil)
		r.wantOK(t)
		if content, _ := r.Body["content"].(map[string]any); content["body"] != c.body || content["msgtype"] != "m.text" {
			t.Fatalf("sent %q, stored content %v", c.send, r.Body["content"])
		}
	}
	if after := rmCount(t, alice, rid); after != before+4 {
		t.Fatalf("%d events, want %d", after, before+4)
	}
}

// --- state ------------------------------------------------------------------

func TestStateEvents(t *testing.T) {
	srv := rmStart(t)
	ctx := context.Background()
	alice := registerUser(t, srv, "alice", rmPassword)
	rid := createRoom(t, alice, &mautrix.ReqCreateRoom{})
	state := func(segs ...string) string {
		return clientURL(srv, "v3", append([]string{"rooms", string(rid), "state"}, segs...)...)
	}
	putState := func(u string, content any) string {
		t.Helper()
		r := doJSON(t, "PUT", u, alice.AccessToken, content)
		r.wantOK(t)
		return r.Body["event_id"].(string)
	}
	getTopic := func(u string) any {
		t.Helper()
		r := doJSON(t, "GET", u, alice.AccessToken, nil)
		r.wantOK(t)
		return r.Body["topic"]
	}

	// Without a state key, and with the trailing-slash empty key: the same state.
	e1 := putState(state("m.room.topic"), map[string]any{"topic": "one"})
	if getTopic(state("m.room.topic", "")) != "one" || getTopic(state("m.room.topic")) != "one" {
		t.Fatal("topic set without a state key is not read back")
	}
	e2 := putState(state("m.room.topic", ""), map[string]any{"topic": "two"})
	if e2 == e1 || getTopic(state("m.room.topic")) != "two" || getTopic(state("m.room.topic", "")) != "two" {
		t.Fatalf("topic set with a trailing slash: %s after %s", e2, e1)
	}

	// With a state key, percent-encoded in the path.
	key := "some key/with slash"
	e3 := putState(state("org.example.thing", key), map[string]any{"n": 1})
	r := doJSON(t, "GET", state("org.example.thing", key), alice.AccessToken, nil)
	r.wantOK(t)
	if r.Body["n"] != float64(1) {
		t.Fatalf("state with key: %s", r.Raw)
	}
	doJSON(t, "GET", state("org.example.thing"), alice.AccessToken, nil).wantErr(t, http.StatusNotFound, "M_NOT_FOUND")
	doJSON(t, "GET", state("org.example.thing", "other"), alice.AccessToken, nil).wantErr(t, http.StatusNotFound, "M_NOT_FOUND")

	full, err := alice.FullStateEvent(ctx, rid, event.NewEventType("org.example.thing"), key)
	if err != nil {
		t.Fatal(err)
	}
	if string(full.ID) != e3 || full.StateKey == nil || *full.StateKey != key || full.Sender != alice.UserID ||
		full.Type.Type != "org.example.thing" || full.Content.Raw["n"] != float64(1) || full.RoomID != rid {
		t.Fatalf("format=event: %+v", full)
	}

	// An identical PUT sends nothing and answers the current event.
	before := rmCount(t, alice, rid)
	if again := putState(state("org.example.thing", key), map[string]any{"n": 1}); again != e3 {
		t.Fatalf("identical PUT: %s, want %s", again, e3)
	}
	if again := putState(state("m.room.topic"), map[string]any{"topic": "two"}); again != e2 {
		t.Fatalf("identical topic PUT: %s, want %s", again, e2)
	}
	if after := rmCount(t, alice, rid); after != before {
		t.Fatalf("identical PUTs wrote %d event(s)", after-before)
	}
	if changed := putState(state("org.example.thing", key), map[string]any{"n": 2}); changed == e3 {
		t.Fatal("a changed PUT returned the old event")
	}

	// GET /state lists every current state event once, with current content.
	all := doJSON(t, "GET", clientURL(srv, "v3", "rooms", string(rid), "state"), alice.AccessToken, nil)
	all.wantOK(t)
	sm, err := alice.State(ctx, rid)
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for typ, byKey := range sm {
		for k := range byKey {
			keys = append(keys, typ.Type+"|"+k)
		}
	}
	slices.Sort(keys)
	want := []string{
		"m.room.create|", "m.room.guest_access|", "m.room.history_visibility|", "m.room.join_rules|",
		"m.room.member|" + string(alice.UserID), "m.room.power_levels|", "m.room.topic|", "org.example.thing|" + key,
	}
	if !slices.Equal(keys, want) || strings.Count(string(all.Raw), `"event_id"`) != len(want) {
		t.Fatalf("GET /state keys %v, want %v (raw %s)", keys, want, all.Raw)
	}
	thing := event.Type{Type: "org.example.thing", Class: event.StateEventType}
	if sm[event.StateTopic][""].Content.Raw["topic"] != "two" || sm[thing][key] == nil || sm[thing][key].Content.Raw["n"] != float64(2) {
		t.Fatal("GET /state does not have the current content")
	}

	// A member event through the state API: your own per-room display name
	// works (/myroomnick); joining someone else in is refused by the auth rules.
	doJSON(t, "PUT", state("m.room.member", string(alice.UserID)), alice.AccessToken, map[string]any{"membership": "join", "displayname": "Al"}).wantOK(t)
	var me event.MemberEventContent
	if err := alice.StateEvent(context.Background(), rid, event.StateMember, string(alice.UserID), &me); err != nil || me.Displayname != "Al" || me.Membership != event.MembershipJoin {
		t.Fatalf("per-room display name: %+v %v", me, err)
	}
	before = rmCount(t, alice, rid)
	doJSON(t, "PUT", state("m.room.member", "@mallory:localhost"), alice.AccessToken, map[string]any{"membership": "join"}).
		wantErr(t, http.StatusForbidden, "M_FORBIDDEN")
	if after := rmCount(t, alice, rid); after != before {
		t.Fatal("a refused member PUT wrote an event")
	}
}

// --- auth rules -------------------------------------------------------------

func TestRoomAuthRefusals(t *testing.T) {
	srv := rmStart(t)
	ctx := context.Background()
	alice := registerUser(t, srv, "alice", rmPassword) // creator
	bob := registerUser(t, srv, "bob", rmPassword)     // PL 50: kick, redact, power levels
	carol := registerUser(t, srv, "carol", rmPassword) // outsider
	dave := registerUser(t, srv, "dave", rmPassword)   // PL 75
	erin := registerUser(t, srv, "erin", rmPassword)   // PL 0
	frank := registerUser(t, srv, "frank", rmPassword) // PL 0, to be kicked
	henry := registerUser(t, srv, "henry", rmPassword) // never in any room

	rid := createRoomRaw(t, srv, alice, map[string]any{
		"preset": "public_chat",
		"power_level_content_override": map[string]any{
			"users":  map[string]any{string(bob.UserID): 50, string(dave.UserID): 75},
			"events": map[string]any{"m.room.power_levels": 50, "m.room.name": 50},
		},
	})
	for _, c := range []*mautrix.Client{bob, dave, erin, frank} {
		joinRoom(t, c, rid)
	}

	t.Run("SendWithoutJoining", func(t *testing.T) {
		rmForbidden(t, alice, rid, func() error {
			_, err := carol.SendMessageEvent(ctx, rid, event.EventMessage, map[string]any{"msgtype": "m.text", "body": "hi"})
			return err
		})
	})
	t.Run("StateWithoutPower", func(t *testing.T) {
		rmForbidden(t, alice, rid, func() error {
			_, err := erin.SendStateEvent(ctx, rid, event.StateRoomName, "", map[string]any{"name": "erin's"})
			return err
		})
		rmState(t, srv, alice, rid, "m.room.name", "", false).wantErr(t, http.StatusNotFound, "M_NOT_FOUND")
		// bob has the level for it.
		if _, err := bob.SendStateEvent(ctx, rid, event.StateRoomName, "", map[string]any{"name": "bob's"}); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("KickHigherPower", func(t *testing.T) {
		rmForbidden(t, alice, rid, func() error {
			_, err := bob.KickUser(ctx, rid, &mautrix.ReqKickUser{UserID: dave.UserID})
			return err
		})
		rmForbidden(t, alice, rid, func() error {
			_, err := bob.KickUser(ctx, rid, &mautrix.ReqKickUser{UserID: alice.UserID})
			return err
		})
		rmForbidden(t, alice, rid, func() error { // PL 0 may not kick at all
			_, err := erin.KickUser(ctx, rid, &mautrix.ReqKickUser{UserID: frank.UserID})
			return err
		})
		if m := rmMembership(t, srv, alice, rid, dave.UserID)["membership"]; m != "join" {
			t.Fatalf("dave's membership %v", m)
		}
		if _, err := bob.KickUser(ctx, rid, &mautrix.ReqKickUser{UserID: frank.UserID}); err != nil {
			t.Fatalf("kicking a lower user: %v", err)
		}
	})
	t.Run("JoinInviteOnlyUninvited", func(t *testing.T) {
		private := createRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "private_chat"})
		rmForbidden(t, alice, private, func() error {
			_, err := carol.JoinRoomByID(ctx, private)
			return err
		})
		rmInvite(t, alice, private, carol.UserID)
		joinRoom(t, carol, private)
	})
	t.Run("BannedRejoin", func(t *testing.T) {
		if _, err := alice.BanUser(ctx, rid, &mautrix.ReqBanUser{UserID: carol.UserID}); err != nil {
			t.Fatal(err)
		}
		rmForbidden(t, alice, rid, func() error {
			_, err := carol.JoinRoomByID(ctx, rid)
			return err
		})
	})
	t.Run("Redact", func(t *testing.T) {
		byAlice := rmSend(t, alice, rid, "alice's words")
		byErin := rmSend(t, erin, rid, "erin's words")
		rmForbidden(t, alice, rid, func() error {
			_, err := erin.RedactEvent(ctx, rid, byAlice)
			return err
		})
		if ev, err := alice.GetEvent(ctx, rid, byAlice); err != nil || ev.Content.Raw["body"] != "alice's words" || ev.Unsigned.RedactedBecause != nil {
			t.Fatalf("after a refused redaction: %+v %v", ev, err)
		}
		red, err := erin.RedactEvent(ctx, rid, byErin, mautrix.ReqRedact{Reason: "oops"})
		if err != nil {
			t.Fatalf("redacting your own event: %v", err)
		}
		r := doJSON(t, "GET", clientURL(srv, "v3", "rooms", string(rid), "event", string(byErin)), erin.AccessToken, nil)
		r.wantOK(t)
		if c, _ := r.Body["content"].(map[string]any); len(c) != 0 {
			t.Fatalf("redacted content %v, want {}", c)
		}
		because, _ := r.Body["unsigned"].(map[string]any)["redacted_because"].(map[string]any)
		if because["event_id"] != string(red.EventID) || because["sender"] != string(erin.UserID) ||
			because["type"] != "m.room.redaction" || because["origin_server_ts"] == nil {
			t.Fatalf("unsigned.redacted_because %v, want the whole redaction event %s", because, red.EventID)
		}
		redEv, err := erin.GetEvent(ctx, rid, red.EventID)
		if err != nil || redEv.Type != event.EventRedaction || redEv.Redacts != byErin && redEv.Content.Raw["redacts"] != string(byErin) {
			t.Fatalf("the redaction event: %+v %v", redEv, err)
		}
		// With the redact level, others' events too.
		if _, err := bob.RedactEvent(ctx, rid, byAlice); err != nil {
			t.Fatalf("redacting with the redact level: %v", err)
		}
		if ev, err := erin.GetEvent(ctx, rid, byAlice); err != nil || ev.Content.Raw["body"] != nil || ev.Unsigned.RedactedBecause == nil {
			t.Fatalf("after bob's redaction: %+v %v", ev, err)
		}
	})
	t.Run("PowerAboveOwn", func(t *testing.T) {
		pl := rmStateOK(t, srv, alice, rid, "m.room.power_levels", "")
		with := func(user id.UserID, level int) map[string]any {
			c := map[string]any{}
			for k, v := range pl {
				c[k] = v
			}
			users := map[string]any{}
			for k, v := range pl["users"].(map[string]any) {
				users[k] = v
			}
			users[string(user)] = level
			c["users"] = users
			return c
		}
		rmForbidden(t, alice, rid, func() error {
			_, err := bob.SendStateEvent(ctx, rid, event.StatePowerLevels, "", with(erin.UserID, 100))
			return err
		})
		rmForbidden(t, alice, rid, func() error {
			_, err := bob.SendStateEvent(ctx, rid, event.StatePowerLevels, "", with(bob.UserID, 51))
			return err
		})
		rmForbidden(t, alice, rid, func() error { // demoting a higher user
			_, err := bob.SendStateEvent(ctx, rid, event.StatePowerLevels, "", with(dave.UserID, 0))
			return err
		})
		if lvl := rmUsers(t, srv, alice, rid)[string(erin.UserID)]; lvl != nil {
			t.Fatalf("erin's level %v after refusals", lvl)
		}
		if _, err := bob.SendStateEvent(ctx, rid, event.StatePowerLevels, "", with(erin.UserID, 50)); err != nil {
			t.Fatalf("granting your own level: %v", err)
		}
		if lvl := rmUsers(t, srv, alice, rid)[string(erin.UserID)]; lvl != float64(50) {
			t.Fatalf("erin's level %v, want 50", lvl)
		}
	})
	t.Run("NonMemberReads", func(t *testing.T) {
		_, err := henry.Messages(ctx, rid, "", "", mautrix.DirectionBackward, nil, 10)
		wantHTTPErr(t, err, http.StatusForbidden, "M_FORBIDDEN")
		_, err = henry.JoinedMembers(ctx, rid)
		wantHTTPErr(t, err, http.StatusForbidden, "M_FORBIDDEN")
		_, err = henry.State(ctx, rid)
		wantHTTPErr(t, err, http.StatusForbidden, "M_FORBIDDEN")
		_, err = henry.Messages(ctx, "!unknown:localhost", "", "", mautrix.DirectionBackward, nil, 10)
		wantHTTPErr(t, err, http.StatusForbidden, "M_FORBIDDEN")
		jm, err := alice.JoinedMembers(ctx, rid)
		if err != nil {
			t.Fatal(err)
		}
		if len(jm.Joined) != 4 { // alice, bob, dave, erin
			t.Fatalf("joined_members %v", jm.Joined)
		}
	})
	t.Run("LeftUserReadsUpToLeave", func(t *testing.T) {
		room := createRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "private_chat", Invite: []id.UserID{bob.UserID}})
		joinRoom(t, bob, room)
		before := rmSend(t, alice, room, "before the leave")
		if _, err := bob.LeaveRoom(ctx, room); err != nil {
			t.Fatal(err)
		}
		after := rmSend(t, alice, room, "after the leave")
		if _, err := alice.SendStateEvent(ctx, room, event.StateTopic, "", map[string]any{"topic": "secret"}); err != nil {
			t.Fatal(err)
		}
		got := bodies(rmTimeline(t, bob, room))
		if !slices.Equal(got, []string{"before the leave"}) {
			t.Fatalf("bob (left) reads %v forward, want only the message before his leave", got)
		}
		back, err := bob.Messages(ctx, room, "", "", mautrix.DirectionBackward, nil, 50)
		if err != nil {
			t.Fatal(err)
		}
		if got := bodies(back.Chunk); !slices.Equal(got, []string{"before the leave"}) {
			t.Fatalf("bob (left) reads %v backward", got)
		}
		if len(back.Chunk) == 0 || back.Chunk[0].Type != event.StateMember || back.Chunk[0].Sender != bob.UserID {
			t.Fatalf("bob's backward read should start at his leave: %+v", back.Chunk)
		}
		if _, err := bob.GetEvent(ctx, room, before); err != nil {
			t.Fatalf("event before the leave: %v", err)
		}
		_, err = bob.GetEvent(ctx, room, after)
		wantHTTPErr(t, err, http.StatusNotFound, "M_NOT_FOUND")
		rmState(t, srv, bob, room, "m.room.topic", "", false).wantErr(t, http.StatusNotFound, "M_NOT_FOUND")
		_, err = bob.JoinedMembers(ctx, room)
		wantHTTPErr(t, err, http.StatusForbidden, "M_FORBIDDEN")
	})
}

// --- membership -------------------------------------------------------------

func TestMembershipFlow(t *testing.T) {
	srv := rmStart(t)
	ctx := context.Background()
	alice := registerUser(t, srv, "alice", rmPassword)
	bob := registerUser(t, srv, "bob", rmPassword)
	carol := registerUser(t, srv, "carol", rmPassword)
	dave := registerUser(t, srv, "dave", rmPassword)

	rid := createRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "private_chat"})
	if got := rmJoined(t, alice); !slices.Equal(got, []id.RoomID{rid}) {
		t.Fatalf("alice joined_rooms %v", got)
	}

	// invite -> join
	rmInvite(t, alice, rid, bob.UserID)
	if m := rmMembership(t, srv, alice, rid, bob.UserID); m["membership"] != "invite" {
		t.Fatalf("after invite: %v", m)
	}
	if got := rmJoined(t, bob); len(got) != 0 {
		t.Fatalf("invited bob's joined_rooms %v", got)
	}
	joinRoom(t, bob, rid)
	if got := rmJoined(t, bob); !slices.Equal(got, []id.RoomID{rid}) {
		t.Fatalf("bob's joined_rooms %v", got)
	}
	// Joining again is a no-op success.
	before := rmCount(t, alice, rid)
	joinRoom(t, bob, rid)
	if rmCount(t, alice, rid) != before {
		t.Fatal("joining a room you are in wrote an event")
	}
	_, err := alice.InviteUser(ctx, rid, &mautrix.ReqInviteUser{UserID: bob.UserID})
	wantHTTPErr(t, err, http.StatusForbidden, "M_FORBIDDEN")

	// /members filters.
	rmInvite(t, alice, rid, carol.UserID)
	rmInvite(t, alice, rid, dave.UserID)
	joinRoom(t, dave, rid)
	if _, err := dave.LeaveRoom(ctx, rid); err != nil {
		t.Fatal(err)
	}
	if got := rmJoined(t, dave); len(got) != 0 {
		t.Fatalf("dave's joined_rooms after leaving: %v", got)
	}
	for _, c := range []struct {
		req  mautrix.ReqMembers
		want []string
	}{
		{mautrix.ReqMembers{}, rmSorted(alice.UserID, bob.UserID, carol.UserID, dave.UserID)},
		{mautrix.ReqMembers{Membership: event.MembershipJoin}, rmSorted(alice.UserID, bob.UserID)},
		{mautrix.ReqMembers{Membership: event.MembershipInvite}, rmSorted(carol.UserID)},
		{mautrix.ReqMembers{Membership: event.MembershipLeave}, rmSorted(dave.UserID)},
		{mautrix.ReqMembers{NotMembership: event.MembershipJoin}, rmSorted(carol.UserID, dave.UserID)},
		{mautrix.ReqMembers{NotMembership: event.MembershipLeave}, rmSorted(alice.UserID, bob.UserID, carol.UserID)},
	} {
		if got := rmMemberIDs(t, bob, rid, c.req); !slices.Equal(got, c.want) {
			t.Fatalf("/members %+v: %v, want %v", c.req, got, c.want)
		}
	}
	jm, err := bob.JoinedMembers(ctx, rid)
	if err != nil || len(jm.Joined) != 2 || jm.Joined[alice.UserID].DisplayName != "alice" {
		t.Fatalf("joined_members %v %v", jm, err)
	}
	// The invitee rejects the invite with /leave.
	if _, err := carol.LeaveRoom(ctx, rid); err != nil {
		t.Fatalf("rejecting an invite: %v", err)
	}
	if m := rmMembership(t, srv, alice, rid, carol.UserID); m["membership"] != "leave" {
		t.Fatalf("after rejecting: %v", m)
	}

	// leave
	if _, err := bob.LeaveRoom(ctx, rid, &mautrix.ReqLeave{Reason: "bye"}); err != nil {
		t.Fatal(err)
	}
	full, err := alice.FullStateEvent(ctx, rid, event.StateMember, string(bob.UserID))
	if err != nil || full.Sender != bob.UserID || full.Content.Raw["membership"] != "leave" || full.Content.Raw["reason"] != "bye" {
		t.Fatalf("bob's leave: %+v %v", full, err)
	}
	if got := rmJoined(t, bob); len(got) != 0 {
		t.Fatalf("bob's joined_rooms after leaving: %v", got)
	}
	_, err = bob.LeaveRoom(ctx, rid)
	wantHTTPErr(t, err, http.StatusForbidden, "M_FORBIDDEN")

	// kick, with a reason
	rmInvite(t, alice, rid, bob.UserID)
	joinRoom(t, bob, rid)
	if _, err := alice.KickUser(ctx, rid, &mautrix.ReqKickUser{UserID: bob.UserID, Reason: "too loud"}); err != nil {
		t.Fatal(err)
	}
	full, err = alice.FullStateEvent(ctx, rid, event.StateMember, string(bob.UserID))
	if err != nil || full.Sender != alice.UserID || full.Content.Raw["membership"] != "leave" || full.Content.Raw["reason"] != "too loud" {
		t.Fatalf("bob's kick: %+v %v", full, err)
	}
	if got := rmJoined(t, bob); len(got) != 0 {
		t.Fatalf("kicked bob's joined_rooms: %v", got)
	}
	_, err = bob.SendMessageEvent(ctx, rid, event.EventMessage, map[string]any{"msgtype": "m.text", "body": "still here?"})
	wantHTTPErr(t, err, http.StatusForbidden, "M_FORBIDDEN")
	r := doJSON(t, "POST", clientURL(srv, "v3", "rooms", string(rid), "kick"), alice.AccessToken, map[string]any{})
	r.wantErr(t, http.StatusBadRequest, "M_MISSING_PARAM")

	// ban -> unban -> join, in a public room joined by alias.
	pub := createRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat", RoomAliasName: "x"})
	resp, err := bob.JoinRoom(ctx, "#x:localhost", nil)
	if err != nil || resp.RoomID != pub {
		t.Fatalf("joining #x:localhost: %v %v, want %s", resp, err, pub)
	}
	r = doJSON(t, "POST", srv.URL+"/_matrix/client/v3/join/%23x%3Alocalhost", carol.AccessToken, map[string]any{})
	r.wantOK(t)
	if r.Body["room_id"] != string(pub) {
		t.Fatalf("join by percent-encoded alias: %s", r.Raw)
	}
	_, err = dave.JoinRoom(ctx, "#nope:localhost", nil)
	wantHTTPErr(t, err, http.StatusNotFound, "M_NOT_FOUND")
	if got := rmJoined(t, bob); !slices.Equal(got, []id.RoomID{pub}) {
		t.Fatalf("bob's joined_rooms %v", got)
	}

	if _, err := alice.BanUser(ctx, pub, &mautrix.ReqBanUser{UserID: bob.UserID, Reason: "spam"}); err != nil {
		t.Fatal(err)
	}
	full, err = alice.FullStateEvent(ctx, pub, event.StateMember, string(bob.UserID))
	if err != nil || full.Sender != alice.UserID || full.Content.Raw["membership"] != "ban" || full.Content.Raw["reason"] != "spam" {
		t.Fatalf("bob's ban: %+v %v", full, err)
	}
	if got := rmJoined(t, bob); len(got) != 0 {
		t.Fatalf("banned bob's joined_rooms: %v", got)
	}
	_, err = bob.JoinRoomByID(ctx, pub)
	wantHTTPErr(t, err, http.StatusForbidden, "M_FORBIDDEN")
	_, err = bob.LeaveRoom(ctx, pub)
	wantHTTPErr(t, err, http.StatusForbidden, "M_FORBIDDEN")
	if _, err := alice.UnbanUser(ctx, pub, &mautrix.ReqUnbanUser{UserID: bob.UserID}); err != nil {
		t.Fatal(err)
	}
	if m := rmMembership(t, srv, alice, pub, bob.UserID); m["membership"] != "leave" {
		t.Fatalf("after unban: %v", m)
	}
	joinRoom(t, bob, pub)
	if got := rmJoined(t, bob); !slices.Equal(got, []id.RoomID{pub}) {
		t.Fatalf("bob's joined_rooms after unban and join: %v", got)
	}
	got := rmJoined(t, alice)
	slices.Sort(got)
	want := []id.RoomID{rid, pub}
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("alice's joined_rooms %v, want %v", got, want)
	}
}

func TestKnock(t *testing.T) {
	srv := rmStart(t)
	ctx := context.Background()
	alice := registerUser(t, srv, "alice", rmPassword)
	bob := registerUser(t, srv, "bob", rmPassword)

	rid := createRoomRaw(t, srv, alice, map[string]any{
		"preset":        "private_chat",
		"initial_state": []map[string]any{{"type": "m.room.join_rules", "content": map[string]any{"join_rule": "knock"}}},
	})
	rmSend(t, alice, rid, "inside")
	resp, err := bob.KnockRoom(ctx, rid.String(), &mautrix.ReqKnockRoom{Reason: "let me in"})
	if err != nil || resp.RoomID != rid {
		t.Fatalf("knock: %v %v", resp, err)
	}
	if m := rmMembership(t, srv, alice, rid, bob.UserID); m["membership"] != "knock" || m["reason"] != "let me in" {
		t.Fatalf("after knock: %v", m)
	}
	if got := rmJoined(t, bob); len(got) != 0 {
		t.Fatalf("knocking bob's joined_rooms: %v", got)
	}
	// A knock is not a way in, nor a way to read.
	_, err = bob.Messages(ctx, rid, "", "", mautrix.DirectionBackward, nil, 10)
	wantHTTPErr(t, err, http.StatusForbidden, "M_FORBIDDEN")
	rmForbidden(t, alice, rid, func() error {
		_, err := bob.JoinRoomByID(ctx, rid)
		return err
	})
	rmInvite(t, alice, rid, bob.UserID)
	joinRoom(t, bob, rid)
	if got := bodies(rmTimeline(t, bob, rid)); !slices.Equal(got, []string{"inside"}) {
		t.Fatalf("bob after joining reads %v", got)
	}

	// Rooms that are not knockable refuse knocks.
	private := createRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "private_chat"})
	rmForbidden(t, alice, private, func() error {
		_, err := bob.KnockRoom(ctx, private.String(), nil)
		return err
	})
}

// --- history visibility -----------------------------------------------------

func TestHistoryVisibility(t *testing.T) {
	srv := rmStart(t)
	ctx := context.Background()
	alice := registerUser(t, srv, "alice", rmPassword)
	bob := registerUser(t, srv, "bob", rmPassword)
	carol := registerUser(t, srv, "carol", rmPassword)

	room := func(hv string) id.RoomID {
		return createRoomRaw(t, srv, alice, map[string]any{
			"preset":        "public_chat",
			"initial_state": []map[string]any{{"type": "m.room.history_visibility", "content": map[string]any{"history_visibility": hv}}},
		})
	}

	t.Run("Joined", func(t *testing.T) {
		rid := room("joined")
		early := rmSend(t, alice, rid, "before bob")
		joinRoom(t, bob, rid)
		rmSend(t, alice, rid, "after bob")
		tl := rmTimeline(t, bob, rid)
		if got := bodies(tl); !slices.Equal(got, []string{"after bob"}) {
			t.Fatalf("bob reads %v, want only what came after his join", got)
		}
		// His own join is visible to him: his membership after it allows it.
		if !slices.ContainsFunc(tl, func(e *event.Event) bool {
			return e.Type == event.StateMember && e.StateKey != nil && *e.StateKey == string(bob.UserID) && e.Content.Raw["membership"] == "join"
		}) {
			t.Fatal("bob's timeline lacks his own join")
		}
		back, err := bob.Messages(ctx, rid, "", "", mautrix.DirectionBackward, nil, 100)
		if err != nil || !slices.Equal(bodies(back.Chunk), []string{"after bob"}) {
			t.Fatalf("bob reads %v backward (%v)", bodies(back.Chunk), err)
		}
		_, err = bob.GetEvent(ctx, rid, early)
		wantHTTPErr(t, err, http.StatusNotFound, "M_NOT_FOUND")
		if got := bodies(rmTimeline(t, alice, rid)); !slices.Equal(got, []string{"before bob", "after bob"}) {
			t.Fatalf("alice reads %v", got)
		}
		_, err = carol.Messages(ctx, rid, "", "", mautrix.DirectionBackward, nil, 10)
		wantHTTPErr(t, err, http.StatusForbidden, "M_FORBIDDEN")
	})
	t.Run("Shared", func(t *testing.T) {
		rid := room("shared")
		early := rmSend(t, alice, rid, "before bob")
		joinRoom(t, bob, rid)
		rmSend(t, alice, rid, "after bob")
		if got := bodies(rmTimeline(t, bob, rid)); !slices.Equal(got, []string{"before bob", "after bob"}) {
			t.Fatalf("bob reads %v, want the history too", got)
		}
		if _, err := bob.GetEvent(ctx, rid, early); err != nil {
			t.Fatal(err)
		}
		_, err := carol.Messages(ctx, rid, "", "", mautrix.DirectionBackward, nil, 10)
		wantHTTPErr(t, err, http.StatusForbidden, "M_FORBIDDEN")
	})
	t.Run("SharedAfterLeaving", func(t *testing.T) {
		// "joined the room at any point after the event was sent": still
		// true once the user has left again.
		rid := room("shared")
		rmSend(t, alice, rid, "before bob")
		joinRoom(t, bob, rid)
		rmSend(t, alice, rid, "while bob")
		if _, err := bob.LeaveRoom(ctx, rid); err != nil {
			t.Fatal(err)
		}
		rmSend(t, alice, rid, "after bob")
		if got := bodies(rmTimeline(t, bob, rid)); !slices.Equal(got, []string{"before bob", "while bob"}) {
			t.Fatalf("bob (left) reads %v, want the history up to his leave", got)
		}
		if got := len(rmTimeline(t, bob, rid)); got < 8 { // creation events, his join and leave
			t.Fatalf("bob (left) sees %d events", got)
		}
	})
	t.Run("UnknownValueIsShared", func(t *testing.T) {
		rid := room("org.example.unknown")
		rmSend(t, alice, rid, "before bob")
		joinRoom(t, bob, rid)
		if got := bodies(rmTimeline(t, bob, rid)); !slices.Equal(got, []string{"before bob"}) {
			t.Fatalf("bob reads %v; an unknown history_visibility means shared", got)
		}
	})
	t.Run("ChangeToWorldReadable", func(t *testing.T) {
		// A history_visibility event is visible if the setting before or
		// after it allows.
		rid := room("joined")
		rmSend(t, alice, rid, "secret")
		hv, err := alice.SendStateEvent(ctx, rid, event.StateHistoryVisibility, "", map[string]any{"history_visibility": "world_readable"})
		if err != nil {
			t.Fatal(err)
		}
		rmSend(t, alice, rid, "open")
		tl := rmTimeline(t, carol, rid)
		if got := bodies(tl); !slices.Equal(got, []string{"open"}) {
			t.Fatalf("carol reads %v", got)
		}
		if len(tl) != 2 || tl[0].ID != hv.EventID {
			t.Fatalf("carol should see the change to world_readable, then the message: %+v", tl)
		}
	})
	t.Run("Invited", func(t *testing.T) {
		rid := room("invited")
		rmSend(t, alice, rid, "before the invite")
		rmInvite(t, alice, rid, bob.UserID)
		rmSend(t, alice, rid, "while invited")
		joinRoom(t, bob, rid)
		rmSend(t, alice, rid, "joined")
		if got := bodies(rmTimeline(t, bob, rid)); !slices.Equal(got, []string{"while invited", "joined"}) {
			t.Fatalf("bob reads %v, want what came after his invite", got)
		}
	})
	t.Run("WorldReadable", func(t *testing.T) {
		rid := room("world_readable")
		eid := rmSend(t, alice, rid, "for everyone")
		back, err := carol.Messages(ctx, rid, "", "", mautrix.DirectionBackward, nil, 100)
		if err != nil {
			t.Fatalf("non-member reading a world_readable room: %v", err)
		}
		if got := bodies(back.Chunk); !slices.Equal(got, []string{"for everyone"}) {
			t.Fatalf("carol reads %v", got)
		}
		if ev, err := carol.GetEvent(ctx, rid, eid); err != nil || ev.Content.Raw["body"] != "for everyone" {
			t.Fatalf("carol GET /event: %v %v", ev, err)
		}
		// Reading is not being in the room.
		_, err = carol.SendMessageEvent(ctx, rid, event.EventMessage, map[string]any{"msgtype": "m.text", "body": "hi"})
		wantHTTPErr(t, err, http.StatusForbidden, "M_FORBIDDEN")
		// Back to shared: the outsider is shut out.
		if _, err := alice.SendStateEvent(ctx, rid, event.StateHistoryVisibility, "", map[string]any{"history_visibility": "shared"}); err != nil {
			t.Fatal(err)
		}
		_, err = carol.Messages(ctx, rid, "", "", mautrix.DirectionBackward, nil, 10)
		wantHTTPErr(t, err, http.StatusForbidden, "M_FORBIDDEN")
	})
}

// --- /messages --------------------------------------------------------------

func TestMessagesPagination(t *testing.T) {
	srv := rmStart(t)
	ctx := context.Background()
	alice := registerUser(t, srv, "alice", rmPassword)
	rid := createRoom(t, alice, &mautrix.ReqCreateRoom{})
	var sent []id.EventID
	for i := range 25 {
		sent = append(sent, rmSend(t, alice, rid, fmt.Sprintf("m%02d", i)))
	}

	// Backward in pages of 10 from the newest.
	var pages [][]*event.Event
	var ends []string
	seen := map[id.EventID]bool{}
	from := ""
	for range 3 {
		resp, err := alice.Messages(ctx, rid, from, "", mautrix.DirectionBackward, nil, 10)
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.Chunk) != 10 || resp.End == "" || resp.Start == "" {
			t.Fatalf("page %d: %d events, start %q end %q", len(pages), len(resp.Chunk), resp.Start, resp.End)
		}
		if from != "" && resp.Start != from {
			t.Fatalf("page start %q, want the from token %q", resp.Start, from)
		}
		for _, e := range resp.Chunk {
			if seen[e.ID] {
				t.Fatalf("event %s on two pages", e.ID)
			}
			seen[e.ID] = true
		}
		pages = append(pages, resp.Chunk)
		ends = append(ends, resp.End)
		from = resp.End
	}
	var back []string
	for _, p := range pages {
		back = append(back, bodies(p)...)
	}
	var want []string
	for i := 24; i >= 0; i-- {
		want = append(want, fmt.Sprintf("m%02d", i))
	}
	if !slices.Equal(back, want) {
		t.Fatalf("three backward pages read %v, want %v", back, want)
	}
	// Then the creation events, and the end: no end token.
	rest, err := alice.Messages(ctx, rid, from, "", mautrix.DirectionBackward, nil, 100)
	if err != nil {
		t.Fatal(err)
	}
	if rest.End != "" || len(rest.Chunk) == 0 || rest.Chunk[len(rest.Chunk)-1].Type != event.StateCreate {
		t.Fatalf("last page: end %q, %d events ending %v", rest.End, len(rest.Chunk), rest.Chunk)
	}
	if n := len(pages[2]) - 5 + len(rest.Chunk); n != rmCount(t, alice, rid)-25 {
		t.Fatalf("%d non-message events read backward, want %d", n, rmCount(t, alice, rid)-25)
	}

	// Forward from a token: the events after it, oldest first. The end of
	// the first backward page sits just before m15.
	fwd, err := alice.Messages(ctx, rid, ends[0], "", mautrix.DirectionForward, nil, 20)
	if err != nil {
		t.Fatal(err)
	}
	var gotIDs []id.EventID
	for _, e := range fwd.Chunk {
		gotIDs = append(gotIDs, e.ID)
	}
	if !slices.Equal(gotIDs, sent[15:]) {
		t.Fatalf("forward from the first page's end: %v, want m15..m24", bodies(fwd.Chunk))
	}
	if fwd.End != "" {
		t.Fatalf("forward read to the newest event has end %q", fwd.End)
	}
	// dir=f without from starts at the beginning of the room.
	first, err := alice.Messages(ctx, rid, "", "", mautrix.DirectionForward, nil, 3)
	if err != nil || len(first.Chunk) != 3 || first.Chunk[0].Type != event.StateCreate || first.End == "" {
		t.Fatalf("dir=f from the start: %+v %v", first, err)
	}
	// to bounds a page: backward from the newest to the first page's end
	// is exactly the first page.
	bounded, err := alice.Messages(ctx, rid, "", ends[0], mautrix.DirectionBackward, nil, 50)
	if err != nil || !slices.Equal(bodies(bounded.Chunk), want[:10]) {
		t.Fatalf("dir=b to=%s: %v %v", ends[0], bodies(bounded.Chunk), err)
	}

	msgs := func(q string) rawResponse {
		return doJSON(t, "GET", clientURL(srv, "v3", "rooms", string(rid), "messages")+q, alice.AccessToken, nil)
	}
	msgs("?dir=b&from=garbage").wantErr(t, http.StatusBadRequest, "M_INVALID_PARAM")
	msgs("?dir=f&from=t-5").wantErr(t, http.StatusBadRequest, "M_INVALID_PARAM")
	msgs("?dir=b&to=xyz").wantErr(t, http.StatusBadRequest, "M_INVALID_PARAM")
	msgs("?dir=sideways").wantErr(t, http.StatusBadRequest, "M_INVALID_PARAM")
	if r := msgs(""); r.Status != http.StatusBadRequest || (r.Body["errcode"] != "M_MISSING_PARAM" && r.Body["errcode"] != "M_INVALID_PARAM") {
		t.Fatalf("missing dir: got %d %s, want 400", r.Status, r.Raw)
	}
	msgs("?dir=b&limit=ten").wantErr(t, http.StatusBadRequest, "M_INVALID_PARAM")
	ok := msgs("?dir=b&limit=2")
	ok.wantOK(t)
	if chunk, _ := ok.Body["chunk"].([]any); len(chunk) != 2 {
		t.Fatalf("raw /messages limit=2: %s", ok.Raw)
	}
}

// --- r0 ---------------------------------------------------------------------

func TestRoomR0Aliases(t *testing.T) {
	srv := rmStart(t)
	ctx := context.Background()
	alice := registerUser(t, srv, "alice", rmPassword)

	r := doJSON(t, "POST", clientURL(srv, "r0", "createRoom"), alice.AccessToken, map[string]any{"name": "old client"})
	r.wantOK(t)
	rid := id.RoomID(r.Body["room_id"].(string))
	s := doJSON(t, "PUT", clientURL(srv, "r0", "rooms", string(rid), "send", "m.room.message", "r0-1"), alice.AccessToken,
		map[string]any{"msgtype": "m.text", "body": "from r0"})
	s.wantOK(t)
	eid := id.EventID(s.Body["event_id"].(string))
	ev, err := alice.GetEvent(ctx, rid, eid)
	if err != nil || ev.Content.Raw["body"] != "from r0" {
		t.Fatalf("r0 send read through v3: %v %v", ev, err)
	}
	if got := rmStateOK(t, srv, alice, rid, "m.room.name", "")["name"]; got != "old client" {
		t.Fatalf("r0 createRoom name %v", got)
	}
	// r0 and v3 share one transaction scope: the same send is a retry.
	v3 := doJSON(t, "PUT", clientURL(srv, "v3", "rooms", string(rid), "send", "m.room.message", "r0-1"), alice.AccessToken,
		map[string]any{"msgtype": "m.text", "body": "from r0"})
	v3.wantOK(t)
	if v3.Body["event_id"] != string(eid) {
		t.Fatalf("v3 retry of an r0 send: %s, want %s", v3.Raw, eid)
	}
	m := doJSON(t, "GET", clientURL(srv, "r0", "rooms", string(rid), "messages")+"?dir=b&limit=1", alice.AccessToken, nil)
	m.wantOK(t)
	if chunk, _ := m.Body["chunk"].([]any); len(chunk) != 1 || chunk[0].(map[string]any)["event_id"] != string(eid) {
		t.Fatalf("r0 /messages: %s", m.Raw)
	}
}
