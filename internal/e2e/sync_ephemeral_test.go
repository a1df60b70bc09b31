package e2e

import (
	"context"
	"net/http"
	"slices"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// End-to-end tests of what /sync delivers besides room events: read
// receipts, read markers and presence, written through their endpoints.
// "Sees nothing" is checked with a sentinel: a later change the same
// reader does see. Stream positions are ordered, so by the time the
// sentinel arrives anything written before it would have too.

// ephSync is one /sync of cli from since (initial when empty), waiting up
// to 10 s for something new.
func ephSync(t *testing.T, cli *mautrix.Client, since string, presence event.Presence) *mautrix.RespSync {
	t.Helper()
	timeout := 10000
	if since == "" {
		timeout = 0
	}
	resp, err := cli.SyncRequest(context.Background(), timeout, since, "", false, presence)
	if err != nil {
		t.Fatalf("%s syncing: %v", cli.UserID, err)
	}
	return resp
}

// ephSyncUntil long-polls cli from since, handing every response to seen,
// until seen returns true; it returns that response's next_batch. It fails
// the test after 30 s.
func ephSyncUntil(t *testing.T, cli *mautrix.Client, since string, presence event.Presence, what string, seen func(*mautrix.RespSync) bool) string {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp := ephSync(t, cli, since, presence)
		since = resp.NextBatch
		if seen(resp) {
			return since
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: /sync never delivered %s", cli.UserID, what)
		}
	}
}

// ephReceipts merges the m.receipt events of roomID in resp.
func ephReceipts(t *testing.T, resp *mautrix.RespSync, roomID id.RoomID) event.ReceiptEventContent {
	t.Helper()
	out := event.ReceiptEventContent{}
	jr := resp.Rooms.Join[roomID]
	if jr == nil {
		return out
	}
	for _, e := range jr.Ephemeral.Events {
		if e.Type != event.EphemeralEventReceipt {
			continue
		}
		if err := e.Content.ParseRaw(e.Type); err != nil {
			t.Fatalf("m.receipt content: %v", err)
		}
		for evID, byType := range *e.Content.AsReceipt() {
			for typ, users := range byType {
				for u, rr := range users {
					out.Set(evID, typ, u, rr)
				}
			}
		}
	}
	return out
}

// ephReceipt finds user's receipt of type typ in c: the event and receipt.
func ephReceipt(c event.ReceiptEventContent, typ event.ReceiptType, user id.UserID, thread id.EventID) (id.EventID, *event.ReadReceipt) {
	for evID, byType := range c {
		if rr, ok := byType[typ][user]; ok && rr.ThreadID == thread {
			return evID, &rr
		}
	}
	return "", nil
}

// ephPresence lists the m.presence events in resp by sender.
func ephPresence(t *testing.T, resp *mautrix.RespSync) map[id.UserID]*event.PresenceEventContent {
	t.Helper()
	out := map[id.UserID]*event.PresenceEventContent{}
	for _, e := range resp.Presence.Events {
		if e.Type != event.EphemeralEventPresence {
			t.Fatalf("presence section holds a %s event", e.Type.Type)
		}
		if err := e.Content.ParseRaw(e.Type); err != nil {
			t.Fatalf("m.presence content: %v", err)
		}
		out[e.Sender] = e.Content.AsPresence()
	}
	return out
}

// ephRoomAccountData finds an account data event of roomID in resp.
func ephRoomAccountData(resp *mautrix.RespSync, roomID id.RoomID, typ string) map[string]any {
	jr := resp.Rooms.Join[roomID]
	if jr == nil {
		return nil
	}
	for _, e := range jr.AccountData.Events {
		if e.Type.Type == typ {
			return e.Content.Raw
		}
	}
	return nil
}

func ephSend(t *testing.T, cli *mautrix.Client, roomID id.RoomID, content any) id.EventID {
	t.Helper()
	resp, err := cli.SendMessageEvent(context.Background(), roomID, event.EventMessage, content)
	if err != nil {
		t.Fatalf("%s sending: %v", cli.UserID, err)
	}
	return resp.EventID
}

func ephPostReceipt(t *testing.T, srv *Server, cli *mautrix.Client, version string, roomID id.RoomID, typ string, eventID id.EventID, body any) rawResponse {
	t.Helper()
	return doJSON(t, "POST", clientURL(srv, version, "rooms", string(roomID), "receipt", typ, string(eventID)), cli.AccessToken, body)
}

// TestReceiptsThroughSync: public, private and threaded receipts, the
// order they may move in, and every refusal.
func TestReceiptsThroughSync(t *testing.T) {
	srv := startAccounts(t, nil)
	ctx := context.Background()
	alice := registerUser(t, srv, "alice", "correct horse battery")
	bob := registerUser(t, srv, "bob", "correct horse battery")
	carol := registerUser(t, srv, "carol", "correct horse battery")
	roomID := createRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	joinRoom(t, bob, roomID)
	other := createRoom(t, carol, &mautrix.ReqCreateRoom{Preset: "public_chat"})

	first := ephSend(t, bob, roomID, map[string]any{"msgtype": "m.text", "body": "first"})
	second := ephSend(t, bob, roomID, map[string]any{"msgtype": "m.text", "body": "second"})
	reply := ephSend(t, bob, roomID, map[string]any{"msgtype": "m.text", "body": "in thread",
		"m.relates_to": map[string]any{"rel_type": "m.thread", "event_id": string(first)}})
	reaction := ephSend(t, bob, roomID, map[string]any{"m.relates_to": map[string]any{
		"rel_type": "m.annotation", "event_id": string(reply), "key": "👍"}})
	carolsEvent := ephSend(t, carol, other, map[string]any{"msgtype": "m.text", "body": "elsewhere"})

	bobSince := ephSync(t, bob, "", event.PresenceOffline).NextBatch
	aliceSince := ephSync(t, alice, "", event.PresenceOffline).NextBatch
	carolSince := ephSync(t, carol, "", event.PresenceOffline).NextBatch

	// A public receipt reaches bob's long-poll, with its ts.
	done := make(chan *mautrix.RespSync, 1)
	go func() {
		r, err := bob.SyncRequest(ctx, 20000, bobSince, "", false, event.PresenceOffline)
		if err != nil {
			t.Error(err)
		}
		done <- r
	}()
	before := time.Now().Add(-time.Minute)
	r := ephPostReceipt(t, srv, alice, "v3", roomID, "m.read", second, map[string]any{})
	r.wantOK(t)
	specValidate(t, r.Body, "receipts.yaml", "/rooms/{roomId}/receipt/{receiptType}/{eventId}", "post", "200")
	var woke *mautrix.RespSync
	select {
	case woke = <-done:
	case <-time.After(15 * time.Second):
		t.Fatal("a receipt did not wake the other member's long-poll")
	}
	if woke == nil {
		t.FailNow()
	}
	got, rr := ephReceipt(ephReceipts(t, woke, roomID), event.ReceiptTypeRead, alice.UserID, "")
	if got != second || rr.Timestamp.Before(before) || rr.Timestamp.After(time.Now().Add(time.Minute)) {
		t.Fatalf("bob sees alice's m.read on %s (%+v), want %s with a current ts", got, rr, second)
	}
	bobSince = woke.NextBatch

	// A private receipt: alice sees it, bob does not (sentinel: alice's
	// threaded receipt afterwards, which carries its thread_id).
	ephPostReceipt(t, srv, alice, "v3", roomID, "m.read.private", second, map[string]any{}).wantOK(t)
	aliceSince = ephSyncUntil(t, alice, aliceSince, event.PresenceOffline, "alice's private receipt", func(resp *mautrix.RespSync) bool {
		ev, _ := ephReceipt(ephReceipts(t, resp, roomID), event.ReceiptTypeReadPrivate, alice.UserID, "")
		return ev == second
	})
	ephPostReceipt(t, srv, alice, "r0", roomID, "m.read", reply, map[string]any{"thread_id": string(first)}).wantOK(t)
	bobSince = ephSyncUntil(t, bob, bobSince, event.PresenceOffline, "alice's threaded receipt", func(resp *mautrix.RespSync) bool {
		c := ephReceipts(t, resp, roomID)
		if ev, _ := ephReceipt(c, event.ReceiptTypeReadPrivate, alice.UserID, ""); ev != "" {
			t.Fatalf("bob sees alice's private receipt on %s", ev)
		}
		ev, _ := ephReceipt(c, event.ReceiptTypeRead, alice.UserID, first)
		return ev == reply
	})

	// The main timeline, and thread roots and relations of thread events
	// (a reaction to a reply is in the thread).
	ephPostReceipt(t, srv, alice, "v3", roomID, "m.read", first, map[string]any{"thread_id": "main"}).wantOK(t)
	ephPostReceipt(t, srv, alice, "v3", roomID, "m.read", reaction, map[string]any{"thread_id": string(first)}).wantOK(t)
	ephPostReceipt(t, srv, alice, "v3", roomID, "m.read", first, map[string]any{"thread_id": string(first)}).wantOK(t)

	// Receipts never move back: an older event is accepted and ignored.
	ephPostReceipt(t, srv, alice, "v3", roomID, "m.read", first, nil).wantOK(t)
	ephPostReceipt(t, srv, alice, "v3", roomID, "m.read.private", first, map[string]any{}).wantOK(t)
	initial := ephSync(t, bob, "", event.PresenceOffline)
	c := ephReceipts(t, initial, roomID)
	if ev, _ := ephReceipt(c, event.ReceiptTypeRead, alice.UserID, ""); ev != second {
		t.Fatalf("alice's unthreaded m.read is on %s after a receipt for an older event, want %s", ev, second)
	}
	if ev, _ := ephReceipt(c, event.ReceiptTypeRead, alice.UserID, first); ev != reaction {
		t.Fatalf("alice's m.read in the thread is on %s, want %s", ev, reaction)
	}
	if ev, _ := ephReceipt(c, event.ReceiptTypeRead, alice.UserID, "main"); ev != first {
		t.Fatalf("alice's m.read on the main timeline is on %s, want %s", ev, first)
	}
	if ev, _ := ephReceipt(c, event.ReceiptTypeReadPrivate, alice.UserID, ""); ev != "" {
		t.Fatalf("bob's initial sync shows alice's private receipt on %s", ev)
	}
	mine := ephReceipts(t, ephSync(t, alice, "", event.PresenceOffline), roomID)
	if ev, _ := ephReceipt(mine, event.ReceiptTypeReadPrivate, alice.UserID, ""); ev != second {
		t.Fatalf("alice's private receipt is on %s, want %s", ev, second)
	}

	// Refusals.
	for _, tc := range []struct {
		name    string
		cli     *mautrix.Client
		typ     string
		eventID id.EventID
		body    any
		status  int
		errcode string
	}{
		{"unknown receipt type", alice, "m.seen", second, map[string]any{}, http.StatusBadRequest, "M_INVALID_PARAM"},
		{"thread_id on m.fully_read", alice, "m.fully_read", second, map[string]any{"thread_id": "main"}, http.StatusBadRequest, "M_INVALID_PARAM"},
		{"empty thread_id", alice, "m.read", second, map[string]any{"thread_id": ""}, http.StatusBadRequest, "M_INVALID_PARAM"},
		{"thread_id not a string", alice, "m.read", second, map[string]any{"thread_id": 7}, http.StatusBadRequest, "M_INVALID_PARAM"},
		{"event not in the thread", alice, "m.read", second, map[string]any{"thread_id": string(first)}, http.StatusBadRequest, "M_INVALID_PARAM"},
		{"thread event as main", alice, "m.read", reply, map[string]any{"thread_id": "main"}, http.StatusBadRequest, "M_INVALID_PARAM"},
		{"event of another room", alice, "m.read", carolsEvent, map[string]any{}, http.StatusNotFound, "M_NOT_FOUND"},
		{"unknown event", alice, "m.read", "$nope", map[string]any{}, http.StatusNotFound, "M_NOT_FOUND"},
		{"not a member", carol, "m.read", second, map[string]any{}, http.StatusForbidden, "M_FORBIDDEN"},
		{"not a member, private", carol, "m.read.private", second, map[string]any{}, http.StatusForbidden, "M_FORBIDDEN"},
		{"body not JSON", alice, "m.read", second, "nope", http.StatusBadRequest, "M_NOT_JSON"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := ephPostReceipt(t, srv, tc.cli, "v3", roomID, tc.typ, tc.eventID, tc.body)
			r.wantErr(t, tc.status, tc.errcode)
			specValidateErr(t, r)
		})
	}
	doJSON(t, "POST", clientURL(srv, "v3", "rooms", string(roomID), "receipt", "m.read", string(second)), "", map[string]any{}).
		wantErr(t, http.StatusUnauthorized, "M_MISSING_TOKEN")

	// carol, who is not in the room, sees none of it: her sentinel is her
	// own room's message.
	ephSend(t, carol, other, map[string]any{"msgtype": "m.text", "body": "sentinel"})
	ephSyncUntil(t, carol, carolSince, event.PresenceOffline, "carol's sentinel", func(resp *mautrix.RespSync) bool {
		if _, ok := resp.Rooms.Join[roomID]; ok {
			t.Fatalf("carol's sync shows room %s she is not in", roomID)
		}
		jr := resp.Rooms.Join[other]
		return jr != nil && slices.Contains(bodies(jr.Timeline.Events), "sentinel")
	})
	if _, ok := ephSync(t, carol, "", event.PresenceOffline).Rooms.Join[roomID]; ok {
		t.Fatalf("carol's initial sync shows room %s", roomID)
	}

	// Typing has the same membership rule.
	r = doJSON(t, "PUT", clientURL(srv, "v3", "rooms", string(roomID), "typing", string(carol.UserID)), carol.AccessToken,
		map[string]any{"typing": true, "timeout": 10000})
	r.wantErr(t, http.StatusForbidden, "M_FORBIDDEN")
	_ = aliceSince
}

// TestReadMarkers: /read_markers sets the m.fully_read room account data
// (the owner's alone) and receipts; the receipt endpoint's m.fully_read
// does the same; the marker only moves forward.
func TestReadMarkers(t *testing.T) {
	srv := startAccounts(t, nil)
	ctx := context.Background()
	alice := registerUser(t, srv, "alice", "correct horse battery")
	bob := registerUser(t, srv, "bob", "correct horse battery")
	carol := registerUser(t, srv, "carol", "correct horse battery")
	roomID := createRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	joinRoom(t, bob, roomID)
	first := ephSend(t, bob, roomID, map[string]any{"msgtype": "m.text", "body": "first"})
	second := ephSend(t, bob, roomID, map[string]any{"msgtype": "m.text", "body": "second"})

	aliceSince := ephSync(t, alice, "", event.PresenceOffline).NextBatch
	bobSince := ephSync(t, bob, "", event.PresenceOffline).NextBatch

	if err := alice.SetReadMarkers(ctx, roomID, &mautrix.ReqSetReadMarkers{FullyRead: first, Read: first}); err != nil {
		t.Fatal(err)
	}
	aliceSince = ephSyncUntil(t, alice, aliceSince, event.PresenceOffline, "alice's m.fully_read", func(resp *mautrix.RespSync) bool {
		fr := ephRoomAccountData(resp, roomID, "m.fully_read")
		if fr == nil {
			return false
		}
		if fr["event_id"] != string(first) {
			t.Fatalf("m.fully_read = %v, want event_id %s", fr, first)
		}
		if ev, _ := ephReceipt(ephReceipts(t, resp, roomID), event.ReceiptTypeRead, alice.UserID, ""); ev != first {
			t.Fatalf("read_markers' m.read is on %q in the same sync, want %s", ev, first)
		}
		return true
	})
	// bob sees the receipt, never alice's account data.
	bobSince = ephSyncUntil(t, bob, bobSince, event.PresenceOffline, "alice's m.read", func(resp *mautrix.RespSync) bool {
		if fr := ephRoomAccountData(resp, roomID, "m.fully_read"); fr != nil {
			t.Fatalf("bob sees alice's m.fully_read: %v", fr)
		}
		ev, _ := ephReceipt(ephReceipts(t, resp, roomID), event.ReceiptTypeRead, alice.UserID, "")
		return ev == first
	})

	// Through the receipt endpoint, forward; then backward is ignored.
	ephPostReceipt(t, srv, alice, "v3", roomID, "m.fully_read", second, map[string]any{}).wantOK(t)
	aliceSince = ephSyncUntil(t, alice, aliceSince, event.PresenceOffline, "the moved m.fully_read", func(resp *mautrix.RespSync) bool {
		fr := ephRoomAccountData(resp, roomID, "m.fully_read")
		return fr != nil && fr["event_id"] == string(second)
	})
	r := doJSON(t, "POST", clientURL(srv, "r0", "rooms", string(roomID), "read_markers"), alice.AccessToken,
		map[string]any{"m.fully_read": string(first), "m.read.private": string(second)})
	r.wantOK(t)
	specValidate(t, r.Body, "read_markers.yaml", "/rooms/{roomId}/read_markers", "post", "200")
	got := doJSON(t, "GET", clientURL(srv, "v3", "user", string(alice.UserID), "rooms", string(roomID), "account_data", "m.fully_read"), alice.AccessToken, nil)
	got.wantOK(t)
	if got.Body["event_id"] != string(second) {
		t.Fatalf("m.fully_read moved back to %v, want %s", got.Body["event_id"], second)
	}
	ephSyncUntil(t, alice, aliceSince, event.PresenceOffline, "the private receipt of read_markers", func(resp *mautrix.RespSync) bool {
		if fr := ephRoomAccountData(resp, roomID, "m.fully_read"); fr != nil && fr["event_id"] != string(second) {
			t.Fatalf("m.fully_read went back to %v", fr)
		}
		ev, _ := ephReceipt(ephReceipts(t, resp, roomID), event.ReceiptTypeReadPrivate, alice.UserID, "")
		return ev == second
	})

	// An empty request changes nothing; errors.
	doJSON(t, "POST", clientURL(srv, "v3", "rooms", string(roomID), "read_markers"), alice.AccessToken, map[string]any{}).wantOK(t)
	r = doJSON(t, "POST", clientURL(srv, "v3", "rooms", string(roomID), "read_markers"), carol.AccessToken, map[string]any{"m.fully_read": string(first)})
	r.wantErr(t, http.StatusForbidden, "M_FORBIDDEN")
	specValidateErr(t, r)
	doJSON(t, "POST", clientURL(srv, "v3", "rooms", string(roomID), "read_markers"), alice.AccessToken, map[string]any{"m.fully_read": "$unknown"}).
		wantErr(t, http.StatusNotFound, "M_NOT_FOUND")
	doJSON(t, "POST", clientURL(srv, "v3", "rooms", string(roomID), "read_markers"), alice.AccessToken, map[string]any{"m.read": 5}).
		wantErr(t, http.StatusBadRequest, "M_BAD_JSON")
	// Setting m.fully_read directly as account data is refused.
	doJSON(t, "PUT", clientURL(srv, "v3", "user", string(alice.UserID), "rooms", string(roomID), "account_data", "m.fully_read"), alice.AccessToken,
		map[string]any{"event_id": string(first)}).wantErr(t, http.StatusBadRequest, "M_BAD_JSON")
	_ = bobSince
}

// TestPresence: PUT and GET, who may see whom (GET and /sync),
// set_presence, and that idle long-polls write no stream positions.
func TestPresence(t *testing.T) {
	srv := startAccounts(t, nil)
	ctx := context.Background()
	alice := registerUser(t, srv, "alice", "correct horse battery")
	bob := registerUser(t, srv, "bob", "correct horse battery")
	carol := registerUser(t, srv, "carol", "correct horse battery")
	roomID := createRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	joinRoom(t, bob, roomID)

	statusURL := func(version string, u id.UserID) string {
		return clientURL(srv, version, "presence", string(u), "status")
	}

	// Nobody has set anything yet: offline.
	r := doJSON(t, "GET", statusURL("v3", alice.UserID), alice.AccessToken, nil)
	r.wantOK(t)
	if r.Body["presence"] != "offline" {
		t.Fatalf("presence before any = %s", r.Raw)
	}
	bobSince := ephSync(t, bob, "", event.PresenceOffline).NextBatch
	carolSince := ephSync(t, carol, "", event.PresenceOffline).NextBatch

	r = doJSON(t, "PUT", statusURL("v3", alice.UserID), alice.AccessToken, map[string]any{"presence": "online", "status_msg": "in a meeting"})
	r.wantOK(t)
	specValidate(t, r.Body, "presence.yaml", "/presence/{userId}/status", "put", "200")
	for _, reader := range []*mautrix.Client{alice, bob} {
		r = doJSON(t, "GET", statusURL("r0", alice.UserID), reader.AccessToken, nil)
		r.wantOK(t)
		specValidate(t, r.Body, "presence.yaml", "/presence/{userId}/status", "get", "200")
		if r.Body["presence"] != "online" || r.Body["status_msg"] != "in a meeting" || r.Body["currently_active"] != true {
			t.Fatalf("%s GET alice's presence = %s", reader.UserID, r.Raw)
		}
		if ago, ok := r.Body["last_active_ago"].(float64); !ok || ago < 0 || ago > 60000 {
			t.Fatalf("last_active_ago = %v", r.Body["last_active_ago"])
		}
	}
	p, err := bob.GetPresence(ctx, alice.UserID)
	if err != nil || p.Presence != event.PresenceOnline || p.StatusMsg != "in a meeting" {
		t.Fatalf("mautrix GetPresence = %+v, %v", p, err)
	}

	// bob shares a room: his sync shows it.
	bobSince = ephSyncUntil(t, bob, bobSince, event.PresenceOffline, "alice's presence", func(resp *mautrix.RespSync) bool {
		pc := ephPresence(t, resp)[alice.UserID]
		if pc == nil {
			return false
		}
		if pc.Presence != event.PresenceOnline || pc.StatusMessage != "in a meeting" || !pc.CurrentlyActive {
			t.Fatalf("bob sees alice as %+v", pc)
		}
		return true
	})
	// carol does not: GET is refused, her sync shows only herself (her
	// own PUT afterwards is the sentinel).
	r = doJSON(t, "GET", statusURL("v3", alice.UserID), carol.AccessToken, nil)
	r.wantErr(t, http.StatusForbidden, "M_FORBIDDEN")
	specValidateErr(t, r)
	if err := carol.SetPresence(ctx, mautrix.ReqPresence{Presence: event.PresenceUnavailable}); err != nil {
		t.Fatal(err)
	}
	ephSyncUntil(t, carol, carolSince, event.PresenceOffline, "carol's own presence", func(resp *mautrix.RespSync) bool {
		ps := ephPresence(t, resp)
		for u := range ps {
			if u != carol.UserID {
				t.Fatalf("carol, who shares no room, sees %s's presence", u)
			}
		}
		return ps[carol.UserID] != nil && ps[carol.UserID].Presence == event.PresenceUnavailable
	})
	initial := ephSync(t, carol, "", event.PresenceOffline)
	if ps := ephPresence(t, initial); ps[alice.UserID] != nil || ps[bob.UserID] != nil {
		t.Fatalf("carol's initial sync shows presence of users she shares no room with: %v", ps)
	}

	// set_presence=unavailable on alice's sync reaches bob; the status
	// message stays.
	ephSync(t, alice, "", event.PresenceUnavailable)
	bobSince = ephSyncUntil(t, bob, bobSince, event.PresenceOffline, "alice unavailable", func(resp *mautrix.RespSync) bool {
		pc := ephPresence(t, resp)[alice.UserID]
		if pc == nil || pc.Presence != event.PresenceUnavailable {
			return false
		}
		if pc.StatusMessage != "in a meeting" || pc.CurrentlyActive {
			t.Fatalf("alice unavailable by set_presence = %+v", pc)
		}
		return true
	})
	// Default set_presence is online; offline changes nothing.
	aliceNext := ephSync(t, alice, "", "").NextBatch
	bobSince = ephSyncUntil(t, bob, bobSince, event.PresenceOffline, "alice online again", func(resp *mautrix.RespSync) bool {
		pc := ephPresence(t, resp)[alice.UserID]
		return pc != nil && pc.Presence == event.PresenceOnline
	})
	ephSync(t, alice, "", event.PresenceOffline)
	r = doJSON(t, "GET", statusURL("v3", alice.UserID), bob.AccessToken, nil)
	if r.Body["presence"] != "online" {
		t.Fatalf("set_presence=offline changed alice's presence: %s", r.Raw)
	}

	// Idle syncs that keep alice online write nothing to the stream: her
	// token does not move.
	for range 3 {
		resp, err := alice.SyncRequest(ctx, 0, aliceNext, "", false, event.PresenceOnline)
		if err != nil {
			t.Fatal(err)
		}
		if resp.NextBatch != aliceNext {
			t.Fatalf("an idle /sync with set_presence=online moved the stream: %s -> %s", aliceNext, resp.NextBatch)
		}
	}

	// A PUT without status_msg clears it.
	doJSON(t, "PUT", statusURL("v3", alice.UserID), alice.AccessToken, map[string]any{"presence": "unavailable"}).wantOK(t)
	r = doJSON(t, "GET", statusURL("v3", alice.UserID), alice.AccessToken, nil)
	if r.Body["presence"] != "unavailable" || r.Body["status_msg"] != nil || r.Body["currently_active"] != false {
		t.Fatalf("after PUT unavailable: %s", r.Raw)
	}

	// Refusals.
	r = doJSON(t, "PUT", statusURL("v3", bob.UserID), alice.AccessToken, map[string]any{"presence": "online"})
	r.wantErr(t, http.StatusForbidden, "M_FORBIDDEN")
	specValidateErr(t, r)
	doJSON(t, "PUT", statusURL("v3", alice.UserID), alice.AccessToken, map[string]any{"presence": "busy"}).
		wantErr(t, http.StatusBadRequest, "M_INVALID_PARAM")
	doJSON(t, "PUT", statusURL("v3", alice.UserID), alice.AccessToken, map[string]any{"status_msg": "no state"}).
		wantErr(t, http.StatusBadRequest, "M_BAD_JSON")
	doJSON(t, "PUT", statusURL("v3", alice.UserID), alice.AccessToken, map[string]any{"presence": "online", "status_msg": 3}).
		wantErr(t, http.StatusBadRequest, "M_BAD_JSON")
	r = doJSON(t, "GET", statusURL("v3", "@nobody:localhost"), alice.AccessToken, nil)
	r.wantErr(t, http.StatusNotFound, "M_NOT_FOUND")
	specValidateErr(t, r)
	doJSON(t, "GET", statusURL("v3", "@alice:elsewhere.example"), alice.AccessToken, nil).wantErr(t, http.StatusNotFound, "M_NOT_FOUND")
	doJSON(t, "GET", statusURL("v3", alice.UserID), "", nil).wantErr(t, http.StatusUnauthorized, "M_MISSING_TOKEN")
	r = doJSON(t, "GET", srv.URL+"/_matrix/client/v3/sync?set_presence=away", alice.AccessToken, nil)
	r.wantErr(t, http.StatusBadRequest, "M_INVALID_PARAM")
	_ = bobSince
}

// TestPresenceDrift: with short timeouts, a user who stops syncing drifts
// to unavailable and then offline, and others' /sync shows each step; a
// user whose long-poll outlasts the timeouts stays online.
func TestPresenceDrift(t *testing.T) {
	srv := startAccounts(t, map[string]string{
		"WEFT_PRESENCE_IDLE_AFTER":    "1s",
		"WEFT_PRESENCE_OFFLINE_AFTER": "3s",
	})
	ctx := context.Background()
	alice := registerUser(t, srv, "alice", "correct horse battery")
	bob := registerUser(t, srv, "bob", "correct horse battery")
	dave := registerUser(t, srv, "dave", "correct horse battery")
	roomID := createRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	joinRoom(t, bob, roomID)
	daveRoom := createRoom(t, dave, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	joinRoom(t, bob, daveRoom)

	// dave holds one long-poll longer than offline_after: nothing wakes
	// it (bob syncs with set_presence=offline, and dave's room is quiet).
	daveSince := ephSync(t, dave, "", event.PresenceOnline).NextBatch
	daveCtx, stopDave := context.WithCancel(ctx)
	defer stopDave()
	daveDone := make(chan struct{})
	go func() {
		defer close(daveDone)
		_, _ = dave.SyncRequest(daveCtx, 60000, daveSince, "", false, event.PresenceOnline)
	}()

	bobSince := ephSync(t, bob, "", event.PresenceOffline).NextBatch
	start := time.Now()
	ephSync(t, alice, "", event.PresenceOnline) // alice's last sync

	var seen []event.Presence
	ephSyncUntil(t, bob, bobSince, event.PresenceOffline, "alice offline", func(resp *mautrix.RespSync) bool {
		if pc := ephPresence(t, resp)[alice.UserID]; pc != nil && (len(seen) == 0 || seen[len(seen)-1] != pc.Presence) {
			seen = append(seen, pc.Presence)
		}
		return len(seen) > 0 && seen[len(seen)-1] == event.PresenceOffline
	})
	want := []event.Presence{event.PresenceOnline, event.PresenceUnavailable, event.PresenceOffline}
	if !slices.Equal(seen, want) {
		t.Fatalf("bob saw alice go %v, want %v", seen, want)
	}
	if took := time.Since(start); took < 3*time.Second {
		t.Fatalf("alice went offline after %v, before offline_after (3s)", took)
	}

	r := doJSON(t, "GET", clientURL(srv, "v3", "presence", string(dave.UserID), "status"), bob.AccessToken, nil)
	r.wantOK(t)
	if r.Body["presence"] != "online" || r.Body["currently_active"] != true {
		t.Fatalf("dave, long-polling for %v, is shown %s", time.Since(start), r.Raw)
	}
	select {
	case <-daveDone:
		t.Fatal("dave's long-poll ended early: the test did not cover a long-poll outlasting offline_after")
	default:
	}
	stopDave()
	<-daveDone
}
