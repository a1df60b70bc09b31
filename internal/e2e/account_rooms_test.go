package e2e

import (
	"context"
	"encoding/json"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// The user directory's default scope: people you share a room with and
// people in public rooms, never strangers.
func TestDirectoryScopeFollowsRooms(t *testing.T) {
	srv := startAccounts(t, nil)
	ctx := context.Background()
	alice := registerUser(t, srv, "alice", "alice-password")
	bob := registerUser(t, srv, "bob", "bob-password")
	carol := registerUser(t, srv, "carol", "carol-password")
	_ = registerUser(t, srv, "dave", "dave-password")

	search := func(term string) map[id.UserID]bool {
		res, err := alice.SearchUserDirectory(ctx, term, 50)
		if err != nil {
			t.Fatal(err)
		}
		out := map[id.UserID]bool{}
		for _, r := range res.Results {
			out[r.UserID] = true
		}
		return out
	}
	if got := search("bob"); got[bob.UserID] {
		t.Fatal("a stranger is in the directory")
	}
	// alice and bob share a private room.
	resp, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat", Invite: []id.UserID{bob.UserID}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bob.JoinRoomByID(ctx, resp.RoomID); err != nil {
		t.Fatal(err)
	}
	// carol sits alone in a public room.
	if _, err := carol.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat"}); err != nil {
		t.Fatal(err)
	}
	got := search("localhost")
	if !got[bob.UserID] || !got[carol.UserID] || got["@dave:localhost"] {
		t.Fatalf("directory scope wrong: %v", got)
	}
}

// A profile change becomes a new member event in every joined room, and a
// deactivated user leaves their rooms.
func TestProfileFanOutAndDeactivationLeave(t *testing.T) {
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
	if err := bob.SetDisplayName(ctx, "Bobby Tables"); err != nil {
		t.Fatal(err)
	}
	var member event.MemberEventContent
	if err := alice.StateEvent(ctx, resp.RoomID, event.StateMember, string(bob.UserID), &member); err != nil {
		t.Fatal(err)
	}
	if member.Displayname != "Bobby Tables" || member.Membership != event.MembershipJoin {
		t.Fatalf("member event after profile change: %+v", member)
	}

	first := doJSON(t, "POST", srv.URL+"/_matrix/client/v3/account/deactivate", bob.AccessToken, map[string]any{})
	body, _ := json.Marshal(map[string]any{"auth": map[string]any{
		"type": "m.login.password", "session": first.Body["session"], "password": "bob-password",
		"identifier": map[string]any{"type": "m.id.user", "user": "bob"},
	}})
	doJSON(t, "POST", srv.URL+"/_matrix/client/v3/account/deactivate", bob.AccessToken, body).wantOK(t)
	if err := alice.StateEvent(ctx, resp.RoomID, event.StateMember, string(bob.UserID), &member); err != nil {
		t.Fatal(err)
	}
	if member.Membership != event.MembershipLeave {
		t.Fatalf("deactivated user still %s", member.Membership)
	}
}
