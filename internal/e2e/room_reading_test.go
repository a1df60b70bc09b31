package e2e

import (
	"context"
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"
)

func readingRoom(t *testing.T) (*Server, *mautrix.Client, *mautrix.Client, id.RoomID, []id.EventID) {
	t.Helper()
	srv := startAccounts(t, nil)
	ctx := context.Background()
	alice := registerUser(t, srv, "alice", "alice-password")
	bob := registerUser(t, srv, "bob", "bob-password")
	resp, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bob.JoinRoomByID(ctx, resp.RoomID); err != nil {
		t.Fatal(err)
	}
	var ids []id.EventID
	for i := range 10 {
		cli := alice
		if i%2 == 1 {
			cli = bob
		}
		r, err := cli.SendText(ctx, resp.RoomID, fmt.Sprintf("m%d", i))
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, r.EventID)
	}
	return srv, alice, bob, resp.RoomID, ids
}

func TestContextAroundEvent(t *testing.T) {
	srv, alice, _, roomID, ids := readingRoom(t)
	ctx := context.Background()
	res, err := alice.Context(ctx, roomID, ids[5], nil, 4)
	if err != nil {
		t.Fatal(err)
	}
	if res.Event.ID != ids[5] {
		t.Fatalf("event %s", res.Event.ID)
	}
	if got := strings.Join(bodies(res.EventsBefore), ","); got != "m4,m3" {
		t.Fatalf("events_before %s", got)
	}
	if got := strings.Join(bodies(res.EventsAfter), ","); got != "m6,m7" {
		t.Fatalf("events_after %s", got)
	}
	if len(res.State) == 0 {
		t.Fatal("no state")
	}
	// Paginating backward from start continues before m3.
	more := doJSON(t, "GET", srv.URL+"/_matrix/client/v3/rooms/"+url.PathEscape(string(roomID))+"/messages?dir=b&limit=1&from="+res.Start, alice.AccessToken, nil)
	more.wantOK(t)
	chunk := more.Body["chunk"].([]any)
	if c := chunk[0].(map[string]any)["content"].(map[string]any)["body"]; c != "m2" {
		t.Fatalf("page after context start: %v", c)
	}
	doJSON(t, "GET", srv.URL+"/_matrix/client/v3/rooms/"+url.PathEscape(string(roomID))+"/context/$nope", alice.AccessToken, nil).wantErr(t, 404, "M_NOT_FOUND")
}

func TestMessagesFilterAndIgnoredUsers(t *testing.T) {
	srv, alice, bob, roomID, _ := readingRoom(t)
	ctx := context.Background()
	base := srv.URL + "/_matrix/client/v3/rooms/" + url.PathEscape(string(roomID)) + "/messages?dir=b&limit=50"
	r := doJSON(t, "GET", base+"&filter="+url.QueryEscape(fmt.Sprintf(`{"senders":[%q],"types":["m.room.*"],"lazy_load_members":true}`, bob.UserID)), alice.AccessToken, nil)
	r.wantOK(t)
	chunk := r.Body["chunk"].([]any)
	if len(chunk) != 6 { // bob's join and 5 messages
		t.Fatalf("filtered chunk has %d events: %s", len(chunk), r.Raw)
	}
	state := r.Body["state"].([]any)
	if len(state) != 1 || state[0].(map[string]any)["state_key"] != string(bob.UserID) {
		t.Fatalf("lazy-loaded members: %v", state)
	}
	doJSON(t, "GET", base+"&filter=notjson", alice.AccessToken, nil).wantErr(t, 400, "M_BAD_JSON")

	if err := alice.SetAccountData(ctx, "m.ignored_user_list", map[string]any{"ignored_users": map[string]any{string(bob.UserID): map[string]any{}}}); err != nil {
		t.Fatal(err)
	}
	msgs, err := alice.Messages(ctx, roomID, "", "", mautrix.DirectionBackward, nil, 50)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range msgs.Chunk {
		if e.Sender == bob.UserID {
			t.Fatalf("ignored user's event %s shown", e.ID)
		}
	}
}

func TestTimestampToEventAndForget(t *testing.T) {
	srv, alice, bob, roomID, ids := readingRoom(t)
	ctx := context.Background()
	ev, err := alice.GetEvent(ctx, roomID, ids[3])
	if err != nil {
		t.Fatal(err)
	}
	path := srv.URL + "/_matrix/client/v1/rooms/" + url.PathEscape(string(roomID)) + "/timestamp_to_event"
	r := doJSON(t, "GET", fmt.Sprintf("%s?ts=%d&dir=b", path, ev.Timestamp), alice.AccessToken, nil)
	r.wantOK(t)
	if r.Body["origin_server_ts"].(float64) > float64(ev.Timestamp) {
		t.Fatalf("dir=b returned a later event: %s", r.Raw)
	}
	doJSON(t, "GET", fmt.Sprintf("%s?ts=%d&dir=f", path, time.Now().Add(time.Hour).UnixMilli()), alice.AccessToken, nil).wantErr(t, 404, "M_NOT_FOUND")
	doJSON(t, "GET", path+"?ts=x&dir=f", alice.AccessToken, nil).wantErr(t, 400, "M_INVALID_PARAM")

	forget := srv.URL + "/_matrix/client/v3/rooms/" + url.PathEscape(string(roomID)) + "/forget"
	doJSON(t, "POST", forget, bob.AccessToken, "{}").wantErr(t, 400, "M_UNKNOWN")
	if _, err := bob.LeaveRoom(ctx, roomID); err != nil {
		t.Fatal(err)
	}
	doJSON(t, "POST", forget, bob.AccessToken, "{}").wantOK(t)
}

// /members?at= answers for the room as it was at a token.
func TestMembersAtToken(t *testing.T) {
	srv, alice, _, roomID, _ := readingRoom(t)
	ctx := context.Background()
	before, err := alice.Messages(ctx, roomID, "", "", mautrix.DirectionBackward, nil, 1)
	if err != nil {
		t.Fatal(err)
	}
	carol := registerUser(t, srv, "carol", "carol-password")
	if _, err := carol.JoinRoomByID(ctx, roomID); err != nil {
		t.Fatal(err)
	}
	count := func(at string) int {
		r := doJSON(t, "GET", srv.URL+"/_matrix/client/v3/rooms/"+url.PathEscape(string(roomID))+"/members?membership=join"+at, alice.AccessToken, nil)
		r.wantOK(t)
		return len(r.Body["chunk"].([]any))
	}
	if n := count(""); n != 3 {
		t.Fatalf("now: %d members", n)
	}
	if n := count("&at=" + before.Start); n != 2 {
		t.Fatalf("at %s: %d members, want 2", before.Start, n)
	}
	doJSON(t, "GET", srv.URL+"/_matrix/client/v3/rooms/"+url.PathEscape(string(roomID))+"/members?at=bogus", alice.AccessToken, nil).wantErr(t, 400, "M_INVALID_PARAM")
}
