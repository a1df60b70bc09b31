package api_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"maunium.net/go/mautrix"
)

// pushersStack is the whole API over real Postgres.
func pushersStack(t *testing.T) *httptest.Server {
	t.Helper()
	return newStack(t, stackOpts{}).srv
}

// pushersSession registers (or logs in again as) localpart.
func pushersSession(t *testing.T, srv *httptest.Server, localpart string, register bool) *mautrix.Client {
	t.Helper()
	cli, err := mautrix.NewClient(srv.URL, "", "")
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if register {
		resp, err := cli.RegisterDummy(ctx, &mautrix.ReqRegister[any]{Username: localpart, Password: "password " + localpart})
		if err != nil {
			t.Fatal(err)
		}
		cli.SetCredentials(resp.UserID, resp.AccessToken)
		cli.DeviceID = resp.DeviceID
		return cli
	}
	if _, err := cli.Login(ctx, &mautrix.ReqLogin{
		Type:       mautrix.AuthTypePassword,
		Identifier: mautrix.UserIdentifier{Type: mautrix.IdentifierTypeUser, User: localpart},
		Password:   "password " + localpart, StoreCredentials: true,
	}); err != nil {
		t.Fatal(err)
	}
	return cli
}

// pushersCall sends a raw request and returns the status and body.
func pushersCall(t *testing.T, cli *mautrix.Client, method, path, body string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, cli.HomeserverURL.String()+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if cli.AccessToken != "" {
		req.Header.Set("Authorization", "Bearer "+cli.AccessToken)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(bytes.TrimSpace(b))
}

func pusherBody(appID, pushKey string, extra string) string {
	return `{"kind":"http","app_id":"` + appID + `","pushkey":"` + pushKey + `","app_display_name":"App",` +
		`"device_display_name":"Phone","lang":"en",` +
		`"data":{"url":"https://gw.example/_matrix/push/v1/notify","format":"event_id_only"}` + extra + `}`
}

// pushKeys are the pushkeys GET /pushers lists, checking the shape.
func pushKeys(t *testing.T, cli *mautrix.Client) []string {
	t.Helper()
	status, body := pushersCall(t, cli, "GET", "/_matrix/client/v3/pushers", "")
	if status != 200 {
		t.Fatalf("GET /pushers: %d %s", status, body)
	}
	var resp struct {
		Pushers *[]map[string]any `json:"pushers"`
	}
	if err := json.Unmarshal([]byte(body), &resp); err != nil || resp.Pushers == nil {
		t.Fatalf("GET /pushers body %s: %v", body, err)
	}
	keys := []string{}
	for _, p := range *resp.Pushers {
		keys = append(keys, p["pushkey"].(string))
	}
	return keys
}

func TestPushersSetListDelete(t *testing.T) {
	srv := pushersStack(t)
	alice := pushersSession(t, srv, "alice", true)
	if status, body := pushersCall(t, alice, "GET", "/_matrix/client/v3/pushers", ""); status != 200 || body != `{"pushers":[]}` {
		t.Fatalf("no pushers: %d %s", status, body)
	}
	status, body := pushersCall(t, alice, "POST", "/_matrix/client/v3/pushers/set",
		pusherBody("com.example.app", "PK1", `,"profile_tag":"tag","append":false`))
	if status != 200 || body != `{}` {
		t.Fatalf("set: %d %s", status, body)
	}
	status, body = pushersCall(t, alice, "GET", "/_matrix/client/v3/pushers", "")
	want := `{"pushers":[{"app_display_name":"App","app_id":"com.example.app","data":{"format":"event_id_only","url":"https://gw.example/_matrix/push/v1/notify"},` +
		`"device_display_name":"Phone","kind":"http","lang":"en","profile_tag":"tag","pushkey":"PK1"}]}`
	if status != 200 || body != want {
		t.Fatalf("list: %d\n got %s\nwant %s", status, body, want)
	}
	// The r0 paths are aliases.
	if status, body := pushersCall(t, alice, "POST", "/_matrix/client/r0/pushers/set", pusherBody("com.example.app", "PK2", "")); status != 200 {
		t.Fatalf("r0 set: %d %s", status, body)
	}
	if status, body := pushersCall(t, alice, "GET", "/_matrix/client/r0/pushers", ""); status != 200 || !strings.Contains(body, `"PK2"`) {
		t.Fatalf("r0 list: %d %s", status, body)
	}
	// kind null deletes that one pusher.
	if status, body := pushersCall(t, alice, "POST", "/_matrix/client/v3/pushers/set",
		`{"kind":null,"app_id":"com.example.app","pushkey":"PK1"}`); status != 200 || body != `{}` {
		t.Fatalf("delete: %d %s", status, body)
	}
	if keys := pushKeys(t, alice); len(keys) != 1 || keys[0] != "PK2" {
		t.Fatalf("after delete: %v", keys)
	}
}

func TestPushersAppendAcrossUsers(t *testing.T) {
	srv := pushersStack(t)
	alice := pushersSession(t, srv, "alice", true)
	bob := pushersSession(t, srv, "bob", true)
	set := func(cli *mautrix.Client, body string) {
		t.Helper()
		if status, resp := pushersCall(t, cli, "POST", "/_matrix/client/v3/pushers/set", body); status != 200 {
			t.Fatalf("set: %d %s", status, resp)
		}
	}
	set(alice, pusherBody("com.example.app", "SHARED", ""))
	set(bob, pusherBody("com.example.app", "SHARED", `,"append":true`))
	if len(pushKeys(t, alice)) != 1 || len(pushKeys(t, bob)) != 1 {
		t.Fatal("append: true removed another user's pusher")
	}
	// append omitted is false: the pushkey moves to bob alone.
	set(bob, pusherBody("com.example.app", "SHARED", ""))
	if keys := pushKeys(t, alice); len(keys) != 0 {
		t.Fatalf("alice kept %v", keys)
	}
	if keys := pushKeys(t, bob); len(keys) != 1 {
		t.Fatalf("bob has %v", keys)
	}
}

// A pusher belongs to the device that set it: logging that device out
// deletes it, other devices' pushers stay.
func TestPushersGoWithTheirDevice(t *testing.T) {
	srv := pushersStack(t)
	phone := pushersSession(t, srv, "alice", true)
	laptop := pushersSession(t, srv, "alice", false)
	if status, body := pushersCall(t, phone, "POST", "/_matrix/client/v3/pushers/set", pusherBody("com.example.app", "PHONE", "")); status != 200 {
		t.Fatalf("%d %s", status, body)
	}
	if status, body := pushersCall(t, laptop, "POST", "/_matrix/client/v3/pushers/set", pusherBody("com.example.app", "LAPTOP", "")); status != 200 {
		t.Fatalf("%d %s", status, body)
	}
	if keys := pushKeys(t, laptop); len(keys) != 2 {
		t.Fatalf("pushers %v", keys)
	}
	if _, err := phone.Logout(context.Background()); err != nil {
		t.Fatal(err)
	}
	if keys := pushKeys(t, laptop); len(keys) != 1 || keys[0] != "LAPTOP" {
		t.Fatalf("after the phone logged out: %v", keys)
	}
}

func TestPushersErrors(t *testing.T) {
	srv := pushersStack(t)
	alice := pushersSession(t, srv, "alice", true)
	cases := []struct {
		name, body string
		status     int
		errcode    string
	}{
		{"not json", `nope`, 400, "M_NOT_JSON"},
		{"missing", `{"kind":"http","app_id":"a","pushkey":"k"}`, 400, "M_MISSING_PARAM"},
		{"no kind", `{"app_id":"a","pushkey":"k"}`, 400, "M_MISSING_PARAM"},
		{"wrong type", `{"kind":"http","app_id":5,"pushkey":"k"}`, 400, "M_BAD_JSON"},
		{"email", strings.Replace(pusherBody("m.email", "a@example.org", ""), `"http"`, `"email"`, 1), 400, "M_INVALID_PARAM"},
		{"bad url", strings.Replace(pusherBody("a", "k", ""), "/_matrix/push/v1/notify", "/push", 1), 400, "M_INVALID_PARAM"},
		{"long app_id", pusherBody(strings.Repeat("a", 65), "k", ""), 400, "M_INVALID_PARAM"},
		{"long pushkey", pusherBody("a", strings.Repeat("k", 513), ""), 400, "M_INVALID_PARAM"},
	}
	for _, c := range cases {
		status, body := pushersCall(t, alice, "POST", "/_matrix/client/v3/pushers/set", c.body)
		var e mautrix.RespError
		_ = json.Unmarshal([]byte(body), &e)
		if status != c.status || e.ErrCode != c.errcode {
			t.Errorf("%s: %d %s, want %d %s", c.name, status, body, c.status, c.errcode)
		}
	}
	if keys := pushKeys(t, alice); len(keys) != 0 {
		t.Fatalf("refused pushers stored: %v", keys)
	}
	anon := pushersSession(t, srv, "bob", true)
	anon.AccessToken = ""
	if status, _ := pushersCall(t, anon, "GET", "/_matrix/client/v3/pushers", ""); status != 401 {
		t.Fatalf("no token: %d", status)
	}
	if status, _ := pushersCall(t, anon, "POST", "/_matrix/client/v3/pushers/set", pusherBody("a", "k", "")); status != 401 {
		t.Fatalf("no token: %d", status)
	}
}
