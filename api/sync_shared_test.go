package api_test

import (
	"context"
	"fmt"
	"reflect"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// TestUserDevicesShareAnswers: devices of one user waiting with the same
// token are answered from one shared response (syncapi/shared.go), and
// each still gets exactly its own to-device messages, transaction IDs and
// key counts.
func TestUserDevicesShareAnswers(t *testing.T) {
	st := newTDStack(t, tdOpts{})
	alice := st.user(t, "alice", 3)
	bob := st.user(t, "bob", 1)[0]
	counts := map[id.DeviceID]int{}
	for i, d := range alice {
		counts[d.DeviceID] = 10 + i
	}
	f := func(_ id.UserID, dev id.DeviceID) (map[id.KeyAlgorithm]int, []id.KeyAlgorithm) {
		return map[id.KeyAlgorithm]int{id.KeyAlgorithmSignedCurve25519: counts[dev]}, nil
	}
	st.counts.Store(&f)
	roomID := createTDRoom(t, alice[0], false)
	if _, err := bob.JoinRoomByID(context.Background(), roomID); err != nil {
		t.Fatal(err)
	}
	since := st.sync(t, alice[0], "", 0)["next_batch"].(string)

	// waitAll syncs every device of alice from since at once, runs act
	// (once they wait, with a timeout; before, without), and returns
	// their answers.
	waitAll := func(longPoll bool, act func()) []map[string]any {
		t.Helper()
		timeout := 0
		if longPoll {
			timeout = 20_000
		} else {
			act()
		}
		out := make([]chan map[string]any, len(alice))
		for i, cli := range alice {
			out[i] = make(chan map[string]any, 1)
			go func() { out[i] <- st.sync(t, cli, since, timeout) }()
		}
		if longPoll {
			time.Sleep(300 * time.Millisecond) // let them park
			act()
		}
		answers := make([]map[string]any, len(alice))
		for i := range out {
			select {
			case answers[i] = <-out[i]:
			case <-time.After(15 * time.Second):
				t.Fatalf("device %d was not woken", i)
			}
		}
		for i, a := range answers {
			want := fmt.Sprintf("map[signed_curve25519:%d]", counts[alice[i].DeviceID])
			if got := fmt.Sprint(a["device_one_time_keys_count"]); got != want {
				t.Fatalf("device %d has the key counts %s, want %s", i, got, want)
			}
		}
		since = answers[0]["next_batch"].(string)
		return answers
	}
	timelineOf := func(a map[string]any) []any {
		join, _ := a["rooms"].(map[string]any)["join"].(map[string]any)
		r, _ := join[string(roomID)].(map[string]any)
		evs, _ := r["timeline"].(map[string]any)["events"].([]any)
		return evs
	}

	// Bob's message: every device gets the same rooms and token.
	answers := waitAll(true, func() {
		if _, err := bob.SendText(context.Background(), roomID, "hello"); err != nil {
			t.Fatal(err)
		}
	})
	for i, a := range answers {
		if evs := timelineOf(a); len(evs) != 1 || evs[0].(map[string]any)["content"].(map[string]any)["body"] != "hello" {
			t.Fatalf("device %d got the timeline %v", i, evs)
		}
		if a["next_batch"] != answers[0]["next_batch"] {
			t.Fatalf("device %d got the token %v, device 0 %v", i, a["next_batch"], answers[0]["next_batch"])
		}
		unsigned := timelineOf(a)[0].(map[string]any)["unsigned"].(map[string]any)
		delete(unsigned, "age")
		if i > 0 && !reflect.DeepEqual(a["rooms"], answers[0]["rooms"]) {
			t.Fatalf("device %d got other rooms:\n%v\n%v", i, a["rooms"], answers[0]["rooms"])
		}
	}

	// The three woke together at one position with one token: two of
	// them took the first one's build.
	if n := st.syncs.SharedAnswers(); n < 1 {
		t.Fatalf("%d answers shared: every device built its own", n)
	}

	// Alice's own message from device 0: only device 0 gets its
	// transaction ID.
	answers = waitAll(true, func() {
		if _, err := alice[0].SendMessageEvent(context.Background(), roomID, event.EventMessage,
			map[string]any{"msgtype": "m.text", "body": "mine"}, mautrix.ReqSendEvent{TransactionID: "txn-shared"}); err != nil {
			t.Fatal(err)
		}
	})
	for i, a := range answers {
		evs := timelineOf(a)
		if len(evs) != 1 {
			t.Fatalf("device %d got the timeline %v", i, evs)
		}
		txn, has := evs[0].(map[string]any)["unsigned"].(map[string]any)["transaction_id"]
		if i == 0 && txn != "txn-shared" || i > 0 && has {
			t.Fatalf("device %d got the transaction ID %v (has: %v)", i, txn, has)
		}
	}

	// A to-device message for device 1 only and a message for all, both
	// in the window of syncs made together: every device gets the
	// message, only device 1 the to-device message.
	answers = waitAll(false, func() {
		st.send(t, bob, "m.test", "td-shared", map[id.UserID]map[id.DeviceID]any{alice[0].UserID: {alice[1].DeviceID: map[string]any{"n": 5}}})
		if _, err := bob.SendText(context.Background(), roomID, "after"); err != nil {
			t.Fatal(err)
		}
	})
	for i, a := range answers {
		n := tdNumbers(toDevice(a))
		if i == 1 && fmt.Sprint(n) != "[5]" || i != 1 && len(n) != 0 {
			t.Fatalf("device %d got the to-device messages %v", i, n)
		}
		if evs := timelineOf(a); len(evs) != 1 {
			t.Fatalf("device %d got the timeline %v", i, evs)
		}
	}
}
