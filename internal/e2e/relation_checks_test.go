package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sync"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// What the server refuses when a client sends a relation (threading.md
// "Validation of m.thread relationships", event_annotations.md "Avoiding
// duplicate annotations"), and whose relations /event bundles.

// relTrySend sends with mautrix and returns the error.
func relTrySend(cli *mautrix.Client, roomID id.RoomID, typ string, content map[string]any) (id.EventID, error) {
	resp, err := cli.SendMessageEvent(context.Background(), roomID, event.Type{Type: typ, Class: event.MessageEventType}, content)
	if err != nil {
		return "", err
	}
	return resp.EventID, nil
}

// relEncrypted is an m.room.encrypted content with a relation in the
// clear, as clients send encrypted replies and reactions.
func relEncrypted(relType string, parent id.EventID) map[string]any {
	return map[string]any{
		"algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "AwgAEn...", "device_id": "DEV",
		"sender_key": "c2VuZGVy", "session_id": "c2Vzc2lvbg",
		"m.relates_to": map[string]any{"rel_type": relType, "event_id": parent},
	}
}

// A thread cannot start from an event that is itself a relation: 400
// M_UNKNOWN (the spec has no errcode for it), and nothing is stored.
func TestThreadFromRelationRefused(t *testing.T) {
	t.Parallel()
	srv := startAccounts(t, nil)
	ctx := context.Background()
	alice := registerUser(t, srv, "alice", "alice-password")
	bob := registerUser(t, srv, "bob", "bob-password")
	roomID := relRoom(t, alice, bob)

	root := relSend(t, alice, roomID, "m.room.message", relText("root"))
	inThread := relSend(t, bob, roomID, "m.room.message", relChild("in the thread", "m.thread", root))
	edit := relSend(t, alice, roomID, "m.room.message", relEdit("root, edited", root))
	reaction := relSend(t, bob, roomID, "m.reaction", relReaction(root, "👍"))
	ref := relSend(t, alice, roomID, "org.example.ref", map[string]any{"m.relates_to": map[string]any{"rel_type": "m.reference", "event_id": root}})

	for name, parent := range map[string]id.EventID{"thread reply": inThread, "edit": edit, "reaction": reaction, "reference": ref} {
		_, err := relTrySend(bob, roomID, "m.room.message", relChild("thread off a "+name, "m.thread", parent))
		wantHTTPErr(t, err, 400, "M_UNKNOWN")
		// The relation is in the clear in encrypted events too.
		_, err = relTrySend(bob, roomID, "m.room.encrypted", relEncrypted("m.thread", parent))
		wantHTTPErr(t, err, 400, "M_UNKNOWN")
		// Nothing was appended.
		r := relGet(t, alice, relURL(srv, roomID, "relations", string(parent), "m.thread"))
		r.wantOK(t)
		wantIDs(t, "thread children of the "+name, relChunkIDs(t, r.Body))
	}
	// The raw answer is a standard error response.
	r := doJSON(t, http.MethodPut, clientURL(srv, "v3", "rooms", string(roomID), "send", "m.room.message", "raw-thread"), bob.AccessToken,
		relChild("thread off a thread reply", "m.thread", inThread))
	r.wantErr(t, 400, "M_UNKNOWN")
	if msg, _ := r.Body["error"].(string); msg == "" {
		t.Fatalf("no error message: %s", r.Raw)
	}
	specValidateErr(t, r)
	// Someone outside the room learns nothing of its events: the auth
	// rules refuse the send before anything is said about the parent.
	carol := registerUser(t, srv, "carol", "carol-password")
	_, err := relTrySend(carol, roomID, "m.room.message", relChild("not a member", "m.thread", inThread))
	wantHTTPErr(t, err, 403, "M_FORBIDDEN")

	// Threads from ordinary events are fine: the root, a rich reply (its
	// m.relates_to holds only m.in_reply_to, no relation), an event whose
	// relation was redacted away, and an event the server does not know
	// (it may arrive later over federation).
	reply := relText("a reply")
	reply["m.relates_to"] = map[string]any{"m.in_reply_to": map[string]any{"event_id": root}}
	richReply := relSend(t, bob, roomID, "m.room.message", reply)
	if _, err := alice.RedactEvent(ctx, roomID, ref); err != nil {
		t.Fatal(err)
	}
	for name, parent := range map[string]id.EventID{"root": root, "rich reply": richReply, "redacted reference": ref, "unknown event": "$unknown"} {
		if _, err := relTrySend(bob, roomID, "m.room.message", relChild("thread off the "+name, "m.thread", parent)); err != nil {
			t.Fatalf("thread off the %s: %v", name, err)
		}
	}
	// Other relations of relations stay allowed: reacting to a thread
	// reply, editing it, referencing it.
	relSend(t, alice, roomID, "m.reaction", relReaction(inThread, "👀"))
	relSend(t, bob, roomID, "m.room.message", relEdit("in the thread, edited", inThread))
}

// A second annotation by the same sender of the same event with the same
// event type and key is refused with 400 M_DUPLICATE_ANNOTATION, unless
// the first was redacted; a retry of the first send (same transaction ID)
// still answers the first event.
func TestDuplicateAnnotationRefused(t *testing.T) {
	t.Parallel()
	srv := startAccounts(t, nil)
	ctx := context.Background()
	alice := registerUser(t, srv, "alice", "alice-password")
	bob := registerUser(t, srv, "bob", "bob-password")
	roomID := relRoom(t, alice, bob)
	msg := relSend(t, alice, roomID, "m.room.message", relText("react to me"))
	other := relSend(t, alice, roomID, "m.room.message", relText("and to me"))

	sendURL := func(typ, txn string) string {
		return clientURL(srv, "v3", "rooms", string(roomID), "send", typ, txn)
	}
	first := doJSON(t, http.MethodPut, sendURL("m.reaction", "txn-1"), bob.AccessToken, relReaction(msg, "👍"))
	first.wantOK(t)
	// mautrix's own reaction call, with a fresh transaction ID.
	_, err := bob.SendReaction(ctx, roomID, msg, "👍")
	wantHTTPErr(t, err, 400, "M_DUPLICATE_ANNOTATION")
	dup := doJSON(t, http.MethodPut, sendURL("m.reaction", "txn-2"), bob.AccessToken, relReaction(msg, "👍"))
	dup.wantErr(t, 400, "M_DUPLICATE_ANNOTATION")
	specValidateErr(t, dup)
	// A retry is no duplicate: it answers the first event.
	retry := doJSON(t, http.MethodPut, sendURL("m.reaction", "txn-1"), bob.AccessToken, relReaction(msg, "👍"))
	retry.wantOK(t)
	if retry.Body["event_id"] != first.Body["event_id"] {
		t.Fatalf("retry answered %s, first send %s", retry.Raw, first.Raw)
	}
	r := relGet(t, alice, relURL(srv, roomID, "relations", string(msg), "m.annotation"))
	r.wantOK(t)
	wantIDs(t, "annotations after the refusals", relChunkIDs(t, r.Body), id.EventID(first.Body["event_id"].(string)))

	// Any difference makes a new annotation: the key, the sender, the
	// target, the event type.
	relSend(t, bob, roomID, "m.reaction", relReaction(msg, "🎉"))
	relSend(t, alice, roomID, "m.reaction", relReaction(msg, "👍"))
	relSend(t, bob, roomID, "m.reaction", relReaction(other, "👍"))
	relSend(t, bob, roomID, "org.example.vote", relReaction(msg, "👍"))
	_, err = relTrySend(bob, roomID, "org.example.vote", relReaction(msg, "👍"))
	wantHTTPErr(t, err, 400, "M_DUPLICATE_ANNOTATION")
	// Encrypted annotations carry no key in the clear: nothing to compare.
	relSend(t, bob, roomID, "m.room.encrypted", relEncrypted("m.annotation", msg))
	relSend(t, bob, roomID, "m.room.encrypted", relEncrypted("m.annotation", msg))

	// Once the first is redacted, the same reaction may be sent again.
	if _, err := bob.RedactEvent(ctx, roomID, id.EventID(first.Body["event_id"].(string))); err != nil {
		t.Fatal(err)
	}
	again := relSend(t, bob, roomID, "m.reaction", relReaction(msg, "👍"))
	_, err = bob.SendReaction(ctx, roomID, msg, "👍")
	wantHTTPErr(t, err, 400, "M_DUPLICATE_ANNOTATION")
	r = relGet(t, alice, relURL(srv, roomID, "relations", string(msg), "m.annotation", "m.reaction")+"?limit=50")
	r.wantOK(t)
	found := false
	for _, e := range relChunkIDs(t, r.Body) {
		if e == id.EventID(first.Body["event_id"].(string)) {
			t.Fatalf("the redacted reaction is still a relation: %s", r.Raw)
		}
		found = found || e == again
	}
	if !found {
		t.Fatalf("the reaction sent again is missing: %s", r.Raw)
	}

	// Racing sends (another device, a double click) store one annotation:
	// the check runs under the room's lock, so sends in the same batch see
	// each other.
	const racers = 8
	var wg sync.WaitGroup
	codes := make([]rawResponse, racers)
	for i := range racers {
		wg.Go(func() {
			codes[i] = relPutRaw(sendURL("m.reaction", fmt.Sprint("race-", i)), bob.AccessToken, relReaction(other, "🔥"))
		})
	}
	wg.Wait()
	ok := 0
	for i, c := range codes {
		switch {
		case c.Status == http.StatusOK:
			ok++
		case c.Status == 400 && c.Body["errcode"] == "M_DUPLICATE_ANNOTATION":
		default:
			t.Fatalf("racer %d: %d %s", i, c.Status, c.Raw)
		}
	}
	if ok != 1 {
		t.Fatalf("%d of %d racing duplicate reactions were stored, want 1", ok, racers)
	}
	r = relGet(t, alice, relURL(srv, roomID, "relations", string(other), "m.annotation", "m.reaction")+"?limit=50")
	r.wantOK(t)
	if n := len(relChunkIDs(t, r.Body)); n != 2 { // bob's 👍 and one 🔥
		t.Fatalf("%d reactions on the other message, want 2: %s", n, r.Raw)
	}
}

// relPutRaw is a PUT for goroutines, which must not call t.Fatal: a
// transport failure comes back as status 0 with the error as Raw.
func relPutRaw(u, token string, body any) rawResponse {
	raw, _ := json.Marshal(body)
	req, err := http.NewRequest(http.MethodPut, u, bytes.NewReader(raw))
	if err != nil {
		return rawResponse{Raw: []byte(err.Error())}
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return rawResponse{Raw: []byte(err.Error())}
	}
	defer resp.Body.Close()
	out := rawResponse{Status: resp.StatusCode, Header: resp.Header}
	out.Raw, _ = io.ReadAll(resp.Body)
	_ = json.Unmarshal(out.Raw, &out.Body)
	return out
}

// GET /event bundles aggregations without the reader's ignored users'
// children, as /messages does.
func TestEventAggregationsLeaveOutIgnoredUsers(t *testing.T) {
	t.Parallel()
	srv := startAccounts(t, nil)
	alice := registerUser(t, srv, "alice", "alice-password")
	bob := registerUser(t, srv, "bob", "bob-password")
	carol := registerUser(t, srv, "carol", "carol-password")
	roomID := relRoom(t, alice, bob, carol)

	root := relSend(t, alice, roomID, "m.room.message", relText("root"))
	aliceReply := relSend(t, alice, roomID, "m.room.message", relChild("alice replies", "m.thread", root))
	bobReply := relSend(t, bob, roomID, "m.room.message", relChild("bob replies", "m.thread", root))
	aliceRef := relSend(t, alice, roomID, "org.example.ref", map[string]any{"m.relates_to": map[string]any{"rel_type": "m.reference", "event_id": root}})
	relSend(t, bob, roomID, "org.example.ref", map[string]any{"m.relates_to": map[string]any{"rel_type": "m.reference", "event_id": root}})

	check := func(what string, ev map[string]any, count int, latest id.EventID, refs int) {
		t.Helper()
		rels := dig(ev, "unsigned", "m.relations")
		if dig(rels, "m.thread", "count") != float64(count) || dig(rels, "m.thread", "latest_event", "event_id") != string(latest) {
			t.Fatalf("%s: m.thread = %v, want count %d latest %s", what, dig(rels, "m.thread"), count, latest)
		}
		chunk, _ := dig(rels, "m.reference", "chunk").([]any)
		if len(chunk) != refs {
			t.Fatalf("%s: m.reference = %v, want %d", what, dig(rels, "m.reference"), refs)
		}
	}
	check("before ignoring", relEvent(t, srv, carol, roomID, root), 2, bobReply, 2)

	relIgnore(t, carol, bob.UserID)
	ev := relEvent(t, srv, carol, roomID, root)
	check("/event, bob ignored", ev, 1, aliceReply, 1)
	if dig(ev, "unsigned", "m.relations", "m.reference", "chunk").([]any)[0].(map[string]any)["event_id"] != string(aliceRef) {
		t.Fatalf("the reference left is not alice's: %v", dig(ev, "unsigned", "m.relations"))
	}
	// The same as /messages shows carol.
	msgs := doJSON(t, http.MethodGet, srv.URL+"/_matrix/client/v3/rooms/"+url.PathEscape(string(roomID))+"/messages?dir=b&limit=50", carol.AccessToken, nil)
	msgs.wantOK(t)
	check("/messages, bob ignored", relFind(t, msgs.Body, "chunk", root), 1, aliceReply, 1)
	// mautrix reads it.
	got, err := carol.GetEvent(context.Background(), roomID, root)
	if err != nil || got.ID != root {
		t.Fatalf("mautrix GetEvent: %v %v", got, err)
	}
	// Other readers are unaffected.
	check("alice's view", relEvent(t, srv, alice, roomID, root), 2, bobReply, 2)
	// Unignoring brings bob back.
	relIgnore(t, carol)
	check("after unignoring", relEvent(t, srv, carol, roomID, root), 2, bobReply, 2)
}
