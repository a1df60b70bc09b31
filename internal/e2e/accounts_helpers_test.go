package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"testing"

	"maunium.net/go/mautrix"
)

// Shared helpers for the account tests. Keep them general; test files add
// their own helpers with names specific to their area.

// accountsEnv is the environment of a server for account tests: open
// registration, a cheap bcrypt cost so tests stay fast, rate limits off.
// Tests that exercise limits or lockout override these.
func accountsEnv(extra map[string]string) map[string]string {
	env := map[string]string{
		"WEFT_REGISTRATION_MODE":     "open",
		"WEFT_PASSWORDS_BCRYPT_COST": "4",
		"WEFT_RATE_LIMITS_ENABLED":   "false",
	}
	for k, v := range extra {
		env[k] = v
	}
	return env
}

// startAccounts starts a server with accountsEnv(extra).
func startAccounts(t *testing.T, extra map[string]string) *Server {
	t.Helper()
	return Start(t, Options{Env: accountsEnv(extra)})
}

// registerUser registers localpart through the dummy UIA flow with mautrix
// and returns a client holding its access token.
func registerUser(t *testing.T, srv *Server, localpart, password string) *mautrix.Client {
	t.Helper()
	cli := srv.Client()
	resp, err := cli.RegisterDummy(context.Background(), &mautrix.ReqRegister[any]{Username: localpart, Password: password})
	if err != nil {
		t.Fatalf("registering %s: %v", localpart, err)
	}
	cli.SetCredentials(resp.UserID, resp.AccessToken)
	cli.DeviceID = resp.DeviceID
	return cli
}

// rawResponse is a status and decoded JSON body.
type rawResponse struct {
	Status int
	Header http.Header
	Body   map[string]any
	Raw    []byte
}

// doJSON sends body (marshalled unless it is a string or []byte) with an
// optional bearer token and decodes the JSON answer.
func doJSON(t *testing.T, method, url, token string, body any) rawResponse {
	t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = bytes.NewReader([]byte(b))
	case []byte:
		rd = bytes.NewReader(b)
	default:
		raw, err := json.Marshal(b)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(raw)
	}
	req, err := http.NewRequest(method, url, rd)
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
	out := rawResponse{Status: resp.StatusCode, Header: resp.Header}
	out.Raw, _ = io.ReadAll(resp.Body)
	if len(out.Raw) > 0 && out.Raw[0] == '{' {
		if err := json.Unmarshal(out.Raw, &out.Body); err != nil {
			t.Fatalf("%s %s: invalid JSON %q", method, url, out.Raw)
		}
	}
	return out
}

// wantErr fails unless r is status with errcode.
func (r rawResponse) wantErr(t *testing.T, status int, errcode string) {
	t.Helper()
	if r.Status != status || r.Body["errcode"] != errcode {
		t.Fatalf("got %d %s, want %d %s", r.Status, r.Raw, status, errcode)
	}
}

// wantOK fails unless r is 200.
func (r rawResponse) wantOK(t *testing.T) {
	t.Helper()
	if r.Status != http.StatusOK {
		t.Fatalf("got %d %s, want 200", r.Status, r.Raw)
	}
}
