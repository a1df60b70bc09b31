package e2e

import (
	"context"
	"crypto/hmac"
	"crypto/sha1"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// End-to-end tests of profiles, account data, filters, capabilities, the
// user directory, deactivation, third-party IDs and TURN credentials.

const profilePassword = "correct horse battery staple"

// profileDeactivate deactivates cli's account through UIA with its password.
func profileDeactivate(t *testing.T, srv *Server, cli *mautrix.Client, password string) {
	t.Helper()
	u := clientURL(srv, "v3", "account", "deactivate")
	first := doJSON(t, "POST", u, cli.AccessToken, map[string]any{})
	if first.Status != http.StatusUnauthorized {
		t.Fatalf("deactivate without auth: got %d %s, want a 401 UIA challenge", first.Status, first.Raw)
	}
	session, _ := first.Body["session"].(string)
	if session == "" {
		t.Fatalf("UIA challenge without a session: %s", first.Raw)
	}
	resp := doJSON(t, "POST", u, cli.AccessToken, map[string]any{"auth": map[string]any{
		"type":       "m.login.password",
		"session":    session,
		"password":   password,
		"identifier": map[string]any{"type": "m.id.user", "user": cli.UserID.String()},
	}})
	resp.wantOK(t)
}

// profileSearch runs a directory search through mautrix.
func profileSearch(t *testing.T, cli *mautrix.Client, term string, limit int) *mautrix.RespSearchUserDirectory {
	t.Helper()
	resp, err := cli.SearchUserDirectory(context.Background(), term, limit)
	if err != nil {
		t.Fatalf("searching %q: %v", term, err)
	}
	return resp
}

// profileSearchIDs is the sorted user IDs of a directory search.
func profileSearchIDs(t *testing.T, cli *mautrix.Client, term string) []id.UserID {
	t.Helper()
	resp := profileSearch(t, cli, term, 0)
	if resp.Limited {
		t.Fatalf("search %q: limited with the default limit", term)
	}
	out := []id.UserID{}
	for _, r := range resp.Results {
		out = append(out, r.UserID)
	}
	slices.Sort(out)
	return out
}

func profileWantIDs(t *testing.T, term string, got []id.UserID, want ...id.UserID) {
	t.Helper()
	if want == nil {
		want = []id.UserID{}
	}
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("search %q: got %v, want %v", term, got, want)
	}
}

func TestProfileSetAndGet(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	srv := startAccounts(t, nil)
	alice := registerUser(t, srv, "alice", profilePassword)
	anon := srv.Client()

	// A new account's display name is its localpart.
	p, err := anon.GetProfile(ctx, alice.UserID)
	if err != nil {
		t.Fatal(err)
	}
	if p.DisplayName != "alice" || !p.AvatarURL.IsEmpty() {
		t.Fatalf("new profile = %+v, want displayname alice and no avatar", p)
	}

	if err := alice.SetDisplayName(ctx, "Alice Liddell ✨"); err != nil {
		t.Fatal(err)
	}
	avatar := id.ContentURI{Homeserver: "localhost", FileID: "AbCdEf123"}
	if err := alice.SetAvatarURL(ctx, avatar); err != nil {
		t.Fatal(err)
	}

	// Read back without an access token.
	p, err = anon.GetProfile(ctx, alice.UserID)
	if err != nil {
		t.Fatal(err)
	}
	if p.DisplayName != "Alice Liddell ✨" || p.AvatarURL != avatar || len(p.Extra) != 0 {
		t.Fatalf("profile = %+v, want the new name and %s", p, avatar)
	}
	dn, err := anon.GetDisplayName(ctx, alice.UserID)
	if err != nil || dn.DisplayName != "Alice Liddell ✨" {
		t.Fatalf("GET displayname = %+v, %v", dn, err)
	}
	av, err := anon.GetAvatarURL(ctx, alice.UserID)
	if err != nil || av != avatar {
		t.Fatalf("GET avatar_url = %v, %v", av, err)
	}

	// The r0 paths are aliases of the same endpoints.
	r0 := doJSON(t, "GET", clientURL(srv, "r0", "profile", alice.UserID.String()), "", nil)
	r0.wantOK(t)
	if r0.Body["displayname"] != "Alice Liddell ✨" || r0.Body["avatar_url"] != avatar.String() {
		t.Fatalf("r0 profile = %s", r0.Raw)
	}
	doJSON(t, "PUT", clientURL(srv, "r0", "profile", alice.UserID.String(), "displayname"), alice.AccessToken,
		map[string]any{"displayname": "Alice via r0"}).wantOK(t)
	if dn, err := anon.GetDisplayName(ctx, alice.UserID); err != nil || dn.DisplayName != "Alice via r0" {
		t.Fatalf("after r0 PUT: displayname = %+v, %v", dn, err)
	}

	// An empty avatar_url removes the avatar.
	doJSON(t, "PUT", clientURL(srv, "v3", "profile", alice.UserID.String(), "avatar_url"), alice.AccessToken,
		map[string]any{"avatar_url": ""}).wantOK(t)
	full := doJSON(t, "GET", clientURL(srv, "v3", "profile", alice.UserID.String()), "", nil)
	full.wantOK(t)
	if _, ok := full.Body["avatar_url"]; ok || full.Body["displayname"] != "Alice via r0" {
		t.Fatalf("after removing the avatar: %s", full.Raw)
	}
	_, err = anon.GetAvatarURL(ctx, alice.UserID)
	wantHTTPErr(t, err, http.StatusNotFound, "M_NOT_FOUND")
}

func TestProfileErrors(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	srv := startAccounts(t, nil)
	alice := registerUser(t, srv, "alice", profilePassword)
	bob := registerUser(t, srv, "bob", profilePassword)
	if err := alice.SetDisplayName(ctx, "Alice"); err != nil {
		t.Fatal(err)
	}
	aliceURL := func(field string) string {
		return clientURL(srv, "v3", "profile", alice.UserID.String(), field)
	}

	t.Run("unknown local user", func(t *testing.T) {
		_, err := srv.Client().GetProfile(ctx, "@nobody:localhost")
		wantHTTPErr(t, err, http.StatusNotFound, "M_NOT_FOUND")
		_, err = srv.Client().GetDisplayName(ctx, "@nobody:localhost")
		wantHTTPErr(t, err, http.StatusNotFound, "M_NOT_FOUND")
	})

	t.Run("someone else's profile", func(t *testing.T) {
		doJSON(t, "PUT", aliceURL("displayname"), bob.AccessToken, map[string]any{"displayname": "pwned"}).
			wantErr(t, http.StatusForbidden, "M_FORBIDDEN")
		doJSON(t, "PUT", aliceURL("avatar_url"), bob.AccessToken, map[string]any{"avatar_url": "mxc://localhost/pwned"}).
			wantErr(t, http.StatusForbidden, "M_FORBIDDEN")
		p, err := bob.GetProfile(ctx, alice.UserID)
		if err != nil {
			t.Fatal(err)
		}
		if p.DisplayName != "Alice" || !p.AvatarURL.IsEmpty() {
			t.Fatalf("alice's profile changed by bob: %+v", p)
		}
	})

	t.Run("avatar_url not mxc", func(t *testing.T) {
		for _, bad := range []string{"https://example.org/a.png", "mxc://", "mxc://localhost", "not a uri"} {
			doJSON(t, "PUT", aliceURL("avatar_url"), alice.AccessToken, map[string]any{"avatar_url": bad}).
				wantErr(t, http.StatusBadRequest, "M_INVALID_PARAM")
		}
		if _, err := alice.GetOwnAvatarURL(ctx); err == nil {
			t.Fatal("a refused avatar_url was stored")
		}
	})

	t.Run("missing field", func(t *testing.T) {
		doJSON(t, "PUT", aliceURL("displayname"), alice.AccessToken, map[string]any{}).
			wantErr(t, http.StatusBadRequest, "M_MISSING_PARAM")
		doJSON(t, "PUT", aliceURL("avatar_url"), alice.AccessToken, map[string]any{"displayname": "x"}).
			wantErr(t, http.StatusBadRequest, "M_MISSING_PARAM")
	})

	t.Run("wrong type and not JSON", func(t *testing.T) {
		doJSON(t, "PUT", aliceURL("displayname"), alice.AccessToken, map[string]any{"displayname": 42}).
			wantErr(t, http.StatusBadRequest, "M_BAD_JSON")
		doJSON(t, "PUT", aliceURL("displayname"), alice.AccessToken, "displayname=x").
			wantErr(t, http.StatusBadRequest, "M_NOT_JSON")
	})

	t.Run("NUL in display name", func(t *testing.T) {
		doJSON(t, "PUT", aliceURL("displayname"), alice.AccessToken, `{"displayname":"a\u0000b"}`).
			wantErr(t, http.StatusBadRequest, "M_INVALID_PARAM")
	})

	t.Run("display name too long", func(t *testing.T) {
		doJSON(t, "PUT", aliceURL("displayname"), alice.AccessToken, map[string]any{"displayname": strings.Repeat("é", 257)}).
			wantErr(t, http.StatusBadRequest, "M_INVALID_PARAM")
		doJSON(t, "PUT", aliceURL("displayname"), alice.AccessToken, map[string]any{"displayname": strings.Repeat("é", 256)}).
			wantOK(t)
	})
}

func TestAccountDataRoundTrip(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	srv := startAccounts(t, nil)
	alice := registerUser(t, srv, "alice", profilePassword)
	room := id.RoomID("!someroom:localhost")

	t.Run("global", func(t *testing.T) {
		want := map[string]any{"theme": "dark", "nested": map[string]any{"n": 1.5, "list": []any{"a", true, nil}}, "html": "<b>&</b>"}
		if err := alice.SetAccountData(ctx, "org.example.settings", want); err != nil {
			t.Fatal(err)
		}
		var got map[string]any
		if err := alice.GetAccountData(ctx, "org.example.settings", &got); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("got %v, want %v", got, want)
		}
		// A second PUT replaces the content.
		if err := alice.SetAccountData(ctx, "org.example.settings", map[string]any{"theme": "light"}); err != nil {
			t.Fatal(err)
		}
		got = nil
		if err := alice.GetAccountData(ctx, "org.example.settings", &got); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, map[string]any{"theme": "light"}) {
			t.Fatalf("after replacing: got %v", got)
		}
	})

	t.Run("per room, separate from global", func(t *testing.T) {
		tags := map[string]any{"tags": map[string]any{"m.favourite": map[string]any{"order": 0.25}}}
		if err := alice.SetRoomAccountData(ctx, room, "org.example.room", tags); err != nil {
			t.Fatal(err)
		}
		var got map[string]any
		if err := alice.GetRoomAccountData(ctx, room, "org.example.room", &got); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, tags) {
			t.Fatalf("got %v, want %v", got, tags)
		}
		// Not visible globally, nor in another room.
		wantHTTPErr(t, alice.GetAccountData(ctx, "org.example.room", &got), http.StatusNotFound, "M_NOT_FOUND")
		wantHTTPErr(t, alice.GetRoomAccountData(ctx, "!other:localhost", "org.example.room", &got), http.StatusNotFound, "M_NOT_FOUND")
		// And global data is not visible in a room.
		wantHTTPErr(t, alice.GetRoomAccountData(ctx, room, "org.example.settings", &got), http.StatusNotFound, "M_NOT_FOUND")
	})

	t.Run("NUL inside a string", func(t *testing.T) {
		for _, u := range []string{
			clientURL(srv, "v3", "user", alice.UserID.String(), "account_data", "org.example.nul"),
			clientURL(srv, "v3", "user", alice.UserID.String(), "rooms", room.String(), "account_data", "org.example.nul"),
		} {
			doJSON(t, "PUT", u, alice.AccessToken, `{"text":"a\u0000b","k\u0000":1}`).wantOK(t)
			got := doJSON(t, "GET", u, alice.AccessToken, nil)
			got.wantOK(t)
			if got.Body["text"] != "a\x00b" || got.Body["k\x00"] != 1.0 || len(got.Body) != 2 {
				t.Fatalf("GET %s = %q", u, got.Raw)
			}
		}
	})

	t.Run("r0 alias", func(t *testing.T) {
		u := clientURL(srv, "r0", "user", alice.UserID.String(), "account_data", "org.example.r0")
		doJSON(t, "PUT", u, alice.AccessToken, map[string]any{"v": "r0"}).wantOK(t)
		var got map[string]any
		if err := alice.GetAccountData(ctx, "org.example.r0", &got); err != nil || got["v"] != "r0" {
			t.Fatalf("v3 read of r0 write: %v, %v", got, err)
		}
	})
}

func TestAccountDataErrors(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	srv := startAccounts(t, nil)
	alice := registerUser(t, srv, "alice", profilePassword)
	bob := registerUser(t, srv, "bob", profilePassword)
	room := "!someroom:localhost"
	global := func(user id.UserID, typ string) string {
		return clientURL(srv, "v3", "user", user.String(), "account_data", typ)
	}
	inRoom := func(user id.UserID, roomID, typ string) string {
		return clientURL(srv, "v3", "user", user.String(), "rooms", roomID, "account_data", typ)
	}
	if err := alice.SetAccountData(ctx, "org.example.secret", map[string]any{"s": 1}); err != nil {
		t.Fatal(err)
	}
	if err := alice.SetRoomAccountData(ctx, id.RoomID(room), "org.example.secret", map[string]any{"s": 2}); err != nil {
		t.Fatal(err)
	}

	t.Run("another user's", func(t *testing.T) {
		for _, u := range []string{global(alice.UserID, "org.example.secret"), inRoom(alice.UserID, room, "org.example.secret")} {
			doJSON(t, "GET", u, bob.AccessToken, nil).wantErr(t, http.StatusForbidden, "M_FORBIDDEN")
			doJSON(t, "PUT", u, bob.AccessToken, map[string]any{"s": "bob"}).wantErr(t, http.StatusForbidden, "M_FORBIDDEN")
			got := doJSON(t, "GET", u, alice.AccessToken, nil)
			got.wantOK(t)
			if got.Body["s"] == "bob" {
				t.Fatalf("bob overwrote alice's account data at %s", u)
			}
		}
	})

	t.Run("unset type", func(t *testing.T) {
		doJSON(t, "GET", global(alice.UserID, "org.example.never"), alice.AccessToken, nil).wantErr(t, http.StatusNotFound, "M_NOT_FOUND")
		doJSON(t, "GET", inRoom(alice.UserID, room, "org.example.never"), alice.AccessToken, nil).wantErr(t, http.StatusNotFound, "M_NOT_FOUND")
	})

	t.Run("server-managed types", func(t *testing.T) {
		doJSON(t, "PUT", global(alice.UserID, "m.fully_read"), alice.AccessToken, map[string]any{"event_id": "$x"}).
			wantErr(t, http.StatusBadRequest, "M_BAD_JSON")
		doJSON(t, "PUT", inRoom(alice.UserID, room, "m.fully_read"), alice.AccessToken, map[string]any{"event_id": "$x"}).
			wantErr(t, http.StatusBadRequest, "M_BAD_JSON")
		doJSON(t, "PUT", global(alice.UserID, "m.push_rules"), alice.AccessToken, map[string]any{"global": map[string]any{}}).
			wantErr(t, http.StatusBadRequest, "M_BAD_JSON")
		doJSON(t, "GET", inRoom(alice.UserID, room, "m.fully_read"), alice.AccessToken, nil).wantErr(t, http.StatusNotFound, "M_NOT_FOUND")
	})

	t.Run("content not a JSON object", func(t *testing.T) {
		for _, body := range []string{"not json", `{"a":`, `[1,2,3]`, `"a string"`, `42`, ``} {
			doJSON(t, "PUT", global(alice.UserID, "org.example.bad"), alice.AccessToken, body).
				wantErr(t, http.StatusBadRequest, "M_NOT_JSON")
			doJSON(t, "PUT", inRoom(alice.UserID, room, "org.example.bad"), alice.AccessToken, body).
				wantErr(t, http.StatusBadRequest, "M_NOT_JSON")
		}
		doJSON(t, "GET", global(alice.UserID, "org.example.bad"), alice.AccessToken, nil).wantErr(t, http.StatusNotFound, "M_NOT_FOUND")
	})

	t.Run("NUL in the type", func(t *testing.T) {
		u := srv.URL + "/_matrix/client/v3/user/" + alice.UserID.String() + "/account_data/org.example%00x"
		doJSON(t, "PUT", u, alice.AccessToken, map[string]any{"a": 1}).wantErr(t, http.StatusBadRequest, "M_INVALID_PARAM")
		doJSON(t, "GET", u, alice.AccessToken, nil).wantErr(t, http.StatusBadRequest, "M_INVALID_PARAM")
	})

	t.Run("invalid room ID", func(t *testing.T) {
		for _, bad := range []string{"someroom:localhost", "#alias:localhost", "!"} {
			r := doJSON(t, "PUT", inRoom(alice.UserID, bad, "org.example.x"), alice.AccessToken, map[string]any{"a": 1})
			r.wantErr(t, http.StatusBadRequest, "M_INVALID_PARAM")
			r = doJSON(t, "GET", inRoom(alice.UserID, bad, "org.example.x"), alice.AccessToken, nil)
			r.wantErr(t, http.StatusBadRequest, "M_INVALID_PARAM")
		}
	})
}

func TestFilterCreateAndGet(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	srv := startAccounts(t, nil)
	alice := registerUser(t, srv, "alice", profilePassword)
	bob := registerUser(t, srv, "bob", profilePassword)
	filterURL := func(user id.UserID, fid string) string {
		if fid == "" {
			return clientURL(srv, "v3", "user", user.String(), "filter")
		}
		return clientURL(srv, "v3", "user", user.String(), "filter", fid)
	}

	sent := &mautrix.Filter{
		EventFields: []string{"type", "content.body"},
		EventFormat: mautrix.EventFormatClient,
		Presence:    &mautrix.FilterPart{NotTypes: []event.Type{{Type: "*"}}},
		Room: &mautrix.RoomFilter{
			IncludeLeave: true,
			Rooms:        []id.RoomID{"!a:localhost"},
			State:        &mautrix.FilterPart{LazyLoadMembers: true},
			Timeline:     &mautrix.FilterPart{Limit: 10, Types: []event.Type{event.EventMessage}, Senders: []id.UserID{"@bob:localhost"}},
		},
	}
	created, err := alice.CreateFilter(ctx, sent)
	if err != nil {
		t.Fatal(err)
	}
	if created.FilterID == "" {
		t.Fatal("empty filter_id")
	}
	got := doJSON(t, "GET", filterURL(alice.UserID, created.FilterID), alice.AccessToken, nil)
	got.wantOK(t)
	var want map[string]any
	raw, _ := json.Marshal(sent)
	if err := json.Unmarshal(raw, &want); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got.Body, want) {
		t.Fatalf("filter read back = %s, want %s", got.Raw, raw)
	}

	// Unknown fields are kept, and each filter gets its own ID.
	custom := `{"room":{"timeline":{"limit":0}},"org.example.custom":{"x":[1,"two"]}}`
	r := doJSON(t, "POST", filterURL(alice.UserID, ""), alice.AccessToken, custom)
	r.wantOK(t)
	fid2, _ := r.Body["filter_id"].(string)
	if fid2 == "" || fid2 == created.FilterID {
		t.Fatalf("second filter_id %q (first %q)", fid2, created.FilterID)
	}
	got2 := doJSON(t, "GET", filterURL(alice.UserID, fid2), alice.AccessToken, nil)
	got2.wantOK(t)
	var wantCustom map[string]any
	_ = json.Unmarshal([]byte(custom), &wantCustom)
	if !reflect.DeepEqual(got2.Body, wantCustom) {
		t.Fatalf("custom filter read back = %s, want %s", got2.Raw, custom)
	}

	// The r0 alias reads the same filter.
	r0 := doJSON(t, "GET", clientURL(srv, "r0", "user", alice.UserID.String(), "filter", created.FilterID), alice.AccessToken, nil)
	r0.wantOK(t)
	if !reflect.DeepEqual(r0.Body, want) {
		t.Fatalf("r0 filter = %s", r0.Raw)
	}

	t.Run("invalid filter", func(t *testing.T) {
		doJSON(t, "POST", filterURL(alice.UserID, ""), alice.AccessToken, `{"room":{"timeline":{"limit":"x"}}}`).
			wantErr(t, http.StatusBadRequest, "M_BAD_JSON")
		doJSON(t, "POST", filterURL(alice.UserID, ""), alice.AccessToken, `{"event_format":"xml"}`).
			wantErr(t, http.StatusBadRequest, "M_BAD_JSON")
		doJSON(t, "POST", filterURL(alice.UserID, ""), alice.AccessToken, `{"room":{"rooms":["notaroom"]}}`).
			wantErr(t, http.StatusBadRequest, "M_BAD_JSON")
		doJSON(t, "POST", filterURL(alice.UserID, ""), alice.AccessToken, `not json`).
			wantErr(t, http.StatusBadRequest, "M_NOT_JSON")
		doJSON(t, "POST", filterURL(alice.UserID, ""), alice.AccessToken, `[]`).
			wantErr(t, http.StatusBadRequest, "M_NOT_JSON")
	})

	t.Run("another user's filter", func(t *testing.T) {
		doJSON(t, "GET", filterURL(alice.UserID, created.FilterID), bob.AccessToken, nil).
			wantErr(t, http.StatusForbidden, "M_FORBIDDEN")
		doJSON(t, "POST", filterURL(alice.UserID, ""), bob.AccessToken, `{}`).
			wantErr(t, http.StatusForbidden, "M_FORBIDDEN")
		// Filter IDs belong to their user: bob cannot reach alice's by
		// asking under his own ID.
		doJSON(t, "GET", filterURL(bob.UserID, created.FilterID), bob.AccessToken, nil).
			wantErr(t, http.StatusNotFound, "M_NOT_FOUND")
	})

	t.Run("unknown filter ID", func(t *testing.T) {
		for _, fid := range []string{"999999", "abc", "-1", "99999999999999999999999"} {
			doJSON(t, "GET", filterURL(alice.UserID, fid), alice.AccessToken, nil).
				wantErr(t, http.StatusNotFound, "M_NOT_FOUND")
		}
	})
}

func TestCapabilities(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	srv := startAccounts(t, nil)
	alice := registerUser(t, srv, "alice", profilePassword)

	caps, err := alice.Capabilities(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if caps.ChangePassword == nil || !caps.ChangePassword.Enabled {
		t.Errorf("m.change_password = %+v, want enabled", caps.ChangePassword)
	}
	if caps.SetDisplayname == nil || !caps.SetDisplayname.Enabled {
		t.Errorf("m.set_displayname = %+v, want enabled", caps.SetDisplayname)
	}
	if caps.SetAvatarURL == nil || !caps.SetAvatarURL.Enabled {
		t.Errorf("m.set_avatar_url = %+v, want enabled", caps.SetAvatarURL)
	}
	// Absent would mean "enabled" to clients: it must be present and false.
	if caps.ThreePIDChanges == nil || caps.ThreePIDChanges.Enabled {
		t.Errorf("m.3pid_changes = %+v, want present and disabled", caps.ThreePIDChanges)
	}
	rv := caps.RoomVersions
	if rv == nil || rv.Default != "12" {
		t.Fatalf("m.room_versions = %+v, want default 12", rv)
	}
	for _, v := range []string{"10", "11", "12"} {
		if !rv.IsStable(v) {
			t.Errorf("room version %s is not stable in %+v", v, rv.Available)
		}
	}

	// The raw answer against capabilities.yaml's schema.
	r := doJSON(t, "GET", clientURL(srv, "v3", "capabilities"), alice.AccessToken, nil)
	r.wantOK(t)
	capsObj, ok := r.Body["capabilities"].(map[string]any)
	if !ok {
		t.Fatalf("capabilities missing or not an object: %s", r.Raw)
	}
	for _, name := range []string{"m.change_password", "m.set_displayname", "m.set_avatar_url", "m.3pid_changes", "m.get_login_token", "m.forget_forced_upon_leave"} {
		v, present := capsObj[name]
		if !present {
			continue
		}
		obj, ok := v.(map[string]any)
		if !ok {
			t.Errorf("%s is not an object: %v", name, v)
			continue
		}
		if _, ok := obj["enabled"].(bool); !ok {
			t.Errorf("%s: BooleanCapability requires boolean enabled, got %v", name, obj)
		}
	}
	rvObj, ok := capsObj["m.room_versions"].(map[string]any)
	if !ok {
		t.Fatalf("m.room_versions missing: %s", r.Raw)
	}
	def, ok := rvObj["default"].(string)
	if !ok {
		t.Fatalf("m.room_versions.default is required and a string: %v", rvObj)
	}
	avail, ok := rvObj["available"].(map[string]any)
	if !ok {
		t.Fatalf("m.room_versions.available is required and an object: %v", rvObj)
	}
	for v, stability := range avail {
		if stability != "stable" && stability != "unstable" {
			t.Errorf("room version %s: stability %v not in [stable, unstable]", v, stability)
		}
	}
	if _, ok := avail[def]; !ok {
		t.Errorf("default room version %s is not among available %v", def, avail)
	}

	// r0 alias.
	doJSON(t, "GET", clientURL(srv, "r0", "capabilities"), alice.AccessToken, nil).wantOK(t)
}

func TestUserDirectoryDefaultScope(t *testing.T) {
	t.Parallel()
	srv := startAccounts(t, nil)
	alice := registerUser(t, srv, "alice", profilePassword)
	bob := registerUser(t, srv, "bob", profilePassword)
	if err := bob.SetDisplayName(context.Background(), "Bob Builder"); err != nil {
		t.Fatal(err)
	}
	// Without search_all_users, only users sharing a room with the searcher
	// (or in public rooms) are found. There are no rooms yet, so bob is
	// found by neither his localpart nor his display name.
	profileWantIDs(t, "bob", profileSearchIDs(t, alice, "bob"))
	profileWantIDs(t, "builder", profileSearchIDs(t, alice, "builder"))
	// The search itself works: the searcher finds themself.
	profileWantIDs(t, "ali", profileSearchIDs(t, alice, "ali"), alice.UserID)
	profileWantIDs(t, "bob", profileSearchIDs(t, bob, "bob"), bob.UserID)
}

func TestUserDirectorySearchAllUsers(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	srv := startAccounts(t, map[string]string{"WEFT_USER_DIRECTORY_SEARCH_ALL_USERS": "true"})
	searcher := registerUser(t, srv, "searcher", profilePassword)
	bob := registerUser(t, srv, "bobsmith", profilePassword)
	if err := bob.SetDisplayName(ctx, "Robert Zebra"); err != nil {
		t.Fatal(err)
	}
	avatar := id.ContentURI{Homeserver: "localhost", FileID: "bobface"}
	if err := bob.SetAvatarURL(ctx, avatar); err != nil {
		t.Fatal(err)
	}

	t.Run("by localpart and display name, case-insensitive", func(t *testing.T) {
		profileWantIDs(t, "bsmi", profileSearchIDs(t, searcher, "bsmi"), bob.UserID)
		profileWantIDs(t, "BSMI", profileSearchIDs(t, searcher, "BSMI"), bob.UserID)
		profileWantIDs(t, "zebra", profileSearchIDs(t, searcher, "zebra"), bob.UserID)
		profileWantIDs(t, "rT zEB", profileSearchIDs(t, searcher, "rT zEB"), bob.UserID)
		profileWantIDs(t, "nomatch", profileSearchIDs(t, searcher, "nomatch"))

		// The entry carries the spec's fields: user_id, display_name, avatar_url.
		r := doJSON(t, "POST", clientURL(srv, "v3", "user_directory", "search"), searcher.AccessToken, map[string]any{"search_term": "zebra"})
		r.wantOK(t)
		results, _ := r.Body["results"].([]any)
		if len(results) != 1 || r.Body["limited"] != false {
			t.Fatalf("search zebra: %s", r.Raw)
		}
		want := map[string]any{"user_id": bob.UserID.String(), "display_name": "Robert Zebra", "avatar_url": avatar.String()}
		if !reflect.DeepEqual(results[0], want) {
			t.Fatalf("entry = %v, want %v", results[0], want)
		}
	})

	t.Run("limit", func(t *testing.T) {
		var lims []id.UserID
		for i := 1; i <= 3; i++ {
			lims = append(lims, registerUser(t, srv, fmt.Sprintf("limituser%d", i), profilePassword).UserID)
		}
		resp := profileSearch(t, searcher, "limituser", 2)
		if len(resp.Results) != 2 || !resp.Limited {
			t.Fatalf("limit 2 of 3: %d results, limited %v", len(resp.Results), resp.Limited)
		}
		resp = profileSearch(t, searcher, "limituser", 3)
		if len(resp.Results) != 3 || resp.Limited {
			t.Fatalf("limit 3 of 3: %d results, limited %v", len(resp.Results), resp.Limited)
		}
		profileWantIDs(t, "limituser", profileSearchIDs(t, searcher, "limituser"), lims...)
	})

	t.Run("% and _ are literal", func(t *testing.T) {
		under := registerUser(t, srv, "dave_1", profilePassword)
		plain := registerUser(t, srv, "davex1", profilePassword)
		if err := under.SetDisplayName(ctx, "Dave 100% Real"); err != nil {
			t.Fatal(err)
		}
		if err := plain.SetDisplayName(ctx, "Dave 100 and Real"); err != nil {
			t.Fatal(err)
		}
		profileWantIDs(t, "e_1", profileSearchIDs(t, searcher, "e_1"), under.UserID)
		profileWantIDs(t, "100% real", profileSearchIDs(t, searcher, "100% real"), under.UserID)
		profileWantIDs(t, "%", profileSearchIDs(t, searcher, "%"), under.UserID)
		profileWantIDs(t, "_", profileSearchIDs(t, searcher, "_"), under.UserID)
		profileWantIDs(t, `\`, profileSearchIDs(t, searcher, `\`))
	})

	t.Run("deactivated users never appear", func(t *testing.T) {
		gone := registerUser(t, srv, "goner", profilePassword)
		if err := gone.SetDisplayName(ctx, "Ghost Writer"); err != nil {
			t.Fatal(err)
		}
		profileWantIDs(t, "goner", profileSearchIDs(t, searcher, "goner"), gone.UserID)
		profileWantIDs(t, "ghost", profileSearchIDs(t, searcher, "ghost"), gone.UserID)
		profileDeactivate(t, srv, gone, profilePassword)
		profileWantIDs(t, "goner", profileSearchIDs(t, searcher, "goner"))
		profileWantIDs(t, "ghost", profileSearchIDs(t, searcher, "ghost"))
	})

	t.Run("missing or mistyped search_term", func(t *testing.T) {
		u := clientURL(srv, "v3", "user_directory", "search")
		doJSON(t, "POST", u, searcher.AccessToken, map[string]any{"limit": 5}).wantErr(t, http.StatusBadRequest, "M_MISSING_PARAM")
		doJSON(t, "POST", u, searcher.AccessToken, map[string]any{"search_term": 5}).wantErr(t, http.StatusBadRequest, "M_BAD_JSON")
		doJSON(t, "POST", u, searcher.AccessToken, "term").wantErr(t, http.StatusBadRequest, "M_NOT_JSON")
		doJSON(t, "POST", u, searcher.AccessToken, `{"search_term":"a\u0000"}`).wantErr(t, http.StatusBadRequest, "M_INVALID_PARAM")
	})
}

func TestDeactivation(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	srv := startAccounts(t, nil)
	leaver := registerUser(t, srv, "leaver", profilePassword)
	if err := leaver.SetDisplayName(ctx, "Leaving Soon"); err != nil {
		t.Fatal(err)
	}
	if err := leaver.SetAvatarURL(ctx, id.ContentURI{Homeserver: "localhost", FileID: "leaverface"}); err != nil {
		t.Fatal(err)
	}
	// A second session, which must end too.
	other := srv.Client()
	login, err := other.Login(ctx, &mautrix.ReqLogin{
		Type:       mautrix.AuthTypePassword,
		Identifier: mautrix.UserIdentifier{Type: mautrix.IdentifierTypeUser, User: "leaver"},
		Password:   profilePassword, StoreCredentials: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	if login.UserID != leaver.UserID {
		t.Fatalf("logged in as %s", login.UserID)
	}

	u := clientURL(srv, "v3", "account", "deactivate")
	// UIA: a challenge offering the password stage, then a wrong password
	// that changes nothing.
	first := doJSON(t, "POST", u, leaver.AccessToken, map[string]any{})
	if first.Status != http.StatusUnauthorized {
		t.Fatalf("deactivate without auth: %d %s", first.Status, first.Raw)
	}
	flows, _ := json.Marshal(first.Body["flows"])
	if !strings.Contains(string(flows), `"m.login.password"`) {
		t.Fatalf("flows %s do not offer m.login.password", flows)
	}
	session, _ := first.Body["session"].(string)
	wrong := doJSON(t, "POST", u, leaver.AccessToken, map[string]any{"auth": map[string]any{
		"type": "m.login.password", "session": session, "password": "wrong password",
		"identifier": map[string]any{"type": "m.id.user", "user": "leaver"},
	}})
	if wrong.Status != http.StatusUnauthorized || wrong.Body["errcode"] != "M_FORBIDDEN" {
		t.Fatalf("wrong password: %d %s, want 401 M_FORBIDDEN", wrong.Status, wrong.Raw)
	}
	if _, err := leaver.Whoami(ctx); err != nil {
		t.Fatalf("a failed deactivation ended the session: %v", err)
	}

	ok := doJSON(t, "POST", u, leaver.AccessToken, map[string]any{"auth": map[string]any{
		"type": "m.login.password", "session": session, "password": profilePassword,
		"identifier": map[string]any{"type": "m.id.user", "user": "leaver"},
	}})
	ok.wantOK(t)
	if res := ok.Body["id_server_unbind_result"]; res != "success" && res != "no-support" {
		t.Fatalf("id_server_unbind_result = %v, want success or no-support", res)
	}

	t.Run("every token is dead", func(t *testing.T) {
		_, err := leaver.Whoami(ctx)
		wantHTTPErr(t, err, http.StatusUnauthorized, "M_UNKNOWN_TOKEN")
		_, err = other.Whoami(ctx)
		wantHTTPErr(t, err, http.StatusUnauthorized, "M_UNKNOWN_TOKEN")
	})

	t.Run("no more logins", func(t *testing.T) {
		_, err := srv.Client().Login(ctx, &mautrix.ReqLogin{
			Type:       mautrix.AuthTypePassword,
			Identifier: mautrix.UserIdentifier{Type: mautrix.IdentifierTypeUser, User: "leaver"},
			Password:   profilePassword,
		})
		wantHTTPErr(t, err, http.StatusForbidden, "M_USER_DEACTIVATED")
	})

	t.Run("profile is gone", func(t *testing.T) {
		r := doJSON(t, "GET", clientURL(srv, "v3", "profile", leaver.UserID.String()), "", nil)
		if r.Status == http.StatusOK {
			if len(r.Body) != 0 {
				t.Fatalf("deactivated profile = %s, want no displayname or avatar", r.Raw)
			}
		} else {
			r.wantErr(t, http.StatusNotFound, "M_NOT_FOUND")
		}
		_, err := srv.Client().GetDisplayName(ctx, leaver.UserID)
		wantHTTPErr(t, err, http.StatusNotFound, "M_NOT_FOUND")
		_, err = srv.Client().GetAvatarURL(ctx, leaver.UserID)
		wantHTTPErr(t, err, http.StatusNotFound, "M_NOT_FOUND")
	})

	t.Run("username stays taken", func(t *testing.T) {
		_, err := srv.Client().RegisterDummy(ctx, &mautrix.ReqRegister[any]{Username: "leaver", Password: profilePassword})
		wantHTTPErr(t, err, http.StatusBadRequest, "M_USER_IN_USE")
		doJSON(t, "GET", clientURL(srv, "v3", "register", "available")+"?username=leaver", "", nil).
			wantErr(t, http.StatusBadRequest, "M_USER_IN_USE")
	})
}

func TestThreePIDList(t *testing.T) {
	t.Parallel()
	srv := startAccounts(t, nil)
	alice := registerUser(t, srv, "alice", profilePassword)
	for _, version := range []string{"v3", "r0"} {
		r := doJSON(t, "GET", clientURL(srv, version, "account", "3pid"), alice.AccessToken, nil)
		r.wantOK(t)
		list, isList := r.Body["threepids"].([]any)
		if !isList || len(list) != 0 || len(r.Body) != 1 {
			t.Fatalf("%s GET /account/3pid = %s, want {\"threepids\": []}", version, r.Raw)
		}
	}
}

func TestVoIPTURNServer(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("not configured", func(t *testing.T) {
		t.Parallel()
		srv := startAccounts(t, nil)
		alice := registerUser(t, srv, "alice", profilePassword)
		r := doJSON(t, "GET", clientURL(srv, "v3", "voip", "turnServer"), alice.AccessToken, nil)
		r.wantOK(t)
		if strings.TrimSpace(string(r.Raw)) != "{}" {
			t.Fatalf("turnServer without TURN = %s, want {}", r.Raw)
		}
		resp, err := alice.TurnServer(ctx)
		if err != nil || resp.Username != "" || len(resp.URIs) != 0 {
			t.Fatalf("mautrix TurnServer = %+v, %v", resp, err)
		}
	})

	t.Run("shared secret", func(t *testing.T) {
		t.Parallel()
		const secret = "turn-s3cret"
		uris := []string{"turn:turn.example.org:3478?transport=udp", "turns:turn.example.org:5349"}
		srv := startAccounts(t, map[string]string{
			"WEFT_TURN_URIS":          strings.Join(uris, ","),
			"WEFT_TURN_SHARED_SECRET": secret,
			"WEFT_TURN_LIFETIME":      "1h",
		})
		for _, name := range []string{"alice", "bob"} {
			cli := registerUser(t, srv, name, profilePassword)
			before := time.Now().Unix()
			resp, err := cli.TurnServer(ctx)
			after := time.Now().Unix()
			if err != nil {
				t.Fatal(err)
			}
			if resp.TTL != 3600 {
				t.Errorf("ttl = %d, want 3600", resp.TTL)
			}
			if !slices.Equal(resp.URIs, uris) {
				t.Errorf("uris = %q, want %q", resp.URIs, uris)
			}
			expiryStr, user, found := strings.Cut(resp.Username, ":")
			if !found || user != cli.UserID.String() {
				t.Fatalf("username %q is not <expiry>:%s", resp.Username, cli.UserID)
			}
			expiry, err := strconv.ParseInt(expiryStr, 10, 64)
			if err != nil {
				t.Fatalf("username %q: expiry not an integer", resp.Username)
			}
			if expiry < before+3600 || expiry > after+3600 {
				t.Errorf("expiry %d not within [%d, %d]", expiry, before+3600, after+3600)
			}
			mac := hmac.New(sha1.New, []byte(secret))
			mac.Write([]byte(resp.Username))
			if want := base64.StdEncoding.EncodeToString(mac.Sum(nil)); resp.Password != want {
				t.Errorf("password %q, want base64(HMAC-SHA1(secret, username)) = %q", resp.Password, want)
			}
		}
	})

	t.Run("URIs without a secret refuse to start", func(t *testing.T) {
		t.Parallel()
		_, err := StartErr(t, Options{Env: accountsEnv(map[string]string{"WEFT_TURN_URIS": "turn:turn.example.org"})})
		if err == nil {
			t.Fatal("weft started with TURN URIs and no shared secret")
		}
		if !strings.Contains(err.Error(), "turn.shared_secret") {
			t.Fatalf("start-up failed, but not over turn.shared_secret: %v", err)
		}
	})
}

func TestProfileEndpointsRequireAuth(t *testing.T) {
	t.Parallel()
	srv := startAccounts(t, nil)
	alice := registerUser(t, srv, "alice", profilePassword)
	me := alice.UserID.String()
	room := "!someroom:localhost"
	type call struct {
		method string
		seg    []string
		body   any
	}
	calls := []call{
		{"PUT", []string{"profile", me, "displayname"}, map[string]any{"displayname": "x"}},
		{"PUT", []string{"profile", me, "avatar_url"}, map[string]any{"avatar_url": "mxc://localhost/x"}},
		{"GET", []string{"user", me, "account_data", "org.example.x"}, nil},
		{"PUT", []string{"user", me, "account_data", "org.example.x"}, map[string]any{}},
		{"GET", []string{"user", me, "rooms", room, "account_data", "org.example.x"}, nil},
		{"PUT", []string{"user", me, "rooms", room, "account_data", "org.example.x"}, map[string]any{}},
		{"POST", []string{"user", me, "filter"}, map[string]any{}},
		{"GET", []string{"user", me, "filter", "1"}, nil},
		{"GET", []string{"capabilities"}, nil},
		{"POST", []string{"user_directory", "search"}, map[string]any{"search_term": "a"}},
		{"GET", []string{"voip", "turnServer"}, nil},
		{"GET", []string{"account", "3pid"}, nil},
		{"POST", []string{"account", "deactivate"}, map[string]any{}},
		{"GET", []string{"account", "whoami"}, nil},
	}
	for _, c := range calls {
		for _, version := range []string{"v3", "r0"} {
			u := clientURL(srv, version, c.seg...)
			r := doJSON(t, c.method, u, "", c.body)
			if r.Status != http.StatusUnauthorized || r.Body["errcode"] != "M_MISSING_TOKEN" {
				t.Errorf("%s %s without a token: %d %s, want 401 M_MISSING_TOKEN", c.method, u, r.Status, r.Raw)
			}
			r = doJSON(t, c.method, u, "not-a-real-token", c.body)
			if r.Status != http.StatusUnauthorized || r.Body["errcode"] != "M_UNKNOWN_TOKEN" {
				t.Errorf("%s %s with a bad token: %d %s, want 401 M_UNKNOWN_TOKEN", c.method, u, r.Status, r.Raw)
			}
		}
	}
	// Nothing was changed by the refused writes.
	p, err := srv.Client().GetProfile(context.Background(), alice.UserID)
	if err != nil || p.DisplayName != "alice" || !p.AvatarURL.IsEmpty() {
		t.Fatalf("profile after refused writes = %+v, %v", p, err)
	}
	// And profile reads need no token.
	doJSON(t, "GET", clientURL(srv, "v3", "profile", me, "displayname"), "", nil).wantOK(t)
}

// Clients escape path parameters differently: matrix-js-sdk uses
// encodeURIComponent, which escapes '@' and ':' but not '!'. The server must
// decode them all to the same IDs.
func TestProfilePercentEncodedPathParams(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	srv := startAccounts(t, nil)
	alice := registerUser(t, srv, "alice", profilePassword)
	if err := alice.SetDisplayName(ctx, "Alice"); err != nil {
		t.Fatal(err)
	}
	base := srv.URL + "/_matrix/client/v3"
	const user = "%40alice%3Alocalhost"

	for _, u := range []string{base + "/profile/" + user, base + "/profile/%40alice:localhost"} {
		r := doJSON(t, "GET", u, "", nil)
		r.wantOK(t)
		if r.Body["displayname"] != "Alice" {
			t.Fatalf("GET %s = %s", u, r.Raw)
		}
	}
	doJSON(t, "PUT", base+"/profile/"+user+"/displayname", alice.AccessToken, map[string]any{"displayname": "Alice E."}).wantOK(t)
	if dn, err := alice.GetOwnDisplayName(ctx); err != nil || dn.DisplayName != "Alice E." {
		t.Fatalf("displayname after escaped PUT = %+v, %v", dn, err)
	}

	// Room account data written with "!r%3Alocalhost" is the data of
	// !r:localhost, whichever way it is read back.
	doJSON(t, "PUT", base+"/user/"+user+"/rooms/!r%3Alocalhost/account_data/org.example.esc", alice.AccessToken,
		map[string]any{"k": "v"}).wantOK(t)
	var got map[string]any
	if err := alice.GetRoomAccountData(ctx, "!r:localhost", "org.example.esc", &got); err != nil || got["k"] != "v" {
		t.Fatalf("room account data written with an escaped room ID: %v, %v", got, err)
	}
	doJSON(t, "PUT", base+"/user/"+user+"/account_data/org.example%2Eesc", alice.AccessToken, map[string]any{"g": 1}).wantOK(t)
	got = nil
	if err := alice.GetAccountData(ctx, "org.example.esc", &got); err != nil || got["g"] != 1.0 {
		t.Fatalf("global account data written with an escaped type: %v, %v", got, err)
	}

	f, err := alice.CreateFilter(ctx, &mautrix.Filter{Room: &mautrix.RoomFilter{Timeline: &mautrix.FilterPart{Limit: 5}}})
	if err != nil {
		t.Fatal(err)
	}
	doJSON(t, "GET", base+"/user/"+user+"/filter/"+f.FilterID, alice.AccessToken, nil).wantOK(t)
}

// Prefix matches rank first, also ahead of users without a display name.
func TestUserDirectoryPrefixRanking(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	srv := startAccounts(t, map[string]string{"WEFT_USER_DIRECTORY_SEARCH_ALL_USERS": "true"})
	searcher := registerUser(t, srv, "searcher", profilePassword)
	// Sorted by user ID, the non-prefix match would come first.
	inner := registerUser(t, srv, "a-rankme", profilePassword)
	prefix := registerUser(t, srv, "rankme", profilePassword)
	for _, term := range []string{"rankme", "rank"} {
		// With and without a display name on the inner match.
		for _, name := range []string{"Someone", ""} {
			if err := inner.SetDisplayName(ctx, name); err != nil {
				t.Fatal(err)
			}
			resp := profileSearch(t, searcher, term, 1)
			if len(resp.Results) != 1 || resp.Results[0].UserID != prefix.UserID || !resp.Limited {
				var ids []id.UserID
				for _, r := range resp.Results {
					ids = append(ids, r.UserID)
				}
				t.Fatalf("search %q limit 1 (inner display name %q): got %v limited %v, want %s first", term, name, ids, resp.Limited, prefix.UserID)
			}
		}
	}
}
