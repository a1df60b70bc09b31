package api_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"maunium.net/go/mautrix"

	"github.com/weftchat/weft/account"
	"github.com/weftchat/weft/api"
	"github.com/weftchat/weft/storage/pgtest"
)

// backupStack is the router with the account domain over a fresh database.
type backupStack struct{ srv *httptest.Server }

func newBackupStack(t *testing.T) *backupStack {
	t.Helper()
	db := pgtest.NewDB(t)
	accounts := account.New(account.Config{
		ServerName: "backup.example", RegistrationMode: "open",
		Password:            account.PasswordPolicy{MinLength: 8, BcryptCost: 4},
		AccessTokenLifetime: time.Hour,
	}, db.Accounts(), nil, nil)
	srv := httptest.NewServer(api.NewRouter(api.Options{
		ServerName: "backup.example", MaxBodyBytes: 1 << 20, Accounts: accounts,
		RegistrationMode: "open", Health: db,
	}))
	t.Cleanup(srv.Close)
	return &backupStack{srv: srv}
}

func (st *backupStack) register(t *testing.T, user string) string {
	t.Helper()
	cli, err := mautrix.NewClient(st.srv.URL, "", "")
	if err != nil {
		t.Fatal(err)
	}
	resp, err := cli.RegisterDummy(context.Background(), &mautrix.ReqRegister[any]{Username: user, Password: "password " + user})
	if err != nil {
		t.Fatalf("register %s: %v", user, err)
	}
	return resp.AccessToken
}

type backupResp struct {
	status int
	raw    []byte
	body   map[string]any
}

// call sends body (a string as is, anything else marshalled) to
// /_matrix/client/v3 + path, or to path if it starts with /_matrix.
func (st *backupStack) call(t *testing.T, method, path, token string, body any) backupResp {
	t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = bytes.NewReader([]byte(b))
	default:
		raw, err := json.Marshal(b)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(raw)
	}
	if !strings.HasPrefix(path, "/_matrix") {
		path = "/_matrix/client/v3" + path
	}
	req, err := http.NewRequest(method, st.srv.URL+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out := backupResp{status: resp.StatusCode}
	out.raw, _ = io.ReadAll(resp.Body)
	if err := json.Unmarshal(out.raw, &out.body); err != nil {
		t.Fatalf("%s %s: %d %q is not a JSON object", method, path, resp.StatusCode, out.raw)
	}
	return out
}

func (r backupResp) ok(t *testing.T) map[string]any {
	t.Helper()
	if r.status != http.StatusOK {
		t.Fatalf("got %d %s, want 200", r.status, r.raw)
	}
	return r.body
}

func (r backupResp) fails(t *testing.T, status int, errcode string) {
	t.Helper()
	if r.status != status || r.body["errcode"] != errcode {
		t.Fatalf("got %d %s, want %d %s", r.status, r.raw, status, errcode)
	}
	if _, ok := r.body["error"].(string); !ok {
		t.Fatalf("error answer without an error message: %s", r.raw)
	}
}

const megolmBackup = "m.megolm_backup.v1.curve25519-aes-sha2"

func backupVersionBody(authData any) map[string]any {
	return map[string]any{"algorithm": megolmBackup, "auth_data": authData}
}

func backupKeyData(first, forwarded int, verified bool, data string) map[string]any {
	return map[string]any{"first_message_index": first, "forwarded_count": forwarded, "is_verified": verified,
		"session_data": map[string]any{"ciphertext": data, "ephemeral": "e", "mac": "m"}}
}

// wantBackupUpdate checks a RoomKeysUpdateResponse and returns its etag.
func wantBackupUpdate(t *testing.T, body map[string]any, count int) string {
	t.Helper()
	etag, ok := body["etag"].(string)
	if !ok || body["count"] != float64(count) {
		t.Fatalf("update answer %v, want count %d and a string etag", body, count)
	}
	return etag
}

func TestKeyBackupVersionEndpoints(t *testing.T) {
	st := newBackupStack(t)
	alice := st.register(t, "alice")

	st.call(t, "GET", "/room_keys/version", "", nil).fails(t, 401, "M_MISSING_TOKEN")
	st.call(t, "GET", "/room_keys/version", alice, nil).fails(t, 404, "M_NOT_FOUND")
	st.call(t, "GET", "/room_keys/version/1", alice, nil).fails(t, 404, "M_NOT_FOUND")
	// Key backup came in v1.1: no r0 alias.
	if r := st.call(t, "GET", "/_matrix/client/r0/room_keys/version", alice, nil); r.status != 404 || r.body["errcode"] != "M_UNRECOGNIZED" {
		t.Fatalf("r0 path: %d %s", r.status, r.raw)
	}

	st.call(t, "POST", "/room_keys/version", alice, "not json").fails(t, 400, "M_NOT_JSON")
	st.call(t, "POST", "/room_keys/version", alice, map[string]any{"auth_data": map[string]any{}}).fails(t, 400, "M_BAD_JSON")
	st.call(t, "POST", "/room_keys/version", alice, map[string]any{"algorithm": megolmBackup}).fails(t, 400, "M_BAD_JSON")
	st.call(t, "POST", "/room_keys/version", alice, backupVersionBody("a string")).fails(t, 400, "M_BAD_JSON")
	st.call(t, "POST", "/room_keys/version", alice, map[string]any{"algorithm": 7, "auth_data": map[string]any{}}).fails(t, 400, "M_BAD_JSON")

	auth := map[string]any{"public_key": "abcdefg", "signatures": map[string]any{"@alice:backup.example": map[string]any{"ed25519:DEV": "sig"}}}
	created := st.call(t, "POST", "/room_keys/version", alice, backupVersionBody(auth)).ok(t)
	if created["version"] != "1" {
		t.Fatalf("created %v, want version \"1\" (a string)", created)
	}
	for _, path := range []string{"/room_keys/version", "/room_keys/version/1"} {
		got := st.call(t, "GET", path, alice, nil).ok(t)
		if got["version"] != "1" || got["algorithm"] != megolmBackup || got["count"] != float64(0) {
			t.Fatalf("GET %s: %v", path, got)
		}
		if _, ok := got["etag"].(string); !ok {
			t.Fatalf("GET %s: etag %v is not a string", path, got["etag"])
		}
		if a, _ := json.Marshal(got["auth_data"]); string(a) != `{"public_key":"abcdefg","signatures":{"@alice:backup.example":{"ed25519:DEV":"sig"}}}` {
			t.Fatalf("GET %s: auth_data %s", path, a)
		}
	}
	if got := st.call(t, "POST", "/room_keys/version", alice, backupVersionBody(auth)).ok(t); got["version"] != "2" {
		t.Fatalf("second version %v", got)
	}
	if got := st.call(t, "GET", "/room_keys/version", alice, nil).ok(t); got["version"] != "2" {
		t.Fatalf("current after a second POST: %v", got)
	}

	// PUT: only auth_data changes.
	newAuth := map[string]any{"public_key": "hijklmn"}
	if got := st.call(t, "PUT", "/room_keys/version/1", alice, backupVersionBody(newAuth)).ok(t); len(got) != 0 {
		t.Fatalf("PUT answered %v, want {}", got)
	}
	if got := st.call(t, "GET", "/room_keys/version/1", alice, nil).ok(t); backupDig(got, "auth_data", "public_key") != "hijklmn" {
		t.Fatalf("after PUT: %v", got)
	}
	withVersion := backupVersionBody(newAuth)
	withVersion["version"] = "1"
	st.call(t, "PUT", "/room_keys/version/1", alice, withVersion).ok(t)
	withVersion["version"] = "2"
	st.call(t, "PUT", "/room_keys/version/1", alice, withVersion).fails(t, 400, "M_INVALID_PARAM")
	st.call(t, "PUT", "/room_keys/version/1", alice, map[string]any{"algorithm": "org.example.other", "auth_data": newAuth}).fails(t, 400, "M_INVALID_PARAM")
	st.call(t, "PUT", "/room_keys/version/1", alice, map[string]any{"algorithm": megolmBackup}).fails(t, 400, "M_BAD_JSON")
	st.call(t, "PUT", "/room_keys/version/9", alice, backupVersionBody(newAuth)).fails(t, 404, "M_NOT_FOUND")
	st.call(t, "PUT", "/room_keys/version/abc", alice, backupVersionBody(newAuth)).fails(t, 404, "M_NOT_FOUND")

	// Another user sees nothing of it.
	bob := st.register(t, "bob")
	st.call(t, "GET", "/room_keys/version", bob, nil).fails(t, 404, "M_NOT_FOUND")
	st.call(t, "GET", "/room_keys/version/1", bob, nil).fails(t, 404, "M_NOT_FOUND")
	st.call(t, "PUT", "/room_keys/version/1", bob, backupVersionBody(newAuth)).fails(t, 404, "M_NOT_FOUND")
	st.call(t, "DELETE", "/room_keys/version/1", bob, nil).fails(t, 404, "M_NOT_FOUND")

	// DELETE: twice is fine, a version never created is not.
	for range 2 {
		if got := st.call(t, "DELETE", "/room_keys/version/2", alice, nil).ok(t); len(got) != 0 {
			t.Fatalf("DELETE answered %v", got)
		}
	}
	st.call(t, "DELETE", "/room_keys/version/3", alice, nil).fails(t, 404, "M_NOT_FOUND")
	st.call(t, "GET", "/room_keys/version/2", alice, nil).fails(t, 404, "M_NOT_FOUND")
	if got := st.call(t, "GET", "/room_keys/version", alice, nil).ok(t); got["version"] != "1" {
		t.Fatalf("current after deleting 2: %v", got)
	}
	// A deleted version's number is not reused.
	if got := st.call(t, "POST", "/room_keys/version", alice, backupVersionBody(auth)).ok(t); got["version"] != "3" {
		t.Fatalf("version after deleting 2: %v", got)
	}
}

func TestBackupKeysEndpoints(t *testing.T) {
	st := newBackupStack(t)
	alice := st.register(t, "alice")
	auth := map[string]any{"public_key": "abcdefg"}

	put := map[string]any{"rooms": map[string]any{"!a:backup.example": map[string]any{"sessions": map[string]any{"s1": backupKeyData(3, 0, false, "a-s1")}}}}
	st.call(t, "PUT", "/room_keys/keys?version=1", alice, put).fails(t, 404, "M_NOT_FOUND")
	st.call(t, "GET", "/room_keys/keys?version=1", alice, nil).fails(t, 404, "M_NOT_FOUND")
	st.call(t, "POST", "/room_keys/version", alice, backupVersionBody(auth)).ok(t)
	st.call(t, "POST", "/room_keys/version", alice, backupVersionBody(auth)).ok(t)

	// The version query parameter is required and must be the current one
	// for writes.
	st.call(t, "PUT", "/room_keys/keys", alice, put).fails(t, 400, "M_MISSING_PARAM")
	st.call(t, "GET", "/room_keys/keys", alice, nil).fails(t, 400, "M_MISSING_PARAM")
	st.call(t, "DELETE", "/room_keys/keys", alice, nil).fails(t, 400, "M_MISSING_PARAM")
	for _, path := range []string{
		"/room_keys/keys?version=1",
		"/room_keys/keys/!a:backup.example?version=1",
		"/room_keys/keys/!a:backup.example/s1?version=1",
		"/room_keys/keys?version=7",
	} {
		var body any = put
		switch path {
		case "/room_keys/keys/!a:backup.example?version=1":
			body = map[string]any{"sessions": map[string]any{"s1": backupKeyData(3, 0, false, "x")}}
		case "/room_keys/keys/!a:backup.example/s1?version=1":
			body = backupKeyData(3, 0, false, "x")
		}
		r := st.call(t, "PUT", path, alice, body)
		r.fails(t, 403, "M_WRONG_ROOM_KEYS_VERSION")
		if r.body["current_version"] != "2" {
			t.Fatalf("PUT %s: current_version %v, want \"2\"", path, r.body["current_version"])
		}
	}

	// Malformed bodies.
	for name, body := range map[string]any{
		"no rooms":                map[string]any{},
		"room without sessions":   map[string]any{"rooms": map[string]any{"!a:backup.example": map[string]any{}}},
		"missing is_verified":     map[string]any{"rooms": map[string]any{"!a:backup.example": map[string]any{"sessions": map[string]any{"s": map[string]any{"first_message_index": 0, "forwarded_count": 0, "session_data": map[string]any{}}}}}},
		"missing session_data":    map[string]any{"rooms": map[string]any{"!a:backup.example": map[string]any{"sessions": map[string]any{"s": map[string]any{"first_message_index": 0, "forwarded_count": 0, "is_verified": true}}}}},
		"fractional index":        map[string]any{"rooms": map[string]any{"!a:backup.example": map[string]any{"sessions": map[string]any{"s": map[string]any{"first_message_index": 1.5, "forwarded_count": 0, "is_verified": true, "session_data": map[string]any{}}}}}},
		"negative forwarded":      map[string]any{"rooms": map[string]any{"!a:backup.example": map[string]any{"sessions": map[string]any{"s": backupKeyData(0, -1, true, "x")}}}},
		"session_data not object": map[string]any{"rooms": map[string]any{"!a:backup.example": map[string]any{"sessions": map[string]any{"s": map[string]any{"first_message_index": 0, "forwarded_count": 0, "is_verified": true, "session_data": "x"}}}}},
	} {
		r := st.call(t, "PUT", "/room_keys/keys?version=2", alice, body)
		if r.status != 400 || r.body["errcode"] != "M_BAD_JSON" {
			t.Fatalf("%s: %d %s, want 400 M_BAD_JSON", name, r.status, r.raw)
		}
	}
	st.call(t, "PUT", "/room_keys/keys?version=2", alice, map[string]any{"rooms": map[string]any{"a:backup.example": map[string]any{"sessions": map[string]any{"s": backupKeyData(0, 0, true, "x")}}}}).
		fails(t, 400, "M_INVALID_PARAM")
	st.call(t, "PUT", "/room_keys/keys/!a:backup.example/s1?version=2", alice, "[]").fails(t, 400, "M_NOT_JSON")

	// Empty backup.
	if got := st.call(t, "GET", "/room_keys/keys?version=2", alice, nil).ok(t); string(backupJSON(t, got)) != `{"rooms":{}}` {
		t.Fatalf("empty backup: %v", got)
	}

	// Each PUT shape. A megolm session ID is standard base64: '/' and '+'
	// arrive percent-encoded in the path.
	slashy := "ab/cd+ef"
	etag0 := st.call(t, "GET", "/room_keys/version/2", alice, nil).ok(t)["etag"].(string)
	etag1 := wantBackupUpdate(t, st.call(t, "PUT", "/room_keys/keys?version=2", alice, put).ok(t), 1)
	etag2 := wantBackupUpdate(t, st.call(t, "PUT", "/room_keys/keys/!a:backup.example?version=2", alice,
		map[string]any{"sessions": map[string]any{"s2": backupKeyData(0, 0, false, "a-s2")}}).ok(t), 2)
	etag3 := wantBackupUpdate(t, st.call(t, "PUT", "/room_keys/keys/"+url.PathEscape("!b:backup.example")+"/"+url.PathEscape(slashy)+"?version=2", alice,
		backupKeyData(0, 1, true, "b-slashy")).ok(t), 3)
	if etag0 == etag1 || etag1 == etag2 || etag2 == etag3 {
		t.Fatalf("etags did not change with the keys: %q %q %q %q", etag0, etag1, etag2, etag3)
	}
	info := st.call(t, "GET", "/room_keys/version", alice, nil).ok(t)
	if info["count"] != float64(3) || info["etag"] != etag3 {
		t.Fatalf("version info %v, want count 3 etag %q", info, etag3)
	}

	// The replacement rule, through the API: a worse key is ignored
	// (same etag), a better one replaces.
	if got := wantBackupUpdate(t, st.call(t, "PUT", "/room_keys/keys/!a:backup.example/s1?version=2", alice, backupKeyData(5, 0, false, "worse")).ok(t), 3); got != etag3 {
		t.Fatalf("a worse key moved the etag")
	}
	if got := wantBackupUpdate(t, st.call(t, "PUT", "/room_keys/keys/!a:backup.example/s1?version=2", alice, backupKeyData(9, 3, true, "verified")).ok(t), 3); got == etag3 {
		t.Fatalf("a better key left the etag")
	}

	// GET at each scope.
	all := st.call(t, "GET", "/room_keys/keys?version=2", alice, nil).ok(t)
	if backupDig(all, "rooms", "!a:backup.example", "sessions", "s1", "session_data", "ciphertext") != "verified" ||
		backupDig(all, "rooms", "!a:backup.example", "sessions", "s2", "session_data", "ciphertext") != "a-s2" ||
		backupDig(all, "rooms", "!b:backup.example", "sessions", slashy, "session_data", "ciphertext") != "b-slashy" {
		t.Fatalf("all keys: %s", backupJSON(t, all))
	}
	room := st.call(t, "GET", "/room_keys/keys/!a:backup.example?version=2", alice, nil).ok(t)
	if sessions, _ := room["sessions"].(map[string]any); len(sessions) != 2 {
		t.Fatalf("room keys: %v", room)
	}
	one := st.call(t, "GET", "/room_keys/keys/"+url.PathEscape("!b:backup.example")+"/"+url.PathEscape(slashy)+"?version=2", alice, nil).ok(t)
	if string(backupJSON(t, one)) != `{"first_message_index":0,"forwarded_count":1,"is_verified":true,"session_data":{"ciphertext":"b-slashy","ephemeral":"e","mac":"m"}}` {
		t.Fatalf("one key: %s", backupJSON(t, one))
	}
	// A room without keys is an empty object (the spec's words); a session
	// without a key is M_NOT_FOUND.
	if got := st.call(t, "GET", "/room_keys/keys/!none:backup.example?version=2", alice, nil).ok(t); string(backupJSON(t, got)) != `{"sessions":{}}` {
		t.Fatalf("room without keys: %v", got)
	}
	st.call(t, "GET", "/room_keys/keys/!a:backup.example/nope?version=2", alice, nil).fails(t, 404, "M_NOT_FOUND")
	st.call(t, "GET", "/room_keys/keys?version=9", alice, nil).fails(t, 404, "M_NOT_FOUND")
	// An old version that still exists can be read, not written.
	if got := st.call(t, "GET", "/room_keys/keys?version=1", alice, nil).ok(t); string(backupJSON(t, got)) != `{"rooms":{}}` {
		t.Fatalf("old version: %v", got)
	}

	// Another user cannot read or delete it.
	bob := st.register(t, "bob")
	st.call(t, "GET", "/room_keys/keys?version=2", bob, nil).fails(t, 404, "M_NOT_FOUND")
	st.call(t, "DELETE", "/room_keys/keys?version=2", bob, nil).fails(t, 404, "M_NOT_FOUND")

	// DELETE at each scope.
	wantBackupUpdate(t, st.call(t, "DELETE", "/room_keys/keys/!a:backup.example/s2?version=2", alice, nil).ok(t), 2)
	wantBackupUpdate(t, st.call(t, "DELETE", "/room_keys/keys/!a:backup.example/s2?version=2", alice, nil).ok(t), 2)
	wantBackupUpdate(t, st.call(t, "DELETE", "/room_keys/keys/!a:backup.example?version=2", alice, nil).ok(t), 1)
	wantBackupUpdate(t, st.call(t, "DELETE", "/room_keys/keys?version=2", alice, nil).ok(t), 0)
	st.call(t, "DELETE", "/room_keys/keys?version=9", alice, nil).fails(t, 404, "M_NOT_FOUND")

	// Deleting the version deletes its keys.
	wantBackupUpdate(t, st.call(t, "PUT", "/room_keys/keys?version=2", alice, put).ok(t), 1)
	st.call(t, "DELETE", "/room_keys/version/2", alice, nil).ok(t)
	st.call(t, "GET", "/room_keys/keys?version=2", alice, nil).fails(t, 404, "M_NOT_FOUND")
	st.call(t, "GET", "/room_keys/keys/!a:backup.example/s1?version=2", alice, nil).fails(t, 404, "M_NOT_FOUND")
	// Version 1 is current again and takes writes.
	wantBackupUpdate(t, st.call(t, "PUT", "/room_keys/keys?version=1", alice, put).ok(t), 1)
}

func backupJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// backupDig walks nested JSON objects; nil where a key is missing.
func backupDig(v any, keys ...string) any {
	for _, k := range keys {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = m[k]
	}
	return v
}
