package e2e

import (
	"context"
	"net/http"
	"net/url"
	"slices"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// hierChild makes child a child of space.
func hierChild(t *testing.T, cli *mautrix.Client, space, child id.RoomID, content map[string]any) {
	t.Helper()
	if _, err := cli.SendStateEvent(context.Background(), space, event.StateSpaceChild, string(child), content); err != nil {
		t.Fatal(err)
	}
}

// hierGet fetches a hierarchy page as JSON.
func hierGet(t *testing.T, srv *Server, cli *mautrix.Client, root id.RoomID, q string) rawResponse {
	t.Helper()
	return doJSON(t, http.MethodGet, clientURL(srv, "v1", "rooms", string(root), "hierarchy")+q, cli.AccessToken, nil)
}

// hierIDs lists the room IDs of a page, validating it against the spec.
func hierIDs(t *testing.T, r rawResponse) []id.RoomID {
	t.Helper()
	r.wantOK(t)
	specValidate(t, r.Body, "space_hierarchy.yaml", "/rooms/{roomId}/hierarchy", "get", "200")
	out := []id.RoomID{}
	for _, room := range r.Body["rooms"].([]any) {
		out = append(out, id.RoomID(dig(room, "room_id").(string)))
	}
	return out
}

// The space hierarchy: depth-first in the spec's child order, nested
// spaces, loops shown once, max_depth, suggested_only, pagination whose
// parameters cannot change, and rooms the reader may not see left out.
func TestSpaceHierarchy(t *testing.T) {
	srv := startAccounts(t, nil)
	ctx := context.Background()
	alice := registerUser(t, srv, "alice", "alice-password")
	bob := registerUser(t, srv, "bob", "bob-password")
	dave := registerUser(t, srv, "dave", "dave-password")
	stranger := registerUser(t, srv, "stranger", "stranger-password")
	space := map[string]any{"type": "m.space"}

	s := createRoomRaw(t, srv, alice, map[string]any{"preset": "public_chat", "name": "Space", "topic": "The space", "creation_content": space})
	a := createRoomRaw(t, srv, alice, map[string]any{"preset": "public_chat", "name": "A", "topic": "Room A"})
	b := createRoomRaw(t, srv, alice, map[string]any{"preset": "private_chat", "name": "B"})
	s2 := createRoomRaw(t, srv, alice, map[string]any{"preset": "public_chat", "name": "Sub", "creation_content": space})
	c := createRoomRaw(t, srv, alice, map[string]any{"preset": "public_chat", "name": "C"})
	p := createRoomRaw(t, srv, bob, map[string]any{"preset": "private_chat", "name": "Bob's"})
	removed := createRoomRaw(t, srv, alice, map[string]any{"preset": "public_chat", "name": "Removed"})
	q := createRoomRaw(t, srv, alice, map[string]any{"preset": "private_chat", "name": "Restricted", "initial_state": []any{
		map[string]any{"type": "m.room.join_rules", "state_key": "", "content": map[string]any{
			"join_rule": "restricted", "allow": []any{map[string]any{"type": "m.room_membership", "room_id": s}},
		}},
	}})
	via := []string{"localhost"}
	// Order: b ("a") and a ("b") by order, then s2, p, removed, q by timestamp.
	hierChild(t, alice, s, a, map[string]any{"via": via, "order": "b", "suggested": true})
	hierChild(t, alice, s, b, map[string]any{"via": via, "order": "a"})
	relTick()
	hierChild(t, alice, s, s2, map[string]any{"via": via, "suggested": true})
	relTick()
	hierChild(t, alice, s, p, map[string]any{"via": via})
	relTick()
	hierChild(t, alice, s, removed, map[string]any{"via": via})
	hierChild(t, alice, s, removed, map[string]any{}) // no via: removed again
	relTick()
	hierChild(t, alice, s, q, map[string]any{"via": via})
	hierChild(t, alice, s2, c, map[string]any{"via": via})
	hierChild(t, alice, s2, s, map[string]any{"via": via}) // a loop
	if _, err := dave.JoinRoomByID(ctx, s); err != nil {
		t.Fatal(err)
	}

	full := hierGet(t, srv, alice, s, "")
	wantIDs(t, "alice", hierIDs(t, full), s, b, a, s2, c, q)
	if full.Body["next_batch"] != nil {
		t.Fatalf("one page has next_batch: %v", full.Body["next_batch"])
	}
	root := full.Body["rooms"].([]any)[0]
	if dig(root, "room_type") != "m.space" || dig(root, "name") != "Space" || dig(root, "topic") != "The space" ||
		dig(root, "num_joined_members") != float64(2) || dig(root, "join_rule") != "public" ||
		dig(root, "world_readable") != false || dig(root, "guest_can_join") != false {
		t.Fatalf("root entry: %v", root)
	}
	var kids []string
	for _, cs := range dig(root, "children_state").([]any) {
		if dig(cs, "type") != "m.space.child" || dig(cs, "sender") != string(alice.UserID) ||
			dig(cs, "origin_server_ts") == nil || dig(cs, "content", "via") == nil {
			t.Fatalf("children_state entry: %v", cs)
		}
		kids = append(kids, dig(cs, "state_key").(string))
	}
	if want := []string{string(b), string(a), string(s2), string(p), string(q)}; !slices.Equal(kids, want) {
		t.Fatalf("children_state = %v, want %v (spec order, removed child left out)", kids, want)
	}
	ra := full.Body["rooms"].([]any)[2]
	if dig(ra, "topic") != "Room A" || len(dig(ra, "children_state").([]any)) != 0 || dig(ra, "room_type") != nil {
		t.Fatalf("a room (not a space) entry: %v", ra)
	}
	rq := full.Body["rooms"].([]any)[5]
	if dig(rq, "join_rule") != "restricted" || !slices.Equal(dig(rq, "allowed_room_ids").([]any), []any{string(s)}) {
		t.Fatalf("restricted entry: %v", rq)
	}

	// mautrix reads it.
	resp, err := alice.Hierarchy(ctx, s, &mautrix.ReqHierarchy{})
	if err != nil || len(resp.Rooms) != 6 || resp.Rooms[0].RoomType != event.RoomTypeSpace || len(resp.Rooms[0].ChildrenState) != 5 {
		t.Fatalf("mautrix Hierarchy: %+v %v", resp, err)
	}

	// bob may see the public rooms and his own, not alice's private one
	// nor the restricted one (he is not in the space); dave, in the space,
	// may see the restricted room.
	wantIDs(t, "bob", hierIDs(t, hierGet(t, srv, bob, s, "")), s, a, s2, c, p)
	wantIDs(t, "dave", hierIDs(t, hierGet(t, srv, dave, s, "")), s, a, s2, c, q)

	wantIDs(t, "max_depth=1", hierIDs(t, hierGet(t, srv, alice, s, "?max_depth=1")), s, b, a, s2, q)
	wantIDs(t, "max_depth=0", hierIDs(t, hierGet(t, srv, alice, s, "?max_depth=0")), s)
	wantIDs(t, "suggested_only", hierIDs(t, hierGet(t, srv, alice, s, "?suggested_only=true")), s, a, s2)
	wantIDs(t, "from the sub-space", hierIDs(t, hierGet(t, srv, alice, s2, "")), s2, c, s, b, a, q)

	// Pages of two, through mautrix.
	var paged []id.RoomID
	req := &mautrix.ReqHierarchy{Limit: 2}
	for page := 0; ; page++ {
		if page > 5 {
			t.Fatal("pagination does not end")
		}
		r, err := alice.Hierarchy(ctx, s, req)
		if err != nil {
			t.Fatal(err)
		}
		if len(r.Rooms) > 2 {
			t.Fatalf("limit=2 gave %d rooms", len(r.Rooms))
		}
		for _, room := range r.Rooms {
			paged = append(paged, room.RoomID)
		}
		if r.NextBatch == "" {
			break
		}
		req.From = r.NextBatch
	}
	wantIDs(t, "paged", paged, s, b, a, s2, c, q)

	first := hierGet(t, srv, alice, s, "?limit=2&max_depth=3")
	hierIDs(t, first)
	next := url.QueryEscape(first.Body["next_batch"].(string))
	wantIDs(t, "page 2", hierIDs(t, hierGet(t, srv, alice, s, "?limit=2&max_depth=3&from="+next)), a, s2)
	hierGet(t, srv, alice, s, "?limit=2&max_depth=2&from="+next).wantErr(t, http.StatusBadRequest, "M_INVALID_PARAM")
	hierGet(t, srv, alice, s, "?limit=2&max_depth=3&suggested_only=true&from="+next).wantErr(t, http.StatusBadRequest, "M_INVALID_PARAM")
	for _, bad := range []string{"?from=garbage", "?limit=0", "?limit=x", "?max_depth=-1", "?suggested_only=yes"} {
		hierGet(t, srv, alice, s, bad).wantErr(t, http.StatusBadRequest, "M_INVALID_PARAM")
	}

	// A root the reader may not see, or that does not exist: 403.
	private := createRoomRaw(t, srv, alice, map[string]any{"preset": "private_chat", "creation_content": space})
	hierGet(t, srv, stranger, private, "").wantErr(t, http.StatusForbidden, "M_FORBIDDEN")
	hierGet(t, srv, stranger, "!nowhere:localhost", "").wantErr(t, http.StatusForbidden, "M_FORBIDDEN")
	// ...but a private child under a public root is merely left out.
	wantIDs(t, "stranger", hierIDs(t, hierGet(t, srv, stranger, s, "")), s, a, s2, c)
	// An invite is enough to see a room.
	if _, err := alice.InviteUser(ctx, private, &mautrix.ReqInviteUser{UserID: stranger.UserID}); err != nil {
		t.Fatal(err)
	}
	wantIDs(t, "invited", hierIDs(t, hierGet(t, srv, stranger, private, "")), private)
	doJSON(t, http.MethodGet, clientURL(srv, "v1", "rooms", string(s), "hierarchy"), "", nil).wantErr(t, http.StatusUnauthorized, "M_MISSING_TOKEN")
}
