package e2e

import (
	"context"
	"slices"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// TestSyncLeavesOutIgnoredUsers: once a user lists someone in
// m.ignored_user_list, /sync (initial and incremental, on every device at
// once) leaves out that user's events other than state events, and their
// invites; un-ignoring them brings their new events back (spec, "Ignoring
// Users").
func TestSyncLeavesOutIgnoredUsers(t *testing.T) {
	srv := startAccounts(t, nil)
	ctx := context.Background()
	alice := registerUser(t, srv, "alice", "correct horse battery")
	bob := registerUser(t, srv, "bob", "correct horse battery")
	carol := registerUser(t, srv, "carol", "correct horse battery")
	// bob may set the topic.
	roomID := createRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat",
		PowerLevelOverride: &event.PowerLevelsEventContent{Users: map[id.UserID]int{alice.UserID: 100, bob.UserID: 50}}})
	joinRoom(t, bob, roomID)
	joinRoom(t, carol, roomID)
	// A second room, so the initial sync reads more than one room.
	other := createRoom(t, carol, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	joinRoom(t, alice, other)
	joinRoom(t, bob, other)
	since := syncWith(t, alice, "", "", 0).NextBatch

	ignore := func(users ...id.UserID) {
		t.Helper()
		list := map[string]any{}
		for _, u := range users {
			list[string(u)] = map[string]any{}
		}
		if err := alice.SetAccountData(ctx, "m.ignored_user_list", map[string]any{"ignored_users": list}); err != nil {
			t.Fatal(err)
		}
	}
	ignore(bob.UserID)
	hidden := syncSendText(t, bob, roomID, "you cannot see me")
	topic := syncSendState(t, bob, roomID, event.StateTopic, "", map[string]any{"topic": "bob's topic"})
	seen := syncSendText(t, carol, roomID, "carol speaks")
	hiddenOther := syncSendText(t, bob, other, "nor here")
	invited := createRoom(t, bob, &mautrix.ReqCreateRoom{Preset: "private_chat", Invite: []id.UserID{alice.UserID}})

	check := func(t *testing.T, resp *mautrix.RespSync, initial bool) {
		t.Helper()
		tl := syncEventIDs(resp.Rooms.Join[roomID].Timeline.Events)
		for _, e := range []id.EventID{hidden, hiddenOther} {
			if slices.Contains(tl, e) || slices.Contains(syncEventIDs(resp.Rooms.Join[other].Timeline.Events), e) {
				t.Fatalf("an ignored user's message %s is in the timeline", e)
			}
		}
		if !slices.Contains(tl, seen) {
			t.Fatalf("carol's message is missing: %v", tl)
		}
		// Their state events still come, in the timeline (or, for an
		// initial sync with a short timeline, the state).
		state := syncEventIDs(resp.Rooms.Join[roomID].State.Events)
		if !slices.Contains(tl, topic) && !(initial && slices.Contains(state, topic)) {
			t.Fatalf("the ignored user's topic is missing: timeline %v, state %v", tl, state)
		}
		if _, ok := resp.Rooms.Invite[invited]; ok {
			t.Fatal("an invite from an ignored user is shown")
		}
	}
	t.Run("incremental", func(t *testing.T) { check(t, syncWith(t, alice, since, "", 0), false) })
	t.Run("initial", func(t *testing.T) { check(t, syncWith(t, alice, "", "", 0), true) })
	t.Run("initial_lazy", func(t *testing.T) {
		check(t, syncWith(t, alice, "", `{"room":{"timeline":{"limit":3},"state":{"lazy_load_members":true}}}`, 0), true)
	})
	t.Run("another_device", func(t *testing.T) {
		phone := loginWith(t, srv, "alice", "correct horse battery")
		check(t, syncWith(t, phone, "", "", 0), true)
	})

	// Un-ignored: bob's new messages arrive again.
	next := syncWith(t, alice, "", "", 0).NextBatch
	ignore()
	back := syncSendText(t, bob, roomID, "back again")
	if tl := syncEventIDs(syncWith(t, alice, next, "", 0).Rooms.Join[roomID].Timeline.Events); !slices.Contains(tl, back) {
		t.Fatalf("after un-ignoring, bob's message is missing: %v", tl)
	}
	resp := syncWith(t, alice, "", "", 0)
	if _, ok := resp.Rooms.Invite[invited]; !ok {
		t.Fatal("after un-ignoring, bob's invite is not shown")
	}
}
