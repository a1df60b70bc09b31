package e2e

import (
	"context"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/weftchat/weft/storage/pgtest"
)

// End-to-end tests of the room directory: aliases, directory visibility,
// /publicRooms, the third-party lookup stubs and content reports.

const dirPassword = "directory test password"

// dirServer starts a server on a database the test can also query.
func dirServer(t *testing.T, extra map[string]string) (*Server, string) {
	t.Helper()
	dbURL := pgtest.NewDatabase(t)
	env := map[string]string{"WEFT_DATABASE_URL": dbURL}
	for k, v := range extra {
		env[k] = v
	}
	return startAccounts(t, env), dbURL
}

// dirAdmin registers localpart, makes it a server admin with the operator
// CLI and logs in afresh, so the token's cached requester is an admin.
func dirAdmin(t *testing.T, srv *Server, dbURL, localpart string) *mautrix.Client {
	t.Helper()
	registerUser(t, srv, localpart, dirPassword)
	env := map[string]string{"WEFT_DATABASE_URL": dbURL, "WEFT_PASSWORDS_BCRYPT_COST": "4", "WEFT_DATA_DIR": TempDir(t)}
	if out, code := Run(t, env, "user", "set-admin", localpart, "true"); code != 0 {
		t.Fatalf("set-admin: %d %s", code, out)
	}
	return loginWith(t, srv, localpart, dirPassword)
}

func dirSetState(t *testing.T, cli *mautrix.Client, roomID id.RoomID, typ string, content map[string]any) id.EventID {
	t.Helper()
	resp, err := cli.SendStateEvent(context.Background(), roomID, event.Type{Type: typ, Class: event.StateEventType}, "", content)
	if err != nil {
		t.Fatalf("setting %s: %v", typ, err)
	}
	return resp.EventID
}

func dirCanonicalAlias(t *testing.T, cli *mautrix.Client, roomID id.RoomID) map[string]any {
	t.Helper()
	var c map[string]any
	if err := cli.StateEvent(context.Background(), roomID, event.StateCanonicalAlias, "", &c); err != nil {
		t.Fatal(err)
	}
	return c
}

func dirAliases(t *testing.T, cli *mautrix.Client, roomID id.RoomID) []string {
	t.Helper()
	resp, err := cli.GetAliases(context.Background(), roomID)
	if err != nil {
		t.Fatalf("aliases of %s: %v", roomID, err)
	}
	out := []string{}
	for _, a := range resp.Aliases {
		out = append(out, string(a))
	}
	return out
}

func TestAliasCreateResolveDelete(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	srv, _ := dirServer(t, nil)
	alice := registerUser(t, srv, "alice", dirPassword)
	roomID := createRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "private_chat", RoomAliasName: "home"})

	if _, err := alice.CreateAlias(ctx, "#coffee:localhost", roomID); err != nil {
		t.Fatal(err)
	}
	// Resolving needs no access token.
	res, err := srv.Client().ResolveAlias(ctx, "#coffee:localhost")
	if err != nil {
		t.Fatal(err)
	}
	if res.RoomID != roomID || !slices.Equal(res.Servers, []string{"localhost"}) {
		t.Fatalf("resolved to %+v", res)
	}
	raw := doJSON(t, "GET", clientURL(srv, "v3", "directory", "room", "#coffee:localhost"), "", nil)
	raw.wantOK(t)
	specValidate(t, raw.Body, "directory.yaml", "/directory/room/{roomAlias}", "get", "200")
	// The r0 path is the same endpoint.
	doJSON(t, "GET", clientURL(srv, "r0", "directory", "room", "#coffee:localhost"), "", nil).wantOK(t)
	// createRoom's room_alias_name went through the same directory.
	if res, err := alice.ResolveAlias(ctx, "#home:localhost"); err != nil || res.RoomID != roomID {
		t.Fatalf("createRoom alias: %+v %v", res, err)
	}

	// The room lists both, sorted.
	if got := dirAliases(t, alice, roomID); !slices.Equal(got, []string{"#coffee:localhost", "#home:localhost"}) {
		t.Fatalf("aliases %v", got)
	}
	aliasesRaw := doJSON(t, "GET", clientURL(srv, "v3", "rooms", string(roomID), "aliases"), alice.AccessToken, nil)
	aliasesRaw.wantOK(t)
	specValidate(t, aliasesRaw.Body, "directory.yaml", "/rooms/{roomId}/aliases", "get", "200")

	// The creator deletes it; it is gone.
	if _, err := alice.DeleteAlias(ctx, "#coffee:localhost"); err != nil {
		t.Fatal(err)
	}
	_, err = alice.ResolveAlias(ctx, "#coffee:localhost")
	wantHTTPErr(t, err, 404, "M_NOT_FOUND")
	_, err = alice.DeleteAlias(ctx, "#coffee:localhost")
	wantHTTPErr(t, err, 404, "M_NOT_FOUND")
	if got := dirAliases(t, alice, roomID); !slices.Equal(got, []string{"#home:localhost"}) {
		t.Fatalf("aliases after delete %v", got)
	}
	// A deleted alias can be taken again, for another room.
	other := createRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "private_chat"})
	if _, err := alice.CreateAlias(ctx, "#coffee:localhost", other); err != nil {
		t.Fatal(err)
	}
	if res, err := alice.ResolveAlias(ctx, "#coffee:localhost"); err != nil || res.RoomID != other {
		t.Fatalf("re-created alias: %+v %v", res, err)
	}
}

func TestAliasErrors(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	srv, _ := dirServer(t, nil)
	alice := registerUser(t, srv, "alice", dirPassword)
	bob := registerUser(t, srv, "bob", dirPassword)
	roomID := createRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "private_chat", RoomAliasName: "taken"})
	put := func(alias string, body any, token string) rawResponse {
		return doJSON(t, "PUT", clientURL(srv, "v3", "directory", "room", alias), token, body)
	}
	ok := map[string]any{"room_id": roomID}

	// Taken: 409 M_UNKNOWN, as the spec says, for the same room or another.
	put("#taken:localhost", ok, alice.AccessToken).wantErr(t, 409, "M_UNKNOWN")
	_, err := alice.CreateAlias(ctx, "#taken:localhost", createRoom(t, alice, &mautrix.ReqCreateRoom{}))
	wantHTTPErr(t, err, 409, "M_UNKNOWN")

	// Malformed, or another server's: 400 M_INVALID_PARAM.
	for _, bad := range []string{"nohash:localhost", "#noserver", "#:localhost", "#a:", "#has space:localhost", "#tab\t:localhost",
		"#elsewhere:example.org", "#" + strings.Repeat("x", 250) + ":localhost"} {
		put(bad, ok, alice.AccessToken).wantErr(t, 400, "M_INVALID_PARAM")
	}
	doJSON(t, "GET", clientURL(srv, "v3", "directory", "room", "nohash"), "", nil).wantErr(t, 400, "M_INVALID_PARAM")
	doJSON(t, "DELETE", clientURL(srv, "v3", "directory", "room", "#bad"), alice.AccessToken, nil).wantErr(t, 400, "M_INVALID_PARAM")

	// Bodies.
	put("#fine:localhost", map[string]any{}, alice.AccessToken).wantErr(t, 400, "M_MISSING_PARAM")
	put("#fine:localhost", map[string]any{"room_id": "not-a-room"}, alice.AccessToken).wantErr(t, 400, "M_INVALID_PARAM")
	put("#fine:localhost", map[string]any{"room_id": 7}, alice.AccessToken).wantErr(t, 400, "M_BAD_JSON")
	put("#fine:localhost", "nope", alice.AccessToken).wantErr(t, 400, "M_NOT_JSON")
	put("#fine:localhost", map[string]any{"room_id": "!unknown:localhost"}, alice.AccessToken).wantErr(t, 404, "M_NOT_FOUND")

	// Only members joined to the room may alias it.
	_, err = bob.CreateAlias(ctx, "#bobs:localhost", roomID)
	wantHTTPErr(t, err, 403, "M_FORBIDDEN")
	if _, err := alice.InviteUser(ctx, roomID, &mautrix.ReqInviteUser{UserID: bob.UserID}); err != nil {
		t.Fatal(err)
	}
	_, err = bob.CreateAlias(ctx, "#bobs:localhost", roomID) // invited is not joined
	wantHTTPErr(t, err, 403, "M_FORBIDDEN")

	// Access tokens: required to write, not to resolve.
	put("#fine:localhost", ok, "").wantErr(t, 401, "M_MISSING_TOKEN")
	doJSON(t, "DELETE", clientURL(srv, "v3", "directory", "room", "#taken:localhost"), "", nil).wantErr(t, 401, "M_MISSING_TOKEN")
	doJSON(t, "GET", clientURL(srv, "v3", "rooms", string(roomID), "aliases"), "", nil).wantErr(t, 401, "M_MISSING_TOKEN")

	// Unknown and remote aliases are not found.
	_, err = srv.Client().ResolveAlias(ctx, "#nothing:localhost")
	wantHTTPErr(t, err, 404, "M_NOT_FOUND")
	_, err = srv.Client().ResolveAlias(ctx, "#somewhere:example.org")
	wantHTTPErr(t, err, 404, "M_NOT_FOUND")
	_, err = alice.DeleteAlias(ctx, "#somewhere:example.org")
	wantHTTPErr(t, err, 404, "M_NOT_FOUND")
	specValidateErr(t, doJSON(t, "GET", clientURL(srv, "v3", "directory", "room", "#nothing:localhost"), "", nil))

	// Nothing above changed the directory.
	if got := dirAliases(t, alice, roomID); !slices.Equal(got, []string{"#taken:localhost"}) {
		t.Fatalf("aliases %v", got)
	}
}

func TestAliasDeletePermissions(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	srv, dbURL := dirServer(t, nil)
	alice := registerUser(t, srv, "alice", dirPassword)
	bob := registerUser(t, srv, "bob", dirPassword)
	carol := registerUser(t, srv, "carol", dirPassword)
	root := dirAdmin(t, srv, dbURL, "operator")
	roomID := createRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat", RoomAliasName: "lounge"})
	joinRoom(t, bob, roomID)
	joinRoom(t, carol, roomID)

	// bob (power 0) may alias the room and delete his own alias...
	for _, a := range []id.RoomAlias{"#bob1:localhost", "#bob2:localhost"} {
		if _, err := bob.CreateAlias(ctx, a, roomID); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := bob.DeleteAlias(ctx, "#bob1:localhost"); err != nil {
		t.Fatal(err)
	}
	// ...but not alice's, and carol may not delete bob's.
	_, err := bob.DeleteAlias(ctx, "#lounge:localhost")
	wantHTTPErr(t, err, 403, "M_FORBIDDEN")
	_, err = carol.DeleteAlias(ctx, "#bob2:localhost")
	wantHTTPErr(t, err, 403, "M_FORBIDDEN")
	// With the power to change m.room.canonical_alias carol may.
	dirSetState(t, alice, roomID, "m.room.power_levels", map[string]any{
		"users": map[string]any{string(carol.UserID): 50}, "events": map[string]any{"m.room.canonical_alias": 50},
	})
	if _, err := carol.DeleteAlias(ctx, "#bob2:localhost"); err != nil {
		t.Fatal(err)
	}
	// A server admin may, without being in the room.
	if _, err := alice.CreateAlias(ctx, "#extra:localhost", roomID); err != nil {
		t.Fatal(err)
	}
	if _, err := root.DeleteAlias(ctx, "#extra:localhost"); err != nil {
		t.Fatal(err)
	}
	// An admin sees any room's aliases; a stranger does not.
	if got := dirAliases(t, root, roomID); !slices.Equal(got, []string{"#lounge:localhost"}) {
		t.Fatalf("aliases %v", got)
	}
	dave := registerUser(t, srv, "dave", dirPassword)
	_, err = dave.GetAliases(ctx, roomID)
	wantHTTPErr(t, err, 403, "M_FORBIDDEN")
	_, err = dave.GetAliases(ctx, "!unknown:localhost")
	wantHTTPErr(t, err, 403, "M_FORBIDDEN")
	// Members who left no longer see them.
	if _, err := carol.LeaveRoom(ctx, roomID); err != nil {
		t.Fatal(err)
	}
	_, err = carol.GetAliases(ctx, roomID)
	wantHTTPErr(t, err, 403, "M_FORBIDDEN")
	// In a world-readable room, anyone does.
	dirSetState(t, alice, roomID, "m.room.history_visibility", map[string]any{"history_visibility": "world_readable"})
	if got := dirAliases(t, dave, roomID); !slices.Equal(got, []string{"#lounge:localhost"}) {
		t.Fatalf("world-readable aliases %v", got)
	}
}

// Deleting an alias takes it out of m.room.canonical_alias when the deleter
// may change that event, and deletes it all the same when not.
func TestAliasDeleteUpdatesCanonicalAlias(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	srv, _ := dirServer(t, nil)
	alice := registerUser(t, srv, "alice", dirPassword)
	bob := registerUser(t, srv, "bob", dirPassword)
	roomID := createRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat", RoomAliasName: "main"})
	joinRoom(t, bob, roomID)
	for _, a := range []id.RoomAlias{"#alt1:localhost", "#alt2:localhost"} {
		if _, err := alice.CreateAlias(ctx, a, roomID); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := bob.CreateAlias(ctx, "#bobalt:localhost", roomID); err != nil {
		t.Fatal(err)
	}
	dirSetState(t, alice, roomID, "m.room.canonical_alias", map[string]any{
		"alias": "#main:localhost", "alt_aliases": []string{"#alt1:localhost", "#alt2:localhost", "#bobalt:localhost"},
	})

	if _, err := alice.DeleteAlias(ctx, "#main:localhost"); err != nil {
		t.Fatal(err)
	}
	c := dirCanonicalAlias(t, alice, roomID)
	if _, has := c["alias"]; has || fmt.Sprint(c["alt_aliases"]) != "[#alt1:localhost #alt2:localhost #bobalt:localhost]" {
		t.Fatalf("after deleting the main alias: %v", c)
	}
	if _, err := alice.DeleteAlias(ctx, "#alt1:localhost"); err != nil {
		t.Fatal(err)
	}
	c = dirCanonicalAlias(t, alice, roomID)
	if fmt.Sprint(c["alt_aliases"]) != "[#alt2:localhost #bobalt:localhost]" {
		t.Fatalf("after deleting alt1: %v", c)
	}
	// bob created #bobalt and may delete it, but may not send
	// m.room.canonical_alias: the alias goes, the event stays.
	if _, err := bob.DeleteAlias(ctx, "#bobalt:localhost"); err != nil {
		t.Fatal(err)
	}
	_, err := bob.ResolveAlias(ctx, "#bobalt:localhost")
	wantHTTPErr(t, err, 404, "M_NOT_FOUND")
	c = dirCanonicalAlias(t, alice, roomID)
	if fmt.Sprint(c["alt_aliases"]) != "[#alt2:localhost #bobalt:localhost]" {
		t.Fatalf("after bob's delete: %v", c)
	}
	// A deleted alias cannot be advertised again.
	_, err = alice.SendStateEvent(ctx, roomID, event.StateCanonicalAlias, "", map[string]any{"alias": "#alt1:localhost"})
	wantHTTPErr(t, err, 400, "M_BAD_ALIAS")
}

func dirVisibility(t *testing.T, srv *Server, roomID id.RoomID) string {
	t.Helper()
	r := doJSON(t, "GET", clientURL(srv, "v3", "directory", "list", "room", string(roomID)), "", nil)
	r.wantOK(t)
	specValidate(t, r.Body, "list_public_rooms.yaml", "/directory/list/room/{roomId}", "get", "200")
	v, _ := r.Body["visibility"].(string)
	return v
}

func TestDirectoryVisibility(t *testing.T) {
	t.Parallel()
	srv, dbURL := dirServer(t, nil)
	alice := registerUser(t, srv, "alice", dirPassword)
	bob := registerUser(t, srv, "bob", dirPassword)
	root := dirAdmin(t, srv, dbURL, "operator")
	put := func(cli *mautrix.Client, roomID id.RoomID, body any) rawResponse {
		return doJSON(t, "PUT", clientURL(srv, "v3", "directory", "list", "room", string(roomID)), cli.AccessToken, body)
	}

	// createRoom's visibility sets it.
	pub := createRoom(t, alice, &mautrix.ReqCreateRoom{Visibility: "public", Name: "Published at birth"})
	if v := dirVisibility(t, srv, pub); v != "public" {
		t.Fatalf("visibility %q", v)
	}
	roomID := createRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat", Name: "Later"})
	if v := dirVisibility(t, srv, roomID); v != "private" {
		t.Fatalf("visibility %q", v)
	}
	doJSON(t, "GET", clientURL(srv, "v3", "directory", "list", "room", "!unknown:localhost"), "", nil).wantErr(t, 404, "M_NOT_FOUND")
	put(alice, "!unknown:localhost", map[string]any{"visibility": "public"}).wantErr(t, 404, "M_NOT_FOUND")

	// Outsiders and plain members may not publish; the creator may.
	put(bob, roomID, map[string]any{"visibility": "public"}).wantErr(t, 403, "M_FORBIDDEN")
	joinRoom(t, bob, roomID)
	put(bob, roomID, map[string]any{"visibility": "public"}).wantErr(t, 403, "M_FORBIDDEN")
	put(alice, roomID, map[string]any{"visibility": "secret"}).wantErr(t, 400, "M_INVALID_PARAM")
	put(alice, roomID, "nope").wantErr(t, 400, "M_NOT_JSON")
	doJSON(t, "PUT", clientURL(srv, "v3", "directory", "list", "room", string(roomID)), "", map[string]any{"visibility": "public"}).wantErr(t, 401, "M_MISSING_TOKEN")
	if v := dirVisibility(t, srv, roomID); v != "private" {
		t.Fatalf("visibility after refusals %q", v)
	}
	r := put(alice, roomID, map[string]any{}) // the spec's default is public
	r.wantOK(t)
	if v := dirVisibility(t, srv, roomID); v != "public" {
		t.Fatalf("visibility %q", v)
	}
	if !dirListed(t, srv, roomID) {
		t.Fatal("published room not in /publicRooms")
	}
	// A server admin may unpublish a room they are not in.
	put(root, roomID, map[string]any{"visibility": "private"}).wantOK(t)
	if v := dirVisibility(t, srv, roomID); v != "private" || dirListed(t, srv, roomID) {
		t.Fatalf("after unpublishing: %q, listed %v", v, dirListed(t, srv, roomID))
	}
	// The r0 path.
	doJSON(t, "PUT", clientURL(srv, "r0", "directory", "list", "room", string(roomID)), alice.AccessToken, map[string]any{"visibility": "public"}).wantOK(t)
	if v := dirVisibility(t, srv, roomID); v != "public" {
		t.Fatalf("visibility %q", v)
	}

	// A published room that only invitees can join is not listed until
	// its join rule opens.
	closed := createRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "private_chat", Visibility: "public"})
	if dirListed(t, srv, closed) {
		t.Fatal("invite-only room listed")
	}
	dirSetState(t, alice, closed, "m.room.join_rules", map[string]any{"join_rule": "knock"})
	if !dirListed(t, srv, closed) {
		t.Fatal("knockable published room not listed")
	}
}

// dirListed reports whether /publicRooms lists roomID.
func dirListed(t *testing.T, srv *Server, roomID id.RoomID) bool {
	t.Helper()
	resp, err := srv.Client().PublicRooms(context.Background(), &mautrix.ReqPublicRooms{})
	if err != nil {
		t.Fatal(err)
	}
	return slices.ContainsFunc(resp.Chunk, func(r *mautrix.PublicRoomInfo) bool { return r.RoomID == roomID })
}

func dirPublicRoomIDs(chunk []any) []string {
	var out []string
	for _, c := range chunk {
		out = append(out, c.(map[string]any)["room_id"].(string))
	}
	return out
}

// dirPostPublicRooms is POST /publicRooms, checked against the spec's schema.
func dirPostPublicRooms(t *testing.T, srv *Server, cli *mautrix.Client, query string, body map[string]any) rawResponse {
	t.Helper()
	r := doJSON(t, "POST", clientURL(srv, "v3", "publicRooms")+query, cli.AccessToken, body)
	r.wantOK(t)
	specValidate(t, r.Body, "list_public_rooms.yaml", "/publicRooms", "post", "200")
	return r
}

func TestPublicRoomsListing(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	srv, _ := dirServer(t, nil)
	alice := registerUser(t, srv, "alice", dirPassword)
	var others []*mautrix.Client
	for i := range 3 {
		others = append(others, registerUser(t, srv, fmt.Sprintf("user%d", i), dirPassword))
	}
	topic := "All about Go and coffee"
	// Five published rooms with 4, 3, 2, 1, 1 members; one unpublished.
	big := createRoom(t, alice, &mautrix.ReqCreateRoom{Visibility: "public", Preset: "public_chat", Name: "Big Room", Topic: topic, RoomAliasName: "big"})
	mid := createRoom(t, alice, &mautrix.ReqCreateRoom{Visibility: "public", Preset: "public_chat", Name: "Middle"})
	small := createRoom(t, alice, &mautrix.ReqCreateRoom{Visibility: "public", Preset: "public_chat", Name: "Small"})
	space := createRoom(t, alice, &mautrix.ReqCreateRoom{Visibility: "public", Preset: "public_chat", Name: "A Space",
		CreationContent: map[string]any{"type": "m.space"}})
	readable := createRoom(t, alice, &mautrix.ReqCreateRoom{Visibility: "public", Preset: "public_chat", Name: "Readable",
		InitialState: []*event.Event{
			{Type: event.StateHistoryVisibility, StateKey: new(string), Content: event.Content{Raw: map[string]any{"history_visibility": "world_readable"}}},
			{Type: event.StateGuestAccess, StateKey: new(string), Content: event.Content{Raw: map[string]any{"guest_access": "can_join"}}},
			{Type: event.StateRoomAvatar, StateKey: new(string), Content: event.Content{Raw: map[string]any{"url": "mxc://localhost/avatar"}}},
		}})
	hidden := createRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat", Name: "Hidden Go"})
	for i, cli := range others {
		joinRoom(t, cli, big)
		if i < 2 {
			joinRoom(t, cli, mid)
		}
		if i < 1 {
			joinRoom(t, cli, small)
		}
		joinRoom(t, cli, hidden)
	}
	// Ties (space and readable, one member each) go by room ID.
	tail := []string{string(space), string(readable)}
	slices.Sort(tail)
	order := append([]string{string(big), string(mid), string(small)}, tail...)

	// GET needs no token.
	all, err := srv.Client().PublicRooms(ctx, &mautrix.ReqPublicRooms{})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range all.Chunk {
		got = append(got, string(r.RoomID))
	}
	if !slices.Equal(got, order) || all.TotalRoomCountEstimate != 5 || all.NextBatch != "" || all.PrevBatch != "" {
		t.Fatalf("listing %v (total %d, next %q, prev %q), want %v", got, all.TotalRoomCountEstimate, all.NextBatch, all.PrevBatch, order)
	}
	raw := doJSON(t, "GET", clientURL(srv, "v3", "publicRooms"), "", nil)
	raw.wantOK(t)
	specValidate(t, raw.Body, "list_public_rooms.yaml", "/publicRooms", "get", "200")
	byID := map[string]map[string]any{}
	for _, c := range raw.Body["chunk"].([]any) {
		m := c.(map[string]any)
		byID[m["room_id"].(string)] = m
	}
	b := byID[string(big)]
	if b["name"] != "Big Room" || b["topic"] != topic || b["canonical_alias"] != "#big:localhost" || b["num_joined_members"] != 4.0 ||
		b["world_readable"] != false || b["guest_can_join"] != false || b["join_rule"] != "public" {
		t.Fatalf("big room entry %v", b)
	}
	if _, has := b["room_type"]; has {
		t.Fatalf("room without a type has room_type: %v", b)
	}
	if _, has := b["avatar_url"]; has {
		t.Fatalf("room without an avatar has avatar_url: %v", b)
	}
	if r := byID[string(readable)]; r["world_readable"] != true || r["guest_can_join"] != true || r["avatar_url"] != "mxc://localhost/avatar" {
		t.Fatalf("readable room entry %v", r)
	}
	if s := byID[string(space)]; s["room_type"] != "m.space" {
		t.Fatalf("space entry %v", s)
	}
	// r0 and an explicit server=ours are the same listing.
	doJSON(t, "GET", clientURL(srv, "r0", "publicRooms")+"?server=localhost", "", nil).wantOK(t)

	// Pagination: forward pages of two, then back again.
	page1, err := srv.Client().PublicRooms(ctx, &mautrix.ReqPublicRooms{Limit: 2})
	if err != nil {
		t.Fatal(err)
	}
	page2, err := srv.Client().PublicRooms(ctx, &mautrix.ReqPublicRooms{Limit: 2, Since: page1.NextBatch})
	if err != nil {
		t.Fatal(err)
	}
	page3, err := srv.Client().PublicRooms(ctx, &mautrix.ReqPublicRooms{Limit: 2, Since: page2.NextBatch})
	if err != nil {
		t.Fatal(err)
	}
	back, err := srv.Client().PublicRooms(ctx, &mautrix.ReqPublicRooms{Limit: 2, Since: page3.PrevBatch})
	if err != nil {
		t.Fatal(err)
	}
	ids := func(r *mautrix.RespPublicRooms) []string {
		var out []string
		for _, c := range r.Chunk {
			out = append(out, string(c.RoomID))
		}
		return out
	}
	if !slices.Equal(ids(page1), order[:2]) || page1.PrevBatch != "" || page1.NextBatch == "" ||
		!slices.Equal(ids(page2), order[2:4]) || page2.PrevBatch == "" || page2.NextBatch == "" ||
		!slices.Equal(ids(page3), order[4:]) || page3.NextBatch != "" || page3.PrevBatch == "" ||
		!slices.Equal(ids(back), order[2:4]) || back.NextBatch == "" || back.PrevBatch == "" {
		t.Fatalf("pages %v / %v / %v / back %v", ids(page1), ids(page2), ids(page3), ids(back))
	}
	first, err := srv.Client().PublicRooms(ctx, &mautrix.ReqPublicRooms{Limit: 2, Since: back.PrevBatch})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(ids(first), order[:2]) || first.PrevBatch != "" || first.TotalRoomCountEstimate != 5 {
		t.Fatalf("back to the first page: %v prev %q", ids(first), first.PrevBatch)
	}

	// POST filters: the search term matches name, topic or alias, in any case.
	search := func(term string) []string {
		r := dirPostPublicRooms(t, srv, alice, "", map[string]any{"filter": map[string]any{"generic_search_term": term}})
		return dirPublicRoomIDs(r.Body["chunk"].([]any))
	}
	for term, want := range map[string][]string{
		"COFFEE":     {string(big)},   // topic
		"big":        {string(big)},   // name and alias
		"#big:local": {string(big)},   // alias
		"midd":       {string(mid)},   // name
		"go":         {string(big)},   // not the unpublished "Hidden Go"
		"nothing":    nil,             // no match
		"%":          nil,             // LIKE wildcards are plain text
		"":           order,           // empty: everything
		"  small ":   {string(small)}, // trimmed
	} {
		if got := search(term); !slices.Equal(got, want) {
			t.Errorf("search %q: %v, want %v", term, got, want)
		}
	}
	types := func(list ...any) []string {
		r := dirPostPublicRooms(t, srv, alice, "", map[string]any{"filter": map[string]any{"room_types": list}})
		return dirPublicRoomIDs(r.Body["chunk"].([]any))
	}
	if got := types("m.space"); !slices.Equal(got, []string{string(space)}) {
		t.Errorf("spaces: %v", got)
	}
	if got := types(nil); slices.Contains(got, string(space)) || len(got) != 4 {
		t.Errorf("untyped rooms: %v", got)
	}
	if got := types(nil, "m.space"); !slices.Equal(got, order) {
		t.Errorf("untyped and spaces: %v", got)
	}
	if got := types(); !slices.Equal(got, order) {
		t.Errorf("empty room_types: %v", got)
	}
	filtered := dirPostPublicRooms(t, srv, alice, "?server=localhost", map[string]any{"limit": 1, "filter": map[string]any{"room_types": []any{nil}}})
	if ids := dirPublicRoomIDs(filtered.Body["chunk"].([]any)); !slices.Equal(ids, order[:1]) || filtered.Body["total_room_count_estimate"] != 4.0 || filtered.Body["next_batch"] == nil {
		t.Fatalf("filtered page %s", filtered.Raw)
	}
	if r := dirPostPublicRooms(t, srv, alice, "", map[string]any{"third_party_instance_id": "irc-libera"}); len(r.Body["chunk"].([]any)) != 0 {
		t.Fatalf("a bridged network's rooms: %s", r.Raw)
	}

	// A redacted name is no name.
	nameEvent := dirSetState(t, alice, small, "m.room.name", map[string]any{"name": "Renamed"})
	if _, err := alice.RedactEvent(ctx, small, nameEvent); err != nil {
		t.Fatal(err)
	}
	raw = doJSON(t, "GET", clientURL(srv, "v3", "publicRooms"), "", nil)
	for _, c := range raw.Body["chunk"].([]any) {
		if m := c.(map[string]any); m["room_id"] == string(small) {
			if _, has := m["name"]; has {
				t.Fatalf("redacted name still listed: %v", m)
			}
		}
	}
	// Member counts follow joins and leaves, and so does the order.
	if _, err := others[0].LeaveRoom(ctx, big); err != nil {
		t.Fatal(err)
	}
	for _, cli := range others[1:] {
		if _, err := cli.LeaveRoom(ctx, big); err != nil {
			t.Fatal(err)
		}
	}
	after, err := srv.Client().PublicRooms(ctx, &mautrix.ReqPublicRooms{Limit: 1})
	if err != nil {
		t.Fatal(err)
	}
	if len(after.Chunk) != 1 || after.Chunk[0].RoomID != mid || after.Chunk[0].NumJoinedMembers != 3 {
		t.Fatalf("after leaving the big room: %+v", after.Chunk)
	}
}

func TestPublicRoomsErrors(t *testing.T) {
	t.Parallel()
	srv, _ := dirServer(t, nil)
	alice := registerUser(t, srv, "alice", dirPassword)
	get := func(query string) rawResponse {
		return doJSON(t, "GET", clientURL(srv, "v3", "publicRooms")+query, "", nil)
	}
	get("?limit=-1").wantErr(t, 400, "M_INVALID_PARAM")
	get("?limit=ten").wantErr(t, 400, "M_INVALID_PARAM")
	get("?since=garbage").wantErr(t, 400, "M_INVALID_PARAM")
	get("?since="+url.QueryEscape("bjEwX25vdGFyb29t")).wantErr(t, 400, "M_INVALID_PARAM") // "n10_notaroom"
	// Federation is not there yet: only our own directory.
	get("?server=example.org").wantErr(t, 400, "M_INVALID_PARAM")
	_, err := srv.Client().PublicRooms(context.Background(), &mautrix.ReqPublicRooms{Server: "matrix.org"})
	wantHTTPErr(t, err, 400, "M_INVALID_PARAM")

	post := func(token string, body any) rawResponse {
		return doJSON(t, "POST", clientURL(srv, "v3", "publicRooms"), token, body)
	}
	post("", map[string]any{}).wantErr(t, 401, "M_MISSING_TOKEN")
	post(alice.AccessToken, "nope").wantErr(t, 400, "M_NOT_JSON")
	post(alice.AccessToken, map[string]any{"limit": "ten"}).wantErr(t, 400, "M_BAD_JSON")
	post(alice.AccessToken, map[string]any{"limit": -5}).wantErr(t, 400, "M_INVALID_PARAM")
	post(alice.AccessToken, map[string]any{"filter": map[string]any{"room_types": "m.space"}}).wantErr(t, 400, "M_BAD_JSON")
	post(alice.AccessToken, map[string]any{"filter": map[string]any{"generic_search_term": 5}}).wantErr(t, 400, "M_BAD_JSON")
	post(alice.AccessToken, map[string]any{"since": "p%%%"}).wantErr(t, 400, "M_INVALID_PARAM")
	// An empty directory is an empty chunk.
	r := post(alice.AccessToken, map[string]any{})
	r.wantOK(t)
	if string(r.Raw) != `{"chunk":[],"total_room_count_estimate":0}` {
		t.Fatalf("empty directory: %s", r.Raw)
	}
}

func TestThirdPartyLookups(t *testing.T) {
	t.Parallel()
	srv, _ := dirServer(t, nil)
	alice := registerUser(t, srv, "alice", dirPassword)
	r := doJSON(t, "GET", clientURL(srv, "v3", "thirdparty", "protocols"), alice.AccessToken, nil)
	r.wantOK(t)
	if string(r.Raw) != "{}" {
		t.Fatalf("protocols %s", r.Raw)
	}
	doJSON(t, "GET", clientURL(srv, "r0", "thirdparty", "protocols"), alice.AccessToken, nil).wantOK(t)
	doJSON(t, "GET", clientURL(srv, "v3", "thirdparty", "protocols"), "", nil).wantErr(t, 401, "M_MISSING_TOKEN")
	for _, p := range []string{"protocol", "location", "user"} {
		doJSON(t, "GET", clientURL(srv, "v3", "thirdparty", p, "irc"), alice.AccessToken, nil).wantErr(t, 404, "M_NOT_FOUND")
	}
	for _, p := range []string{"location?alias=%23a:localhost", "user?userid=@a:localhost"} {
		r := doJSON(t, "GET", clientURL(srv, "v3", "thirdparty")+"/"+p, alice.AccessToken, nil)
		r.wantOK(t)
		if string(r.Raw) != "[]" {
			t.Fatalf("%s: %s", p, r.Raw)
		}
	}
}

// dirReport is one row of the operator's reports table.
type dirReport struct {
	Reporter, RoomID, EventID, Reason string
	Score                             *int
	At                                time.Time
}

func dirReports(t *testing.T, dbURL string) []dirReport {
	t.Helper()
	var out []dirReport
	withDB(t, dbURL, func(ctx context.Context, conn *pgx.Conn) {
		rows, err := conn.Query(ctx, `SELECT reporter, room_id, coalesce(event_id, ''), reason, score, created_at FROM content_reports ORDER BY report_id`)
		if err != nil {
			t.Fatal(err)
		}
		out, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (dirReport, error) {
			var r dirReport
			err := row.Scan(&r.Reporter, &r.RoomID, &r.EventID, &r.Reason, &r.Score, &r.At)
			return r, err
		})
		if err != nil {
			t.Fatal(err)
		}
	})
	return out
}

func TestReportContent(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	srv, dbURL := dirServer(t, nil)
	alice := registerUser(t, srv, "alice", dirPassword)
	bob := registerUser(t, srv, "bob", dirPassword)
	roomID := createRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	dirSetState(t, alice, roomID, "m.room.history_visibility", map[string]any{"history_visibility": "joined"})
	early, err := alice.SendText(ctx, roomID, "before bob")
	if err != nil {
		t.Fatal(err)
	}
	report := func(cli *mautrix.Client, room id.RoomID, ev id.EventID, body any) rawResponse {
		return doJSON(t, "POST", clientURL(srv, "v3", "rooms", string(room), "report", string(ev)), cli.AccessToken, body)
	}

	// Not joined: the event is "not found", whatever it is.
	wantHTTPErr(t, bob.ReportEvent(ctx, roomID, early.EventID, "spam"), 404, "M_NOT_FOUND")
	report(bob, roomID, early.EventID, map[string]any{"reason": "spam"}).wantErr(t, 404, "M_NOT_FOUND")
	joinRoom(t, bob, roomID)
	later, err := alice.SendText(ctx, roomID, "after bob")
	if err != nil {
		t.Fatal(err)
	}
	// Joined, but history visibility hides what came before the join.
	report(bob, roomID, early.EventID, map[string]any{"reason": "spam"}).wantErr(t, 404, "M_NOT_FOUND")
	// A visible event: reported, with reason and the deprecated score.
	r := report(bob, roomID, later.EventID, map[string]any{"reason": "rude", "score": -100})
	r.wantOK(t)
	if string(r.Raw) != "{}" {
		t.Fatalf("report answer %s", r.Raw)
	}
	if err := bob.ReportEvent(ctx, roomID, later.EventID, ""); err != nil {
		t.Fatal(err)
	}
	// The r0 path.
	doJSON(t, "POST", clientURL(srv, "r0", "rooms", string(roomID), "report", string(later.EventID)), bob.AccessToken, map[string]any{"reason": "r0"}).wantOK(t)

	// Unknown events, events of another room, bad bodies.
	report(bob, roomID, "$nope", map[string]any{"reason": "x"}).wantErr(t, 404, "M_NOT_FOUND")
	other := createRoom(t, bob, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	report(bob, other, later.EventID, map[string]any{"reason": "x"}).wantErr(t, 404, "M_NOT_FOUND")
	report(bob, "!unknown:localhost", later.EventID, map[string]any{}).wantErr(t, 404, "M_NOT_FOUND")
	report(bob, roomID, later.EventID, map[string]any{"score": -101}).wantErr(t, 400, "M_INVALID_PARAM")
	report(bob, roomID, later.EventID, map[string]any{"score": 5}).wantErr(t, 400, "M_INVALID_PARAM")
	report(bob, roomID, later.EventID, map[string]any{"score": -1.5}).wantErr(t, 400, "M_BAD_JSON")
	report(bob, roomID, later.EventID, map[string]any{"reason": 3}).wantErr(t, 400, "M_BAD_JSON")
	report(bob, roomID, later.EventID, "nope").wantErr(t, 400, "M_NOT_JSON")
	doJSON(t, "POST", clientURL(srv, "v3", "rooms", string(roomID), "report", string(later.EventID)), "", map[string]any{}).wantErr(t, 401, "M_MISSING_TOKEN")

	// Rooms (spec v1.13): no need to be joined, but the room must exist.
	carol := registerUser(t, srv, "carol", dirPassword)
	if err := carol.ReportRoom(ctx, roomID, "the whole room is spam"); err != nil {
		t.Fatal(err)
	}
	err = carol.ReportRoom(ctx, "!unknown:localhost", "x")
	wantHTTPErr(t, err, 404, "M_NOT_FOUND")
	doJSON(t, "POST", clientURL(srv, "v3", "rooms", string(roomID), "report"), carol.AccessToken, map[string]any{"reason": 1}).wantErr(t, 400, "M_BAD_JSON")

	got := dirReports(t, dbURL)
	minus100 := -100
	want := []dirReport{
		{Reporter: string(bob.UserID), RoomID: string(roomID), EventID: string(later.EventID), Reason: "rude", Score: &minus100},
		{Reporter: string(bob.UserID), RoomID: string(roomID), EventID: string(later.EventID), Reason: ""},
		{Reporter: string(bob.UserID), RoomID: string(roomID), EventID: string(later.EventID), Reason: "r0"},
		{Reporter: string(carol.UserID), RoomID: string(roomID), Reason: "the whole room is spam"},
	}
	if len(got) != len(want) {
		t.Fatalf("reports %+v, want %+v", got, want)
	}
	for i := range want {
		g, w := got[i], want[i]
		scoreOK := (g.Score == nil) == (w.Score == nil) && (g.Score == nil || *g.Score == *w.Score)
		if g.Reporter != w.Reporter || g.RoomID != w.RoomID || g.EventID != w.EventID || g.Reason != w.Reason || !scoreOK ||
			time.Since(g.At) > time.Minute {
			t.Errorf("report %d: %+v, want %+v", i, g, w)
		}
	}
}

// Reports take from the per-user write bucket.
func TestReportRateLimited(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	srv, _ := dirServer(t, map[string]string{
		"WEFT_RATE_LIMITS_ENABLED":             "true",
		"WEFT_RATE_LIMITS_WRITES_PER_SECOND":   "0.01",
		"WEFT_RATE_LIMITS_WRITES_BURST":        "4",
		"WEFT_RATE_LIMITS_REGISTER_BURST":      "10",
		"WEFT_RATE_LIMITS_REGISTER_PER_SECOND": "10",
	})
	alice := registerUser(t, srv, "alice", dirPassword)
	bob := registerUser(t, srv, "bob", dirPassword)
	roomID := createRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	msg, err := alice.SendText(ctx, roomID, "hello")
	if err != nil {
		t.Fatal(err)
	}
	joinRoom(t, bob, roomID) // one write
	for i := range 3 {
		if err := bob.ReportEvent(ctx, roomID, msg.EventID, fmt.Sprint("report ", i)); err != nil {
			t.Fatalf("report %d: %v", i, err)
		}
	}
	r := doJSON(t, "POST", clientURL(srv, "v3", "rooms", string(roomID), "report", string(msg.EventID)), bob.AccessToken, map[string]any{"reason": "one too many"})
	r.wantErr(t, 429, "M_LIMIT_EXCEEDED")
	if ms, _ := r.Body["retry_after_ms"].(float64); ms <= 0 {
		t.Fatalf("no retry_after_ms: %s", r.Raw)
	}
	err = bob.ReportRoom(ctx, roomID, "also limited")
	wantHTTPErr(t, err, 429, "M_LIMIT_EXCEEDED")
}
