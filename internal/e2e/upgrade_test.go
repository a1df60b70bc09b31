package e2e

import (
	"context"
	"net/url"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

func TestRoomUpgrade(t *testing.T) {
	srv := startAccounts(t, nil)
	ctx := context.Background()
	alice := registerUser(t, srv, "alice", "alice-password")
	bob := registerUser(t, srv, "bob", "bob-password")
	old, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{
		Preset: "public_chat", Name: "Old name", Topic: "topic", RoomVersion: "11", RoomAliasName: "hall",
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bob.JoinRoomByID(ctx, old.RoomID); err != nil {
		t.Fatal(err)
	}
	path := srv.URL + "/_matrix/client/v3/rooms/" + url.PathEscape(string(old.RoomID)) + "/upgrade"
	doJSON(t, "POST", path, bob.AccessToken, map[string]any{"new_version": "12"}).wantErr(t, 403, "M_FORBIDDEN")
	doJSON(t, "POST", path, alice.AccessToken, map[string]any{"new_version": "7"}).wantErr(t, 400, "M_UNSUPPORTED_ROOM_VERSION")
	r := doJSON(t, "POST", path, alice.AccessToken, map[string]any{"new_version": "12"})
	r.wantOK(t)
	newRoom := id.RoomID(r.Body["replacement_room"].(string))

	var tomb event.TombstoneEventContent
	if err := bob.StateEvent(ctx, old.RoomID, event.StateTombstone, "", &tomb); err != nil || tomb.ReplacementRoom != newRoom {
		t.Fatalf("tombstone %+v %v", tomb, err)
	}
	var create event.CreateEventContent
	if err := alice.StateEvent(ctx, newRoom, event.StateCreate, "", &create); err != nil {
		t.Fatal(err)
	}
	if create.RoomVersion != "12" || create.Predecessor == nil || create.Predecessor.RoomID != old.RoomID {
		t.Fatalf("create content %+v", create)
	}
	var name event.RoomNameEventContent
	if err := alice.StateEvent(ctx, newRoom, event.StateRoomName, "", &name); err != nil || name.Name != "Old name" {
		t.Fatalf("name not transferred: %+v %v", name, err)
	}
	alias, err := alice.ResolveAlias(ctx, "#hall:localhost")
	if err != nil || alias.RoomID != newRoom {
		t.Fatalf("alias not moved: %+v %v", alias, err)
	}
	// The old room is closed to ordinary members, and bob can join the new one.
	if _, err := bob.SendText(ctx, old.RoomID, "still here?"); err == nil {
		t.Fatal("ordinary member can still post in the upgraded room")
	}
	if _, err := bob.JoinRoomByID(ctx, newRoom); err != nil {
		t.Fatalf("joining the replacement: %v", err)
	}
}

// A client written for older room versions lists the creator in a v12
// power_level_content_override; the room must still be created.
func TestV12OverrideListingCreator(t *testing.T) {
	srv := startAccounts(t, nil)
	ctx := context.Background()
	alice := registerUser(t, srv, "alice", "alice-password")
	resp, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{
		Preset:             "private_chat",
		PowerLevelOverride: &event.PowerLevelsEventContent{Users: map[id.UserID]int{alice.UserID: 100, "@bob:localhost": 50}},
	})
	if err != nil {
		t.Fatalf("createRoom: %v", err)
	}
	var pl event.PowerLevelsEventContent
	if err := alice.StateEvent(ctx, resp.RoomID, event.StatePowerLevels, "", &pl); err != nil {
		t.Fatal(err)
	}
	if _, listed := pl.Users[alice.UserID]; listed || pl.Users["@bob:localhost"] != 50 {
		t.Fatalf("users in power levels: %v", pl.Users)
	}
}
