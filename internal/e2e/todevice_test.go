package e2e

import (
	"context"
	"encoding/json"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// tdType is the to-device event type the tests send.
var tdType = event.Type{Type: "org.weft.test", Class: event.ToDeviceEventType}

// tdSend sends one to-device request with mautrix (its own transaction ID).
func tdSend(t *testing.T, from *mautrix.Client, msgs map[id.UserID]map[id.DeviceID]*event.Content) {
	t.Helper()
	if _, err := from.SendToDevice(context.Background(), tdType, &mautrix.ReqSendToDevice{Messages: msgs}); err != nil {
		t.Fatalf("sendToDevice: %v", err)
	}
}

// tdSendTxn sends one to-device request with a chosen transaction ID.
func tdSendTxn(t *testing.T, from *mautrix.Client, txn string, msgs map[id.UserID]map[id.DeviceID]*event.Content) {
	t.Helper()
	u := from.BuildClientURL("v3", "sendToDevice", tdType.Type, txn)
	if _, err := from.MakeRequest(context.Background(), "PUT", u, &mautrix.ReqSendToDevice{Messages: msgs}, nil); err != nil {
		t.Fatalf("sendToDevice %s: %v", txn, err)
	}
}

func tdContent(n int) *event.Content {
	return &event.Content{Raw: map[string]any{"n": n}}
}

// tdSync syncs with mautrix; since "" is an initial sync.
func tdSync(t *testing.T, cli *mautrix.Client, since string, timeout int) *mautrix.RespSync {
	t.Helper()
	resp, err := cli.FullSyncRequest(context.Background(), mautrix.ReqSync{Since: since, Timeout: timeout})
	if err != nil {
		t.Fatalf("%s/%s sync: %v", cli.UserID, cli.DeviceID, err)
	}
	return resp
}

// tdGot is the "n" of each to-device event of type tdType, checking the
// sender.
func tdGot(t *testing.T, resp *mautrix.RespSync, sender id.UserID) []int {
	t.Helper()
	var out []int
	for _, e := range resp.ToDevice.Events {
		if e.Type.Type != tdType.Type {
			continue
		}
		if e.Sender != sender {
			t.Fatalf("to-device event from %s, want %s", e.Sender, sender)
		}
		var c struct{ N int }
		if err := json.Unmarshal(e.Content.VeryRaw, &c); err != nil {
			t.Fatal(err)
		}
		out = append(out, c.N)
	}
	return out
}

// TestToDeviceWithMautrix drives send-to-device messaging with mautrix's
// client against the real binary: delivery to exactly the addressed
// device and to every device with "*", an idempotent transaction ID, a
// dropped sync response, and a long-poll woken by a message.
func TestToDeviceWithMautrix(t *testing.T) {
	srv := startAccounts(t, nil)
	ctx := context.Background()
	a1 := registerUser(t, srv, "alice", "alice password")
	a2 := loginWith(t, srv, "alice", "alice password")
	bob := registerUser(t, srv, "bob", "bob password")
	t1 := tdSync(t, a1, "", 0).NextBatch
	t2 := tdSync(t, a2, "", 0).NextBatch

	// Exactly the addressed device.
	tdSend(t, bob, map[id.UserID]map[id.DeviceID]*event.Content{a1.UserID: {a1.DeviceID: tdContent(1)}})
	r1 := tdSync(t, a1, t1, 0)
	if got := tdGot(t, r1, bob.UserID); !slices.Equal(got, []int{1}) {
		t.Fatalf("a1 got %v, want [1]", got)
	}
	r2 := tdSync(t, a2, t2, 0)
	if got := tdGot(t, r2, bob.UserID); len(got) != 0 {
		t.Fatalf("a2 got %v, addressed to a1", got)
	}
	t1, t2 = r1.NextBatch, r2.NextBatch

	// "*": every device of the user.
	tdSend(t, bob, map[id.UserID]map[id.DeviceID]*event.Content{a1.UserID: {"*": tdContent(2)}})
	r1, r2 = tdSync(t, a1, t1, 0), tdSync(t, a2, t2, 0)
	if g1, g2 := tdGot(t, r1, bob.UserID), tdGot(t, r2, bob.UserID); !slices.Equal(g1, []int{2}) || !slices.Equal(g2, []int{2}) {
		t.Fatalf("with *: a1 got %v, a2 got %v, want [2] each", g1, g2)
	}
	t1, t2 = r1.NextBatch, r2.NextBatch

	// The same transaction ID twice: sent once.
	tdSendTxn(t, bob, "fixed", map[id.UserID]map[id.DeviceID]*event.Content{a1.UserID: {a1.DeviceID: tdContent(3)}})
	tdSendTxn(t, bob, "fixed", map[id.UserID]map[id.DeviceID]*event.Content{a1.UserID: {a1.DeviceID: tdContent(3)}})
	lost := tdSync(t, a1, t1, 0)
	if got := tdGot(t, lost, bob.UserID); !slices.Equal(got, []int{3}) {
		t.Fatalf("after a retried request a1 got %v, want [3] once", got)
	}

	// That response is lost: the old token brings the message again,
	// the new one does not.
	again := tdSync(t, a1, t1, 0)
	if got := tdGot(t, again, bob.UserID); !slices.Equal(got, []int{3}) {
		t.Fatalf("syncing again with the old token got %v, want [3] again", got)
	}
	if got := tdGot(t, tdSync(t, a1, again.NextBatch, 0), bob.UserID); len(got) != 0 {
		t.Fatalf("with the new token: %v, want nothing", got)
	}
	if got := tdGot(t, tdSync(t, a1, t1, 0), bob.UserID); len(got) != 0 {
		t.Fatalf("after syncing past it the message is still there: %v", got)
	}
	t1 = again.NextBatch

	// A long-poll is woken by a message.
	type result struct {
		resp *mautrix.RespSync
		err  error
	}
	done := make(chan result, 1)
	go func() {
		resp, err := a2.FullSyncRequest(ctx, mautrix.ReqSync{Since: t2, Timeout: 30_000})
		done <- result{resp, err}
	}()
	time.Sleep(300 * time.Millisecond)
	tdSend(t, bob, map[id.UserID]map[id.DeviceID]*event.Content{a2.UserID: {a2.DeviceID: tdContent(4)}})
	select {
	case r := <-done:
		if r.err != nil {
			t.Fatal(r.err)
		}
		if got := tdGot(t, r.resp, bob.UserID); !slices.Equal(got, []int{4}) {
			t.Fatalf("woken long-poll got %v, want [4]", got)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("a to-device message did not wake the long-poll")
	}

	// The response's shape is the spec's; errors are the spec's.
	tdSend(t, bob, map[id.UserID]map[id.DeviceID]*event.Content{a1.UserID: {a1.DeviceID: tdContent(5)}})
	raw := doJSON(t, "GET", srv.URL+"/_matrix/client/v3/sync?since="+url.QueryEscape(t1), a1.AccessToken, nil)
	raw.wantOK(t)
	specValidate(t, raw.Body, "sync.yaml", "/sync", "get", "200")
	evs, _ := dig(raw.Body, "to_device", "events").([]any)
	if len(evs) != 1 || strings.Join(sortedKeys(evs[0].(map[string]any)), ",") != "content,sender,type" {
		t.Fatalf("to_device events %v: want one with exactly content, sender, type", evs)
	}
	if _, ok := raw.Body["device_unused_fallback_key_types"].([]any); !ok {
		t.Fatalf("device_unused_fallback_key_types missing: %s", raw.Raw)
	}
	bad := doJSON(t, "PUT", clientURL(srv, "v3", "sendToDevice", "m.test", "bad"), bob.AccessToken,
		map[string]any{"messages": map[string]any{string(a1.UserID): map[string]any{"*": []int{1}}}})
	bad.wantErr(t, 400, "M_BAD_JSON")
	specValidateErr(t, bad)
	ok := doJSON(t, "PUT", clientURL(srv, "r0", "sendToDevice", "m.test", "r0"), bob.AccessToken, map[string]any{"messages": map[string]any{}})
	ok.wantOK(t)
	specValidate(t, ok.Body, "to_device.yaml", "/sendToDevice/{eventType}/{txnId}", "put", "200")

	// The dropped-message counter is exported.
	metrics := doJSON(t, "GET", srv.URL+"/metrics", "", nil)
	if !strings.Contains(string(metrics.Raw), "\nweft_to_device_dropped_total 0\n") {
		t.Fatal("/metrics has no weft_to_device_dropped_total")
	}
}

func sortedKeys(m map[string]any) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
