package e2e

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// Event relationships, bundled aggregations and threads, through the real
// binary: mautrix sends, raw requests read what mautrix's types would hide.

// relRoom creates a private room of creator with the others joined.
func relRoom(t *testing.T, creator *mautrix.Client, others ...*mautrix.Client) id.RoomID {
	t.Helper()
	ctx := context.Background()
	var invite []id.UserID
	for _, o := range others {
		invite = append(invite, o.UserID)
	}
	resp, err := creator.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat", Invite: invite})
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range others {
		if _, err := o.JoinRoomByID(ctx, resp.RoomID); err != nil {
			t.Fatal(err)
		}
	}
	return resp.RoomID
}

// relSend sends a message event and returns its ID.
func relSend(t *testing.T, cli *mautrix.Client, roomID id.RoomID, typ string, content map[string]any) id.EventID {
	t.Helper()
	resp, err := cli.SendMessageEvent(context.Background(), roomID, event.Type{Type: typ, Class: event.MessageEventType}, content)
	if err != nil {
		t.Fatalf("sending %s: %v", typ, err)
	}
	return resp.EventID
}

func relText(body string) map[string]any { return map[string]any{"msgtype": "m.text", "body": body} }

// relChild is content relating to parent with relType.
func relChild(body, relType string, parent id.EventID) map[string]any {
	c := relText(body)
	c["m.relates_to"] = map[string]any{"rel_type": relType, "event_id": parent}
	return c
}

// relEdit is a replacement of target.
func relEdit(body string, target id.EventID) map[string]any {
	c := relChild("* "+body, "m.replace", target)
	c["m.new_content"] = relText(body)
	return c
}

func relReaction(target id.EventID, key string) map[string]any {
	return map[string]any{"m.relates_to": map[string]any{"rel_type": "m.annotation", "event_id": target, "key": key}}
}

// relGet is an authenticated GET of path (under the server URL).
func relGet(t *testing.T, srv *Server, cli *mautrix.Client, path string) rawResponse {
	t.Helper()
	return doJSON(t, http.MethodGet, srv.URL+path, cli.AccessToken, nil)
}

func relPath(roomID id.RoomID, rest ...string) string {
	p := "/_matrix/client/v1/rooms/" + url.PathEscape(string(roomID))
	for _, r := range rest {
		p += "/" + url.PathEscape(r)
	}
	return p
}

// relEvent fetches one event as JSON with /event.
func relEvent(t *testing.T, srv *Server, cli *mautrix.Client, roomID id.RoomID, eventID id.EventID) map[string]any {
	t.Helper()
	r := doJSON(t, http.MethodGet, srv.URL+"/_matrix/client/v3/rooms/"+url.PathEscape(string(roomID))+"/event/"+url.PathEscape(string(eventID)), cli.AccessToken, nil)
	r.wantOK(t)
	return r.Body
}

// relDig walks nested JSON objects.
func relDig(v any, keys ...string) any {
	for _, k := range keys {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = m[k]
	}
	return v
}

// relChunkIDs lists the event IDs of a response's chunk.
func relChunkIDs(t *testing.T, body map[string]any) []id.EventID {
	t.Helper()
	chunk, ok := body["chunk"].([]any)
	if !ok {
		t.Fatalf("no chunk in %v", body)
	}
	out := []id.EventID{}
	for _, e := range chunk {
		out = append(out, id.EventID(relDig(e, "event_id").(string)))
	}
	return out
}

func relWantIDs(t *testing.T, what string, got []id.EventID, want ...id.EventID) {
	t.Helper()
	if want == nil {
		want = []id.EventID{}
	}
	if !slices.Equal(got, want) {
		t.Fatalf("%s: got %v, want %v", what, got, want)
	}
}

// relFind returns the event with eventID in a chunk.
func relFind(t *testing.T, body map[string]any, key string, eventID id.EventID) map[string]any {
	t.Helper()
	for _, e := range body[key].([]any) {
		if relDig(e, "event_id") == string(eventID) {
			return e.(map[string]any)
		}
	}
	t.Fatalf("%s not in %s", eventID, key)
	return nil
}

// relIgnore sets cli's ignored users.
func relIgnore(t *testing.T, cli *mautrix.Client, users ...id.UserID) {
	t.Helper()
	ignored := map[string]any{}
	for _, u := range users {
		ignored[string(u)] = map[string]any{}
	}
	if err := cli.SetAccountData(context.Background(), "m.ignored_user_list", map[string]any{"ignored_users": ignored}); err != nil {
		t.Fatal(err)
	}
}

// relTick keeps consecutive sends' origin_server_ts apart, so "most
// recent by origin_server_ts" has one answer.
func relTick() { time.Sleep(3 * time.Millisecond) }

// Edits are aggregated as the most recent valid replacement (spec v1.7):
// edits by someone else, of another type, or without m.new_content are
// ignored; the original's content is left alone; redacting the latest edit
// falls back to the one before; a redacted original bundles no edit.
func TestEditsAggregated(t *testing.T) {
	srv := startAccounts(t, nil)
	ctx := context.Background()
	alice := registerUser(t, srv, "alice", "alice-password")
	bob := registerUser(t, srv, "bob", "bob-password")
	roomID := relRoom(t, alice, bob)

	orig := relSend(t, alice, roomID, "m.room.message", relText("hello"))
	relTick()
	e1 := relSend(t, alice, roomID, "m.room.message", relEdit("hello one", orig))
	relTick()
	e2 := relSend(t, alice, roomID, "m.room.message", relEdit("hello two", orig))
	relTick()
	// Invalid edits, all newer than e2.
	relSend(t, bob, roomID, "m.room.message", relEdit("bob was here", orig))
	relSend(t, alice, roomID, "org.example.other", relEdit("other type", orig))
	relSend(t, alice, roomID, "m.room.message", relChild("no new content", "m.replace", orig))
	// An edit of an edit is not an edit of the original.
	relSend(t, alice, roomID, "m.room.message", relEdit("edit of edit", e2))

	wantEdit := func(what string, ev map[string]any, want id.EventID, body string) {
		t.Helper()
		if got := relDig(ev, "content", "body"); got != "hello" {
			t.Fatalf("%s: the original's content was changed: %v", what, ev["content"])
		}
		rep := relDig(ev, "unsigned", "m.relations", "m.replace")
		if want == "" {
			if rep != nil {
				t.Fatalf("%s: unexpected m.replace %v", what, rep)
			}
			return
		}
		if relDig(rep, "event_id") != string(want) || relDig(rep, "content", "m.new_content", "body") != body ||
			relDig(rep, "sender") != string(alice.UserID) || relDig(rep, "type") != "m.room.message" || relDig(rep, "origin_server_ts") == nil {
			t.Fatalf("%s: m.replace = %v, want the whole event %s", what, rep, want)
		}
	}
	wantEdit("/event", relEvent(t, srv, bob, roomID, orig), e2, "hello two")

	msgs := doJSON(t, http.MethodGet, srv.URL+"/_matrix/client/v3/rooms/"+url.PathEscape(string(roomID))+"/messages?dir=b&limit=50", bob.AccessToken, nil)
	msgs.wantOK(t)
	wantEdit("/messages", relFind(t, msgs.Body, "chunk", orig), e2, "hello two")
	// The edit of an edit is not bundled with e2 either.
	if rep := relDig(relFind(t, msgs.Body, "chunk", e2), "unsigned", "m.relations", "m.replace"); rep != nil {
		t.Fatalf("an edit got an edit bundled: %v", rep)
	}
	ctxResp := doJSON(t, http.MethodGet, srv.URL+"/_matrix/client/v3/rooms/"+url.PathEscape(string(roomID))+"/context/"+url.PathEscape(string(orig))+"?limit=4", bob.AccessToken, nil)
	ctxResp.wantOK(t)
	wantEdit("/context", ctxResp.Body["event"].(map[string]any), e2, "hello two")

	// mautrix reads the bundled edit without complaint.
	if _, err := bob.GetEvent(ctx, roomID, orig); err != nil {
		t.Fatalf("mautrix cannot read an edited event: %v", err)
	}
	if _, err := bob.Messages(ctx, roomID, "", "", mautrix.DirectionBackward, nil, 50); err != nil {
		t.Fatalf("mautrix cannot read /messages with aggregations: %v", err)
	}

	// Redacting the latest edit reverts to the one before.
	if _, err := alice.RedactEvent(ctx, roomID, e2); err != nil {
		t.Fatal(err)
	}
	wantEdit("after redacting e2", relEvent(t, srv, bob, roomID, orig), e1, "hello one")

	// A redacted original bundles no edit at all.
	if _, err := alice.RedactEvent(ctx, roomID, orig); err != nil {
		t.Fatal(err)
	}
	ev := relEvent(t, srv, bob, roomID, orig)
	if rep := relDig(ev, "unsigned", "m.relations", "m.replace"); rep != nil {
		t.Fatalf("a redacted original has m.replace %v", rep)
	}
}

// m.thread aggregation: count, latest_event (with its own bundled edit) and
// current_user_participated, per reader; ignored users' replies do not
// count; references are listed.
func TestThreadAggregation(t *testing.T) {
	srv := startAccounts(t, nil)
	alice := registerUser(t, srv, "alice", "alice-password")
	bob := registerUser(t, srv, "bob", "bob-password")
	carol := registerUser(t, srv, "carol", "carol-password")
	roomID := relRoom(t, alice, bob, carol)

	root := relSend(t, alice, roomID, "m.room.message", relText("root"))
	t1 := relSend(t, bob, roomID, "m.room.message", relChild("first reply", "m.thread", root))
	t2 := relSend(t, alice, roomID, "m.room.message", relChild("second reply", "m.thread", root))
	edit := relSend(t, alice, roomID, "m.room.message", relEdit("second reply, edited", t2))
	ref := relSend(t, carol, roomID, "org.example.ref", map[string]any{"m.relates_to": map[string]any{"rel_type": "m.reference", "event_id": root}})
	relSend(t, carol, roomID, "m.reaction", relReaction(root, "👍"))

	check := func(reader *mautrix.Client, wantCount int, wantLatest id.EventID, participated bool) map[string]any {
		t.Helper()
		ev := relEvent(t, srv, reader, roomID, root)
		rels := relDig(ev, "unsigned", "m.relations")
		th := relDig(rels, "m.thread")
		if th == nil {
			t.Fatalf("%s: no m.thread aggregation: %v", reader.UserID, ev["unsigned"])
		}
		if relDig(th, "count") != float64(wantCount) || relDig(th, "latest_event", "event_id") != string(wantLatest) ||
			relDig(th, "current_user_participated") != participated {
			t.Fatalf("%s: m.thread = %v", reader.UserID, th)
		}
		if relDig(rels, "m.annotation") != nil {
			t.Fatalf("annotations are not aggregated by the server: %v", rels)
		}
		return th.(map[string]any)
	}
	th := check(alice, 2, t2, true) // alice sent the root and a reply
	check(bob, 2, t2, true)         // bob replied
	check(carol, 2, t2, false)      // carol only referenced and reacted
	// The latest event carries its own aggregations.
	if relDig(th, "latest_event", "unsigned", "m.relations", "m.replace", "event_id") != string(edit) {
		t.Fatalf("latest_event has no bundled edit: %v", th["latest_event"])
	}
	if relDig(th, "latest_event", "content", "body") != "second reply" {
		t.Fatalf("latest_event content was replaced: %v", th["latest_event"])
	}
	ev := relEvent(t, srv, alice, roomID, root)
	chunk, _ := relDig(ev, "unsigned", "m.relations", "m.reference", "chunk").([]any)
	if len(chunk) != 1 || relDig(chunk[0], "event_id") != string(ref) {
		t.Fatalf("m.reference aggregation = %v", relDig(ev, "unsigned", "m.relations"))
	}

	// carol ignores alice's co-replier bob: his reply leaves her counts.
	relIgnore(t, carol, bob.UserID)
	msgs := doJSON(t, http.MethodGet, srv.URL+"/_matrix/client/v3/rooms/"+url.PathEscape(string(roomID))+"/messages?dir=b&limit=50", carol.AccessToken, nil)
	msgs.wantOK(t)
	cth := relDig(relFind(t, msgs.Body, "chunk", root), "unsigned", "m.relations", "m.thread")
	if relDig(cth, "count") != float64(1) || relDig(cth, "latest_event", "event_id") != string(t2) {
		t.Fatalf("ignored user's reply counted: %v", cth)
	}
	// ... and his reply is gone from /relations too.
	r := relGet(t, srv, carol, relPath(roomID, "relations", string(root), "m.thread"))
	r.wantOK(t)
	relWantIDs(t, "carol's thread", relChunkIDs(t, r.Body), t2)

	// Redacting a reply breaks its relation: the count drops, the latest
	// moves back.
	if _, err := alice.RedactEvent(context.Background(), roomID, t2); err != nil {
		t.Fatal(err)
	}
	check(bob, 1, t1, true)
}

// /relations: filters by rel type and event type, paginates both ways
// with next_batch/prev_batch, recurses up to 3 levels through matching
// events only, and validates against the spec.
func TestRelationsEndpoint(t *testing.T) {
	srv := startAccounts(t, nil)
	ctx := context.Background()
	alice := registerUser(t, srv, "alice", "alice-password")
	bob := registerUser(t, srv, "bob", "bob-password")
	roomID := relRoom(t, alice, bob)

	parent := relSend(t, alice, roomID, "m.room.message", relText("parent"))
	t1 := relSend(t, bob, roomID, "m.room.message", relChild("t1", "m.thread", parent))
	t2 := relSend(t, alice, roomID, "m.room.message", relChild("t2", "m.thread", parent))
	a1 := relSend(t, bob, roomID, "m.reaction", relReaction(parent, "🎉"))
	ref := relSend(t, alice, roomID, "org.example.ref", map[string]any{"m.relates_to": map[string]any{"rel_type": "m.reference", "event_id": parent}})
	relSend(t, alice, roomID, "m.room.message", relText("unrelated"))

	get := func(q string, rest ...string) rawResponse {
		t.Helper()
		return relGet(t, srv, bob, relPath(roomID, append([]string{"relations", string(parent)}, rest...)...)+q)
	}
	all := get("")
	all.wantOK(t)
	relWantIDs(t, "all, newest first", relChunkIDs(t, all.Body), ref, a1, t2, t1)
	relValidate(t, all.Body, "relations.yaml", "/rooms/{roomId}/relations/{eventId}")
	if _, ok := all.Body["recursion_depth"]; ok {
		t.Fatal("recursion_depth answered without recurse")
	}
	if all.Body["next_batch"] != nil || all.Body["prev_batch"] != nil {
		t.Fatalf("one page has tokens: %s", all.Raw)
	}

	th := get("", "m.thread")
	th.wantOK(t)
	relWantIDs(t, "m.thread", relChunkIDs(t, th.Body), t2, t1)
	relValidate(t, th.Body, "relations.yaml", "/rooms/{roomId}/relations/{eventId}/{relType}")
	rx := get("", "m.annotation", "m.reaction")
	rx.wantOK(t)
	relWantIDs(t, "m.annotation/m.reaction", relChunkIDs(t, rx.Body), a1)
	relValidate(t, rx.Body, "relations.yaml", "/rooms/{roomId}/relations/{eventId}/{relType}/{eventType}")
	none := get("", "m.annotation", "m.room.message")
	none.wantOK(t)
	relWantIDs(t, "m.annotation/m.room.message", relChunkIDs(t, none.Body))

	// The chunk is in client format with bundled aggregations of its own.
	parentEv := relEvent(t, srv, bob, roomID, parent)
	if relDig(parentEv, "unsigned", "m.relations", "m.thread", "count") != float64(2) {
		t.Fatalf("parent aggregation: %v", parentEv["unsigned"])
	}

	// mautrix's GetRelations, backward one at a time.
	var got []id.EventID
	req := &mautrix.ReqGetRelations{Dir: mautrix.DirectionBackward, Limit: 1}
	for page := 0; ; page++ {
		if page > 10 {
			t.Fatal("pagination does not end")
		}
		resp, err := bob.GetRelations(ctx, roomID, parent, req)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range resp.Chunk {
			got = append(got, e.ID)
		}
		if page > 0 && resp.PrevBatch != req.From {
			t.Fatalf("prev_batch %q, want the from token %q", resp.PrevBatch, req.From)
		}
		if resp.NextBatch == "" {
			break
		}
		req.From = resp.NextBatch
	}
	relWantIDs(t, "paged backward", got, ref, a1, t2, t1)

	// Forward, three then the rest.
	f1 := get("?dir=f&limit=3")
	f1.wantOK(t)
	relWantIDs(t, "forward page 1", relChunkIDs(t, f1.Body), t1, t2, a1)
	next, _ := f1.Body["next_batch"].(string)
	if next == "" {
		t.Fatalf("no next_batch: %s", f1.Raw)
	}
	f2 := get("?dir=f&limit=3&from=" + url.QueryEscape(next))
	f2.wantOK(t)
	relWantIDs(t, "forward page 2", relChunkIDs(t, f2.Body), ref)
	if f2.Body["next_batch"] != nil || f2.Body["prev_batch"] != next {
		t.Fatalf("last page tokens: %s", f2.Raw)
	}
	// A to token bounds the range: backward from the end down to (not
	// including) the forward page's end.
	b := get("?dir=b&to=" + url.QueryEscape(next))
	b.wantOK(t)
	relWantIDs(t, "backward to", relChunkIDs(t, b.Body), ref)

	// Recursion: x <- y (reference) <- z (annotation) <- w (reference) <- v (reference).
	x := relSend(t, alice, roomID, "m.room.message", relText("x"))
	y := relSend(t, alice, roomID, "org.example.ref", map[string]any{"m.relates_to": map[string]any{"rel_type": "m.reference", "event_id": x}})
	z := relSend(t, bob, roomID, "m.reaction", relReaction(y, "👀"))
	w := relSend(t, alice, roomID, "org.example.ref", map[string]any{"m.relates_to": map[string]any{"rel_type": "m.reference", "event_id": z}})
	relSend(t, alice, roomID, "org.example.ref", map[string]any{"m.relates_to": map[string]any{"rel_type": "m.reference", "event_id": w}})
	rel := func(q string, rest ...string) rawResponse {
		t.Helper()
		r := relGet(t, srv, bob, relPath(roomID, append([]string{"relations", string(x)}, rest...)...)+q)
		r.wantOK(t)
		return r
	}
	rec := rel("?recurse=true")
	relWantIDs(t, "recurse", relChunkIDs(t, rec.Body), w, z, y)
	if rec.Body["recursion_depth"] != float64(3) {
		t.Fatalf("recursion_depth = %v", rec.Body["recursion_depth"])
	}
	relValidate(t, rec.Body, "relations.yaml", "/rooms/{roomId}/relations/{eventId}")
	direct := rel("?recurse=false")
	relWantIDs(t, "recurse=false", relChunkIDs(t, direct.Body), y)
	if direct.Body["recursion_depth"] != float64(1) {
		t.Fatalf("recursion_depth with recurse=false = %v", direct.Body["recursion_depth"])
	}
	// The filter applies at every level: z is no reference, so w is not
	// reached through it.
	relWantIDs(t, "recurse m.reference", relChunkIDs(t, rel("?recurse=true", "m.reference").Body), y)
	resp, err := bob.GetRelations(ctx, roomID, x, &mautrix.ReqGetRelations{Recurse: true, Dir: mautrix.DirectionForward})
	if err != nil || resp.RecursionDepth != 3 || len(resp.Chunk) != 3 || resp.Chunk[0].ID != y {
		t.Fatalf("mautrix recurse: %+v %v", resp, err)
	}

	// Bad parameters.
	for _, q := range []string{"?dir=x", "?limit=abc", "?limit=-1", "?recurse=maybe", "?from=nonsense", "?to=t-3"} {
		get(q).wantErr(t, http.StatusBadRequest, "M_INVALID_PARAM")
	}
	// Unknown event, an event of another room.
	relGet(t, srv, bob, relPath(roomID, "relations", "$nope")).wantErr(t, http.StatusNotFound, "M_NOT_FOUND")
	other := relRoom(t, alice, bob)
	relGet(t, srv, bob, relPath(other, "relations", string(parent))).wantErr(t, http.StatusNotFound, "M_NOT_FOUND")
	// No token.
	doJSON(t, http.MethodGet, srv.URL+relPath(roomID, "relations", string(parent)), "", nil).wantErr(t, http.StatusUnauthorized, "M_MISSING_TOKEN")
}

// History visibility governs /relations and /threads: a stranger gets 404
// (relations, which hides whether the event exists) and 403 (threads); a
// member who left misses what happened while they were away.
func TestRelationsAndThreadsVisibility(t *testing.T) {
	srv := startAccounts(t, nil)
	ctx := context.Background()
	alice := registerUser(t, srv, "alice", "alice-password")
	bob := registerUser(t, srv, "bob", "bob-password")
	stranger := registerUser(t, srv, "stranger", "stranger-password")
	roomID := relRoom(t, alice, bob)
	if _, err := alice.SendStateEvent(ctx, roomID, event.StateHistoryVisibility, "", map[string]any{"history_visibility": "joined"}); err != nil {
		t.Fatal(err)
	}

	root := relSend(t, alice, roomID, "m.room.message", relText("root"))
	c0 := relSend(t, alice, roomID, "m.room.message", relChild("c0", "m.thread", root))
	if _, err := bob.LeaveRoom(ctx, roomID); err != nil {
		t.Fatal(err)
	}
	away := relSend(t, alice, roomID, "m.room.message", relText("while bob is away"))
	c1 := relSend(t, alice, roomID, "m.room.message", relChild("c1", "m.thread", root))
	relSend(t, alice, roomID, "m.room.message", relChild("reply to away", "m.thread", away))
	if _, err := alice.InviteUser(ctx, roomID, &mautrix.ReqInviteUser{UserID: bob.UserID}); err != nil {
		t.Fatal(err)
	}
	if _, err := bob.JoinRoomByID(ctx, roomID); err != nil {
		t.Fatal(err)
	}
	c2 := relSend(t, alice, roomID, "m.room.message", relChild("c2", "m.thread", root))

	r := relGet(t, srv, bob, relPath(roomID, "relations", string(root)))
	r.wantOK(t)
	relWantIDs(t, "bob's view", relChunkIDs(t, r.Body), c2, c0)
	if relDig(relEvent(t, srv, bob, roomID, root), "unsigned", "m.relations", "m.thread", "latest_event", "event_id") != string(c2) {
		t.Fatal("latest_event is not bob's latest visible reply")
	}
	_ = c1
	// An event from while he was away is not his to see.
	relGet(t, srv, bob, relPath(roomID, "relations", string(away))).wantErr(t, http.StatusNotFound, "M_NOT_FOUND")
	th := relGet(t, srv, bob, relPath(roomID, "threads"))
	th.wantOK(t)
	relWantIDs(t, "bob's threads", relChunkIDs(t, th.Body), root)

	// A stranger learns nothing.
	relGet(t, srv, stranger, relPath(roomID, "relations", string(root))).wantErr(t, http.StatusNotFound, "M_NOT_FOUND")
	relGet(t, srv, stranger, relPath(roomID, "threads")).wantErr(t, http.StatusForbidden, "M_FORBIDDEN")
	relGet(t, srv, stranger, relPath("!unknown:localhost", "threads")).wantErr(t, http.StatusForbidden, "M_FORBIDDEN")
	if _, err := stranger.GetEvent(ctx, roomID, root); err == nil {
		t.Fatal("a stranger read an event")
	}
}

// /threads lists thread roots by latest activity, filters to threads the
// reader took part in, paginates, and serves an ignored user's root
// redacted.
func TestThreadsList(t *testing.T) {
	srv := startAccounts(t, nil)
	alice := registerUser(t, srv, "alice", "alice-password")
	bob := registerUser(t, srv, "bob", "bob-password")
	carol := registerUser(t, srv, "carol", "carol-password")
	roomID := relRoom(t, alice, bob, carol)

	r1 := relSend(t, alice, roomID, "m.room.message", relText("r1"))
	r2 := relSend(t, bob, roomID, "m.room.message", relText("r2"))
	r3 := relSend(t, carol, roomID, "m.room.message", relText("r3"))
	relSend(t, alice, roomID, "m.room.message", relText("not a thread"))
	relSend(t, bob, roomID, "m.room.message", relChild("in r1", "m.thread", r1))
	relSend(t, bob, roomID, "m.room.message", relChild("in r2", "m.thread", r2))
	relSend(t, carol, roomID, "m.room.message", relChild("in r3", "m.thread", r3))
	latest := relSend(t, alice, roomID, "m.room.message", relChild("in r1 again", "m.thread", r1))

	list := func(cli *mautrix.Client, q string) rawResponse {
		t.Helper()
		r := relGet(t, srv, cli, relPath(roomID, "threads")+q)
		r.wantOK(t)
		relValidate(t, r.Body, "threads_list.yaml", "/rooms/{roomId}/threads")
		return r
	}
	all := list(alice, "")
	relWantIDs(t, "all threads", relChunkIDs(t, all.Body), r1, r3, r2)
	th := relDig(relFind(t, all.Body, "chunk", r1), "unsigned", "m.relations", "m.thread")
	if relDig(th, "count") != float64(2) || relDig(th, "latest_event", "event_id") != string(latest) || relDig(th, "current_user_participated") != true {
		t.Fatalf("r1's aggregation in /threads: %v", th)
	}
	relWantIDs(t, "alice participated", relChunkIDs(t, list(alice, "?include=participated").Body), r1)
	relWantIDs(t, "bob participated", relChunkIDs(t, list(bob, "?include=participated").Body), r1, r2)
	relWantIDs(t, "carol participated", relChunkIDs(t, list(carol, "?include=participated").Body), r3)
	relWantIDs(t, "include=all", relChunkIDs(t, list(carol, "?include=all").Body), r1, r3, r2)

	var got []id.EventID
	from := ""
	for page := 0; ; page++ {
		if page > 5 {
			t.Fatal("pagination does not end")
		}
		q := "?limit=1"
		if from != "" {
			q += "&from=" + url.QueryEscape(from)
		}
		r := list(bob, q)
		ids := relChunkIDs(t, r.Body)
		if len(ids) > 1 {
			t.Fatalf("limit=1 gave %v", ids)
		}
		got = append(got, ids...)
		next, _ := r.Body["next_batch"].(string)
		if next == "" {
			break
		}
		from = next
	}
	relWantIDs(t, "paged threads", got, r1, r3, r2)

	// carol ignores alice: alice's reply no longer counts, so r1's latest
	// activity is bob's first reply, and alice's root comes back redacted.
	relIgnore(t, carol, alice.UserID)
	ign := list(carol, "")
	relWantIDs(t, "carol ignoring alice", relChunkIDs(t, ign.Body), r3, r2, r1)
	root := relFind(t, ign.Body, "chunk", r1)
	if relDig(root, "content", "body") != nil {
		t.Fatalf("an ignored user's root is not redacted: %v", root["content"])
	}
	if relDig(root, "unsigned", "m.relations", "m.thread", "count") != float64(1) {
		t.Fatalf("ignored reply counted: %v", root["unsigned"])
	}

	relGet(t, srv, alice, relPath(roomID, "threads")+"?include=some").wantErr(t, http.StatusBadRequest, "M_INVALID_PARAM")
	relGet(t, srv, alice, relPath(roomID, "threads")+"?limit=0").wantErr(t, http.StatusBadRequest, "M_INVALID_PARAM")
	relGet(t, srv, alice, relPath(roomID, "threads")+"?from=xyz").wantErr(t, http.StatusBadRequest, "M_INVALID_PARAM")
}

// relValidate checks body against the 200 response schema of GET path in
// a client-server API file of the spec. It understands what those files
// use: $ref (to files and to #/components), allOf, type, required,
// properties, items and pattern.
func relValidate(t *testing.T, body map[string]any, file, path string) {
	t.Helper()
	_, me, _, _ := runtime.Caller(0)
	dir := filepath.Join(filepath.Dir(me), "..", "..", "..", "shared", "matrix-spec", "data", "api", "client-server")
	doc := relYAML(t, filepath.Join(dir, file))
	schema, ok := relDig(doc, "paths", path, "get", "responses", "200", "content", "application/json", "schema").(map[string]any)
	if !ok {
		t.Fatalf("%s: no 200 schema for GET %s", file, path)
	}
	if errs := relCheck(t, relSchemaDoc{dir: dir, root: doc}, schema, body, "$"); len(errs) > 0 {
		t.Fatalf("GET %s does not match %s:\n%s\nbody: %v", path, file, strings.Join(errs, "\n"), body)
	}
}

type relSchemaDoc struct {
	dir  string
	root map[string]any
}

func relYAML(t *testing.T, path string) map[string]any {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := yaml.Unmarshal(raw, &doc); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return doc
}

func relCheck(t *testing.T, d relSchemaDoc, schema map[string]any, v any, at string) []string {
	t.Helper()
	if ref, ok := schema["$ref"].(string); ok {
		file, frag, _ := strings.Cut(ref, "#")
		nd := d
		if file != "" {
			p := filepath.Join(d.dir, file)
			nd = relSchemaDoc{dir: filepath.Dir(p), root: relYAML(t, p)}
		}
		target := nd.root
		if frag = strings.Trim(frag, "/"); frag != "" {
			target, _ = relDig(nd.root, strings.Split(frag, "/")...).(map[string]any)
		}
		if target == nil {
			return []string{at + ": unresolvable $ref " + ref}
		}
		return relCheck(t, nd, target, v, at)
	}
	var errs []string
	if all, ok := schema["allOf"].([]any); ok {
		for _, sub := range all {
			errs = append(errs, relCheck(t, d, sub.(map[string]any), v, at)...)
		}
	}
	if typ, ok := schema["type"].(string); ok && !relIsType(v, typ) {
		return append(errs, fmt.Sprintf("%s: %v is not %s", at, v, typ))
	}
	if pat, ok := schema["pattern"].(string); ok {
		if s, isStr := v.(string); isStr && !regexp.MustCompile(pat).MatchString(s) {
			errs = append(errs, fmt.Sprintf("%s: %q does not match %s", at, s, pat))
		}
	}
	switch val := v.(type) {
	case map[string]any:
		req, _ := schema["required"].([]any)
		for _, k := range req {
			if _, ok := val[k.(string)]; !ok {
				errs = append(errs, fmt.Sprintf("%s: required %s missing", at, k))
			}
		}
		props, _ := schema["properties"].(map[string]any)
		for k, sub := range props {
			if x, ok := val[k]; ok {
				if sm, ok := sub.(map[string]any); ok {
					errs = append(errs, relCheck(t, d, sm, x, at+"."+k)...)
				}
			}
		}
	case []any:
		if items, ok := schema["items"].(map[string]any); ok {
			for i, x := range val {
				errs = append(errs, relCheck(t, d, items, x, fmt.Sprintf("%s[%d]", at, i))...)
			}
		}
	}
	return errs
}

func relIsType(v any, typ string) bool {
	switch typ {
	case "object":
		_, ok := v.(map[string]any)
		return ok
	case "array":
		_, ok := v.([]any)
		return ok
	case "string":
		_, ok := v.(string)
		return ok
	case "boolean":
		_, ok := v.(bool)
		return ok
	case "integer":
		f, ok := v.(float64)
		return ok && f == float64(int64(f))
	case "number":
		_, ok := v.(float64)
		return ok
	}
	return true
}
