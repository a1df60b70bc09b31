package room_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"

	"github.com/weftchat/weft/room"
)

// TestAuthMemoFollowsTheRoomState: once the auth rules allowed a sender's
// messages, the room service remembers it (authmemo.go). A change to the
// power levels or to the sender's membership must still be obeyed by the
// very next message of the same sender and type, in every room version.
func TestAuthMemoFollowsTheRoomState(t *testing.T) {
	h := newHarness(t, 4)
	ctx := context.Background()
	alice, bob := user("alice"), user("bob")
	for _, v := range []id.RoomVersion{id.RoomV10, id.RoomV11, id.RoomV12} {
		t.Run(string(v), func(t *testing.T) {
			rid, err := h.rooms.Create(ctx, room.CreateParams{Creator: alice, Preset: "public_chat", RoomVersion: v})
			if err != nil {
				t.Fatal(err)
			}
			if err := h.rooms.Join(ctx, room.MembershipParams{Sender: bob, RoomID: rid, Target: bob}); err != nil {
				t.Fatal(err)
			}
			n := 0
			send := func() error {
				n++
				_, err := h.rooms.Send(ctx, room.SendParams{Sender: bob, Device: "DEV", RoomID: rid, Type: "m.room.message",
					TxnID: fmt.Sprintf("memo-%s-%d", v, n), Content: textContent("hello")})
				return err
			}
			forbidden := func(what string) {
				t.Helper()
				var re mautrix.RespError
				if err := send(); !errors.As(err, &re) || re.ErrCode != mautrix.MForbidden.ErrCode {
					t.Fatalf("%s: bob's message: got %v, want M_FORBIDDEN", what, err)
				}
			}
			levels := func(eventsDefault int) {
				t.Helper()
				// Alice holds 100 in v10 and v11; in v12 she is the creator
				// and is left out of users.
				users := fmt.Sprintf(`{%q: 100}`, alice)
				if v == id.RoomV12 {
					users = `{}`
				}
				content := fmt.Sprintf(`{"users": %s, "users_default": 0, "events_default": %d, "state_default": 50}`, users, eventsDefault)
				if _, err := h.rooms.SetState(ctx, alice, rid, "m.room.power_levels", "", json.RawMessage(content)); err != nil {
					t.Fatal(err)
				}
			}
			for range 3 { // allowed, then allowed from the memo
				if err := send(); err != nil {
					t.Fatal(err)
				}
			}
			levels(50)
			forbidden("after events_default went above bob's level")
			levels(0)
			if err := send(); err != nil {
				t.Fatalf("after events_default came back down: %v", err)
			}
			if err := h.rooms.Ban(ctx, room.MembershipParams{Sender: alice, RoomID: rid, Target: bob}); err != nil {
				t.Fatal(err)
			}
			forbidden("after bob was banned")
		})
	}
}
