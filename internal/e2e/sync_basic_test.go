package e2e

import (
	"context"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// TestSyncBasics: an initial sync shows a joined room with its state and
// timeline; a long-poll wakes on a message from another user; typing
// reaches the other member.
func TestSyncBasics(t *testing.T) {
	srv := startAccounts(t, nil)
	ctx := context.Background()
	alice := registerUser(t, srv, "alice", "correct horse battery")
	bob := registerUser(t, srv, "bob", "correct horse battery")
	roomID := createRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat", Name: "Sync room"})
	joinRoom(t, bob, roomID)
	if _, err := alice.SendText(ctx, roomID, "hello"); err != nil {
		t.Fatal(err)
	}

	first, err := bob.SyncRequest(ctx, 0, "", "", false, event.PresenceOnline)
	if err != nil {
		t.Fatal(err)
	}
	jr, ok := first.Rooms.Join[roomID]
	if !ok {
		t.Fatalf("initial sync has no joined room %s", roomID)
	}
	if got := bodies(jr.Timeline.Events); len(got) != 1 || got[0] != "hello" {
		t.Fatalf("timeline bodies = %v, want [hello]", got)
	}
	haveName := false
	for _, e := range append(jr.State.Events, jr.Timeline.Events...) {
		haveName = haveName || e.Type == event.StateRoomName
	}
	if !haveName {
		t.Fatal("no m.room.name in state or timeline")
	}

	// Long-poll; alice sends while bob waits.
	type result struct {
		resp *mautrix.RespSync
		err  error
	}
	done := make(chan result, 1)
	go func() {
		r, err := bob.SyncRequest(ctx, 20000, first.NextBatch, "", false, event.PresenceOnline)
		done <- result{r, err}
	}()
	time.Sleep(200 * time.Millisecond)
	if _, err := alice.SendText(ctx, roomID, "second"); err != nil {
		t.Fatal(err)
	}
	var next *mautrix.RespSync
	select {
	case r := <-done:
		if r.err != nil {
			t.Fatal(r.err)
		}
		next = r.resp
	case <-time.After(10 * time.Second):
		t.Fatal("long-poll did not wake on a new message")
	}
	if got := bodies(next.Rooms.Join[roomID].Timeline.Events); len(got) != 1 || got[0] != "second" {
		t.Fatalf("incremental timeline = %v, want [second]", got)
	}

	if _, err := alice.UserTyping(ctx, roomID, true, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	third, err := bob.SyncRequest(ctx, 5000, next.NextBatch, "", false, event.PresenceOnline)
	if err != nil {
		t.Fatal(err)
	}
	var typing []id.UserID
	for _, e := range third.Rooms.Join[roomID].Ephemeral.Events {
		if e.Type == event.EphemeralEventTyping {
			_ = e.Content.ParseRaw(e.Type)
			typing = e.Content.AsTyping().UserIDs
		}
	}
	if len(typing) != 1 || typing[0] != alice.UserID {
		t.Fatalf("typing = %v, want [%s]", typing, alice.UserID)
	}
}

// TestSyncTransactionID: the device that sent an event sees its
// transaction ID in unsigned; the same user's other device and other users
// do not.
func TestSyncTransactionID(t *testing.T) {
	srv := startAccounts(t, nil)
	ctx := context.Background()
	alice := registerUser(t, srv, "alice", "correct horse battery")
	other := loginWith(t, srv, "alice", "correct horse battery")
	bob := registerUser(t, srv, "bob", "correct horse battery")
	roomID := createRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	joinRoom(t, bob, roomID)
	sent, err := alice.SendMessageEvent(ctx, roomID, event.EventMessage, map[string]string{"msgtype": "m.text", "body": "hi"},
		mautrix.ReqSendEvent{TransactionID: "txn-123"})
	if err != nil {
		t.Fatal(err)
	}
	txnOf := func(cli *mautrix.Client) (string, bool) {
		t.Helper()
		resp, err := cli.SyncRequest(ctx, 0, "", "", false, event.PresenceOffline)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range resp.Rooms.Join[roomID].Timeline.Events {
			if e.ID == sent.EventID {
				return e.Unsigned.TransactionID, true
			}
		}
		return "", false
	}
	if txn, ok := txnOf(alice); !ok || txn != "txn-123" {
		t.Fatalf("sending device: transaction_id %q (event seen: %v), want txn-123", txn, ok)
	}
	for name, cli := range map[string]*mautrix.Client{"alice's other device": other, "bob": bob} {
		if txn, ok := txnOf(cli); !ok || txn != "" {
			t.Fatalf("%s: transaction_id %q (event seen: %v), want none", name, txn, ok)
		}
	}
}
