package e2e

import (
	"context"
	"net/http"
	"net/url"
	"testing"
	"time"

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

// relGet is an authenticated GET of u.
func relGet(t *testing.T, cli *mautrix.Client, u string) rawResponse {
	t.Helper()
	return doJSON(t, http.MethodGet, u, cli.AccessToken, nil)
}

// relURL is the v1 client API URL of roomID's rest.
func relURL(srv *Server, roomID id.RoomID, rest ...string) string {
	return clientURL(srv, "v1", append([]string{"rooms", string(roomID)}, rest...)...)
}

// relEvent fetches one event as JSON with /event.
func relEvent(t *testing.T, srv *Server, cli *mautrix.Client, roomID id.RoomID, eventID id.EventID) map[string]any {
	t.Helper()
	r := doJSON(t, http.MethodGet, clientURL(srv, "v3", "rooms", string(roomID), "event", string(eventID)), cli.AccessToken, nil)
	r.wantOK(t)
	return r.Body
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
		out = append(out, id.EventID(dig(e, "event_id").(string)))
	}
	return out
}

// relFind returns the event with eventID in a chunk.
func relFind(t *testing.T, body map[string]any, key string, eventID id.EventID) map[string]any {
	t.Helper()
	for _, e := range body[key].([]any) {
		if dig(e, "event_id") == string(eventID) {
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
		if got := dig(ev, "content", "body"); got != "hello" {
			t.Fatalf("%s: the original's content was changed: %v", what, ev["content"])
		}
		rep := dig(ev, "unsigned", "m.relations", "m.replace")
		if want == "" {
			if rep != nil {
				t.Fatalf("%s: unexpected m.replace %v", what, rep)
			}
			return
		}
		if dig(rep, "event_id") != string(want) || dig(rep, "content", "m.new_content", "body") != body ||
			dig(rep, "sender") != string(alice.UserID) || dig(rep, "type") != "m.room.message" || dig(rep, "origin_server_ts") == nil {
			t.Fatalf("%s: m.replace = %v, want the whole event %s", what, rep, want)
		}
	}
	wantEdit("/event", relEvent(t, srv, bob, roomID, orig), e2, "hello two")

	msgs := doJSON(t, http.MethodGet, srv.URL+"/_matrix/client/v3/rooms/"+url.PathEscape(string(roomID))+"/messages?dir=b&limit=50", bob.AccessToken, nil)
	msgs.wantOK(t)
	wantEdit("/messages", relFind(t, msgs.Body, "chunk", orig), e2, "hello two")
	// The edit of an edit is not bundled with e2 either.
	if rep := dig(relFind(t, msgs.Body, "chunk", e2), "unsigned", "m.relations", "m.replace"); rep != nil {
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
	if rep := dig(ev, "unsigned", "m.relations", "m.replace"); rep != nil {
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
		rels := dig(ev, "unsigned", "m.relations")
		th := dig(rels, "m.thread")
		if th == nil {
			t.Fatalf("%s: no m.thread aggregation: %v", reader.UserID, ev["unsigned"])
		}
		if dig(th, "count") != float64(wantCount) || dig(th, "latest_event", "event_id") != string(wantLatest) ||
			dig(th, "current_user_participated") != participated {
			t.Fatalf("%s: m.thread = %v", reader.UserID, th)
		}
		if dig(rels, "m.annotation") != nil {
			t.Fatalf("annotations are not aggregated by the server: %v", rels)
		}
		return th.(map[string]any)
	}
	th := check(alice, 2, t2, true) // alice sent the root and a reply
	check(bob, 2, t2, true)         // bob replied
	check(carol, 2, t2, false)      // carol only referenced and reacted
	// The latest event carries its own aggregations.
	if dig(th, "latest_event", "unsigned", "m.relations", "m.replace", "event_id") != string(edit) {
		t.Fatalf("latest_event has no bundled edit: %v", th["latest_event"])
	}
	if dig(th, "latest_event", "content", "body") != "second reply" {
		t.Fatalf("latest_event content was replaced: %v", th["latest_event"])
	}
	ev := relEvent(t, srv, alice, roomID, root)
	chunk, _ := dig(ev, "unsigned", "m.relations", "m.reference", "chunk").([]any)
	if len(chunk) != 1 || dig(chunk[0], "event_id") != string(ref) {
		t.Fatalf("m.reference aggregation = %v", dig(ev, "unsigned", "m.relations"))
	}

	// carol ignores alice's co-replier bob: his reply leaves her counts.
	relIgnore(t, carol, bob.UserID)
	msgs := doJSON(t, http.MethodGet, srv.URL+"/_matrix/client/v3/rooms/"+url.PathEscape(string(roomID))+"/messages?dir=b&limit=50", carol.AccessToken, nil)
	msgs.wantOK(t)
	cth := dig(relFind(t, msgs.Body, "chunk", root), "unsigned", "m.relations", "m.thread")
	if dig(cth, "count") != float64(1) || dig(cth, "latest_event", "event_id") != string(t2) {
		t.Fatalf("ignored user's reply counted: %v", cth)
	}
	// ... and his reply is gone from /relations too.
	r := relGet(t, carol, relURL(srv, roomID, "relations", string(root), "m.thread"))
	r.wantOK(t)
	wantIDs(t, "carol's thread", relChunkIDs(t, r.Body), t2)

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
		return relGet(t, bob, relURL(srv, roomID, append([]string{"relations", string(parent)}, rest...)...)+q)
	}
	all := get("")
	all.wantOK(t)
	wantIDs(t, "all, newest first", relChunkIDs(t, all.Body), ref, a1, t2, t1)
	specValidate(t, all.Body, "relations.yaml", "/rooms/{roomId}/relations/{eventId}", "get", "200")
	if _, ok := all.Body["recursion_depth"]; ok {
		t.Fatal("recursion_depth answered without recurse")
	}
	if all.Body["next_batch"] != nil || all.Body["prev_batch"] != nil {
		t.Fatalf("one page has tokens: %s", all.Raw)
	}

	th := get("", "m.thread")
	th.wantOK(t)
	wantIDs(t, "m.thread", relChunkIDs(t, th.Body), t2, t1)
	specValidate(t, th.Body, "relations.yaml", "/rooms/{roomId}/relations/{eventId}/{relType}", "get", "200")
	rx := get("", "m.annotation", "m.reaction")
	rx.wantOK(t)
	wantIDs(t, "m.annotation/m.reaction", relChunkIDs(t, rx.Body), a1)
	specValidate(t, rx.Body, "relations.yaml", "/rooms/{roomId}/relations/{eventId}/{relType}/{eventType}", "get", "200")
	none := get("", "m.annotation", "m.room.message")
	none.wantOK(t)
	wantIDs(t, "m.annotation/m.room.message", relChunkIDs(t, none.Body))

	// The chunk is in client format with bundled aggregations of its own.
	parentEv := relEvent(t, srv, bob, roomID, parent)
	if dig(parentEv, "unsigned", "m.relations", "m.thread", "count") != float64(2) {
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
	wantIDs(t, "paged backward", got, ref, a1, t2, t1)

	// Forward, three then the rest.
	f1 := get("?dir=f&limit=3")
	f1.wantOK(t)
	wantIDs(t, "forward page 1", relChunkIDs(t, f1.Body), t1, t2, a1)
	next, _ := f1.Body["next_batch"].(string)
	if next == "" {
		t.Fatalf("no next_batch: %s", f1.Raw)
	}
	f2 := get("?dir=f&limit=3&from=" + url.QueryEscape(next))
	f2.wantOK(t)
	wantIDs(t, "forward page 2", relChunkIDs(t, f2.Body), ref)
	if f2.Body["next_batch"] != nil || f2.Body["prev_batch"] != next {
		t.Fatalf("last page tokens: %s", f2.Raw)
	}
	// A to token bounds the range: backward from the end down to (not
	// including) the forward page's end.
	b := get("?dir=b&to=" + url.QueryEscape(next))
	b.wantOK(t)
	wantIDs(t, "backward to", relChunkIDs(t, b.Body), ref)

	// Recursion: x <- y (reference) <- z (annotation) <- w (reference) <- v (reference).
	x := relSend(t, alice, roomID, "m.room.message", relText("x"))
	y := relSend(t, alice, roomID, "org.example.ref", map[string]any{"m.relates_to": map[string]any{"rel_type": "m.reference", "event_id": x}})
	z := relSend(t, bob, roomID, "m.reaction", relReaction(y, "👀"))
	w := relSend(t, alice, roomID, "org.example.ref", map[string]any{"m.relates_to": map[string]any{"rel_type": "m.reference", "event_id": z}})
	relSend(t, alice, roomID, "org.example.ref", map[string]any{"m.relates_to": map[string]any{"rel_type": "m.reference", "event_id": w}})
	rel := func(q string, rest ...string) rawResponse {
		t.Helper()
		r := relGet(t, bob, relURL(srv, roomID, append([]string{"relations", string(x)}, rest...)...)+q)
		r.wantOK(t)
		return r
	}
	rec := rel("?recurse=true")
	wantIDs(t, "recurse", relChunkIDs(t, rec.Body), w, z, y)
	if rec.Body["recursion_depth"] != float64(3) {
		t.Fatalf("recursion_depth = %v", rec.Body["recursion_depth"])
	}
	specValidate(t, rec.Body, "relations.yaml", "/rooms/{roomId}/relations/{eventId}", "get", "200")
	direct := rel("?recurse=false")
	wantIDs(t, "recurse=false", relChunkIDs(t, direct.Body), y)
	if direct.Body["recursion_depth"] != float64(1) {
		t.Fatalf("recursion_depth with recurse=false = %v", direct.Body["recursion_depth"])
	}
	// The filter applies at every level: z is no reference, so w is not
	// reached through it.
	wantIDs(t, "recurse m.reference", relChunkIDs(t, rel("?recurse=true", "m.reference").Body), y)
	resp, err := bob.GetRelations(ctx, roomID, x, &mautrix.ReqGetRelations{Recurse: true, Dir: mautrix.DirectionForward})
	if err != nil || resp.RecursionDepth != 3 || len(resp.Chunk) != 3 || resp.Chunk[0].ID != y {
		t.Fatalf("mautrix recurse: %+v %v", resp, err)
	}

	// Bad parameters.
	for _, q := range []string{"?dir=x", "?limit=abc", "?limit=-1", "?recurse=maybe", "?from=nonsense", "?to=t-3"} {
		get(q).wantErr(t, http.StatusBadRequest, "M_INVALID_PARAM")
	}
	// Unknown event, an event of another room.
	relGet(t, bob, relURL(srv, roomID, "relations", "$nope")).wantErr(t, http.StatusNotFound, "M_NOT_FOUND")
	other := relRoom(t, alice, bob)
	relGet(t, bob, relURL(srv, other, "relations", string(parent))).wantErr(t, http.StatusNotFound, "M_NOT_FOUND")
	// No token.
	doJSON(t, http.MethodGet, relURL(srv, roomID, "relations", string(parent)), "", nil).wantErr(t, http.StatusUnauthorized, "M_MISSING_TOKEN")
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

	r := relGet(t, bob, relURL(srv, roomID, "relations", string(root)))
	r.wantOK(t)
	wantIDs(t, "bob's view", relChunkIDs(t, r.Body), c2, c0)
	if dig(relEvent(t, srv, bob, roomID, root), "unsigned", "m.relations", "m.thread", "latest_event", "event_id") != string(c2) {
		t.Fatal("latest_event is not bob's latest visible reply")
	}
	_ = c1
	// An event from while he was away is not his to see.
	relGet(t, bob, relURL(srv, roomID, "relations", string(away))).wantErr(t, http.StatusNotFound, "M_NOT_FOUND")
	th := relGet(t, bob, relURL(srv, roomID, "threads"))
	th.wantOK(t)
	wantIDs(t, "bob's threads", relChunkIDs(t, th.Body), root)

	// A stranger learns nothing.
	relGet(t, stranger, relURL(srv, roomID, "relations", string(root))).wantErr(t, http.StatusNotFound, "M_NOT_FOUND")
	relGet(t, stranger, relURL(srv, roomID, "threads")).wantErr(t, http.StatusForbidden, "M_FORBIDDEN")
	relGet(t, stranger, relURL(srv, "!unknown:localhost", "threads")).wantErr(t, http.StatusForbidden, "M_FORBIDDEN")
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
		r := relGet(t, cli, relURL(srv, roomID, "threads")+q)
		r.wantOK(t)
		specValidate(t, r.Body, "threads_list.yaml", "/rooms/{roomId}/threads", "get", "200")
		return r
	}
	all := list(alice, "")
	wantIDs(t, "all threads", relChunkIDs(t, all.Body), r1, r3, r2)
	th := dig(relFind(t, all.Body, "chunk", r1), "unsigned", "m.relations", "m.thread")
	if dig(th, "count") != float64(2) || dig(th, "latest_event", "event_id") != string(latest) || dig(th, "current_user_participated") != true {
		t.Fatalf("r1's aggregation in /threads: %v", th)
	}
	wantIDs(t, "alice participated", relChunkIDs(t, list(alice, "?include=participated").Body), r1)
	wantIDs(t, "bob participated", relChunkIDs(t, list(bob, "?include=participated").Body), r1, r2)
	wantIDs(t, "carol participated", relChunkIDs(t, list(carol, "?include=participated").Body), r3)
	wantIDs(t, "include=all", relChunkIDs(t, list(carol, "?include=all").Body), r1, r3, r2)

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
	wantIDs(t, "paged threads", got, r1, r3, r2)

	// carol ignores alice: alice's reply no longer counts, so r1's latest
	// activity is bob's first reply, and alice's root comes back redacted.
	relIgnore(t, carol, alice.UserID)
	ign := list(carol, "")
	wantIDs(t, "carol ignoring alice", relChunkIDs(t, ign.Body), r3, r2, r1)
	root := relFind(t, ign.Body, "chunk", r1)
	if dig(root, "content", "body") != nil {
		t.Fatalf("an ignored user's root is not redacted: %v", root["content"])
	}
	if dig(root, "unsigned", "m.relations", "m.thread", "count") != float64(1) {
		t.Fatalf("ignored reply counted: %v", root["unsigned"])
	}

	relGet(t, alice, relURL(srv, roomID, "threads")+"?include=some").wantErr(t, http.StatusBadRequest, "M_INVALID_PARAM")
	relGet(t, alice, relURL(srv, roomID, "threads")+"?limit=0").wantErr(t, http.StatusBadRequest, "M_INVALID_PARAM")
	relGet(t, alice, relURL(srv, roomID, "threads")+"?from=xyz").wantErr(t, http.StatusBadRequest, "M_INVALID_PARAM")
}
