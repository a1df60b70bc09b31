package room_test

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"testing"

	"maunium.net/go/mautrix/id"

	"github.com/weftchat/weft/push"
	"github.com/weftchat/weft/room"
)

// pushRow is one event_push_actions row as the test reads it.
type pushRow struct {
	User      id.UserID
	Thread    string
	Highlight bool
	// AtEvent: the row's position is its event's stream position.
	AtEvent bool
}

func (h *harness) pushRows(t testing.TB, eventID id.EventID) []pushRow {
	t.Helper()
	rows, err := h.pool.Query(context.Background(), `SELECT a.user_id, a.thread_id, a.highlight, a.stream_pos = e.stream_pos
		FROM event_push_actions a JOIN events e USING (event_id) WHERE a.event_id = $1 ORDER BY a.user_id`, eventID)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []pushRow
	for rows.Next() {
		var r pushRow
		if err := rows.Scan(&r.User, &r.Thread, &r.Highlight, &r.AtEvent); err != nil {
			t.Fatal(err)
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// wantPush checks who an event notified (thread "main" unless given) and
// who of them it highlighted.
func (h *harness) wantPush(t testing.TB, what string, eventID id.EventID, thread string, notified []id.UserID, highlighted ...id.UserID) {
	t.Helper()
	got := h.pushRows(t, eventID)
	var users []id.UserID
	for _, r := range got {
		users = append(users, r.User)
		if !r.AtEvent {
			t.Errorf("%s: %s's row is not at the event's stream position", what, r.User)
		}
		if r.Thread != thread {
			t.Errorf("%s: %s's row has thread %q, want %q", what, r.User, r.Thread, thread)
		}
		if r.Highlight != slices.Contains(highlighted, r.User) {
			t.Errorf("%s: %s highlighted = %v", what, r.User, r.Highlight)
		}
	}
	slices.Sort(notified)
	if !slices.Equal(users, notified) {
		t.Errorf("%s: notified %v, want %v", what, users, notified)
	}
}

func (h *harness) send(t testing.TB, sender id.UserID, roomID id.RoomID, typ string, content any) id.EventID {
	t.Helper()
	raw, err := json.Marshal(content)
	if err != nil {
		t.Fatal(err)
	}
	h.txn++
	eid, err := h.rooms.Send(context.Background(), room.SendParams{Sender: sender, Device: "D", RoomID: roomID, Type: typ, TxnID: fmt.Sprint(h.txn), Content: raw})
	if err != nil {
		t.Fatalf("sending %s: %v", typ, err)
	}
	return eid
}

func (h *harness) lastEvent(t testing.TB, roomID id.RoomID) id.EventID {
	t.Helper()
	var eid id.EventID
	if err := h.pool.QueryRow(context.Background(), `SELECT event_id FROM events WHERE room_id = $1 ORDER BY stream_pos DESC LIMIT 1`, roomID).Scan(&eid); err != nil {
		t.Fatal(err)
	}
	return eid
}

// TestPushRowsWrittenWithEvent: every new event is evaluated against the
// push rules of the room's local members, the sender excepted, and the
// notifications are stored with the event, at its stream position; the
// members evaluated follow joins, invites and leaves.
func TestPushRowsWrittenWithEvent(t *testing.T) {
	h := newHarness(t, 10)
	h.rooms.SetPushRules(push.NewService(h.db.PushRules(), nil))
	ctx := context.Background()
	alice, bob, carol, dave := user("alice"), user("bob"), user("carol"), user("dave")
	roomID, err := h.rooms.Create(ctx, room.CreateParams{Creator: alice, Preset: "public_chat"})
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range []id.UserID{bob, carol} {
		if err := h.rooms.Join(ctx, room.MembershipParams{Sender: u, RoomID: roomID}); err != nil {
			t.Fatal(err)
		}
	}
	text := func(body string) map[string]any { return map[string]any{"msgtype": "m.text", "body": body} }

	hello := h.send(t, alice, roomID, "m.room.message", text("hello"))
	h.wantPush(t, "plain message", hello, "main", []id.UserID{bob, carol})

	mention := h.send(t, alice, roomID, "m.room.message", map[string]any{"msgtype": "m.text", "body": "look",
		"m.mentions": map[string]any{"user_ids": []id.UserID{bob}}})
	h.wantPush(t, "mention", mention, "main", []id.UserID{bob, carol}, bob)

	// localpartProfiles makes "carol" carol's display name.
	byName := h.send(t, bob, roomID, "m.room.message", text("thanks carol!"))
	h.wantPush(t, "display name in body", byName, "main", []id.UserID{alice, carol}, carol)

	notice := h.send(t, alice, roomID, "m.room.message", map[string]any{"msgtype": "m.notice", "body": "bot"})
	h.wantPush(t, "notice", notice, "main", nil)

	inThread := h.send(t, carol, roomID, "m.room.message", map[string]any{"msgtype": "m.text", "body": "in thread",
		"m.relates_to": map[string]any{"rel_type": "m.thread", "event_id": hello}})
	h.wantPush(t, "thread reply", inThread, string(hello), []id.UserID{alice, bob})
	// A reference to a thread event belongs to the thread (one hop).
	ref := h.send(t, bob, roomID, "m.room.message", map[string]any{"msgtype": "m.text", "body": "see above",
		"m.relates_to": map[string]any{"rel_type": "m.reference", "event_id": inThread}})
	h.wantPush(t, "reference into a thread", ref, string(hello), []id.UserID{alice, carol})

	if err := h.rooms.Invite(ctx, room.MembershipParams{Sender: alice, RoomID: roomID, Target: dave}); err != nil {
		t.Fatal(err)
	}
	h.wantPush(t, "invite", h.lastEvent(t, roomID), "main", []id.UserID{dave})
	if err := h.rooms.Join(ctx, room.MembershipParams{Sender: dave, RoomID: roomID}); err != nil {
		t.Fatal(err)
	}
	h.wantPush(t, "join (member events do not notify)", h.lastEvent(t, roomID), "main", nil)
	afterJoin := h.send(t, alice, roomID, "m.room.message", text("welcome"))
	h.wantPush(t, "after a join", afterJoin, "main", []id.UserID{bob, carol, dave})

	if err := h.rooms.Leave(ctx, room.MembershipParams{Sender: bob, RoomID: roomID}); err != nil {
		t.Fatal(err)
	}
	afterLeave := h.send(t, alice, roomID, "m.room.message", text("bye"))
	h.wantPush(t, "after a leave", afterLeave, "main", []id.UserID{carol, dave})

	// A new display name is a new member event of carol's, but her
	// membership began before: her notifications stay.
	if _, err := h.rooms.SetState(ctx, carol, roomID, "m.room.member", string(carol),
		json.RawMessage(`{"membership":"join","displayname":"Carol C"}`)); err != nil {
		t.Fatal(err)
	}
	// Notifications are read through the view: the first message is now
	// only carol's (bob left; dave joined after it).
	h.wantPush(t, "plain message, read again", hello, "main", []id.UserID{carol})
	renamed := h.send(t, alice, roomID, "m.room.message", text("hi Carol C"))
	h.wantPush(t, "the new display name", renamed, "main", []id.UserID{carol, dave}, carol)

	// A second service over the same database (as after a restart) starts
	// with no cached members and reads them.
	h2 := *h
	h2.rooms = room.New(room.Config{Signer: h.signer}, h.store, localpartProfiles{}, nil)
	h2.rooms.SetPushRules(push.NewService(h.db.PushRules(), nil))
	restarted := h2.send(t, carol, roomID, "m.room.message", text("still here"))
	h.wantPush(t, "after a restart", restarted, "main", []id.UserID{alice, dave})
}

// TestPushRulesChangeEvaluation: a user's rule written through the push
// service applies to the next event: a room rule with no actions mutes
// the room, and deleting it unmutes.
func TestPushRulesChangeEvaluation(t *testing.T) {
	h := newHarness(t, 10)
	rules := push.NewService(h.db.PushRules(), nil)
	h.rooms.SetPushRules(rules)
	ctx := context.Background()
	alice, bob, carol, dave := user("alice"), user("bob"), user("carol"), user("dave")
	// Account data belongs to an account.
	if _, err := h.pool.Exec(ctx, `INSERT INTO users (user_id, localpart) VALUES ($1, $2)`, bob, bob.Localpart()); err != nil {
		t.Fatal(err)
	}
	roomID, err := h.rooms.Create(ctx, room.CreateParams{Creator: alice, Preset: "public_chat"})
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range []id.UserID{bob, carol, dave} {
		if err := h.rooms.Join(ctx, room.MembershipParams{Sender: u, RoomID: roomID}); err != nil {
			t.Fatal(err)
		}
	}
	text := map[string]any{"msgtype": "m.text", "body": "hi"}
	h.wantPush(t, "before muting", h.send(t, alice, roomID, "m.room.message", text), "main", []id.UserID{bob, carol, dave})
	if err := rules.PutRule(ctx, bob, "global", "room", string(roomID), "", "", json.RawMessage(`{"actions":[]}`)); err != nil {
		t.Fatal(err)
	}
	muted := h.send(t, alice, roomID, "m.room.message", text)
	h.wantPush(t, "muted", muted, "main", []id.UserID{carol, dave})
	// Stored as the summary (carol, dave) and bob's exception.
	var summaries, exceptions int
	if err := h.pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM event_push_summary WHERE event_id = $1),
		(SELECT count(*) FROM event_push_exceptions WHERE event_id = $1 AND user_id = $2 AND NOT notify)`, muted, bob).Scan(&summaries, &exceptions); err != nil {
		t.Fatal(err)
	}
	if summaries != 1 || exceptions != 1 {
		t.Errorf("muted: %d summary rows and %d exceptions for bob, want 1 and 1", summaries, exceptions)
	}
	if err := rules.DeleteRule(ctx, bob, "global", "room", string(roomID)); err != nil {
		t.Fatal(err)
	}
	h.wantPush(t, "unmuted", h.send(t, alice, roomID, "m.room.message", text), "main", []id.UserID{bob, carol, dave})
}
