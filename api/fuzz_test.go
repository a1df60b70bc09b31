package api_test

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/weftchat/weft/account"
	"github.com/weftchat/weft/api"
	"github.com/weftchat/weft/storage/pgtest"
)

// fuzzRouter is the real router over a real database, built as cmd/weft
// builds it, with cheap bcrypt and no rate limits.
func fuzzRouter(f *testing.F, mode string) (http.Handler, *account.Service) {
	f.Helper()
	db := pgtest.NewDB(f)
	svc := account.New(account.Config{
		ServerName:         "localhost",
		RegistrationMode:   mode,
		AllowGuests:        true,
		ReservedLocalparts: []string{"admin"},
		Password:           account.PasswordPolicy{MinLength: 8, BcryptCost: 4},
	}, db.Accounts(), nil, nil)
	return api.NewRouter(api.Options{
		ServerName:       "localhost",
		BaseURL:          "http://localhost:8008",
		MaxBodyBytes:     1 << 20,
		Accounts:         svc,
		RegistrationMode: mode,
		Health:           db,
	}), svc
}

// FuzzLoginRegister feeds arbitrary bodies to POST /login and /register.
// Whatever the body, the server must not fail (no 5xx, which is also what a
// recovered panic becomes) and must answer a well-formed Matrix body: a
// success with credentials, a user-interactive auth challenge, or an error
// with an M_ errcode and a message.
func FuzzLoginRegister(f *testing.F) {
	open, svc := fuzzRouter(f, "open")
	withToken, tokens := fuzzRouter(f, "token")
	ctx := context.Background()
	if _, err := svc.CreateUserByOperator(ctx, "fuzzer", "fuzzpassword1", false); err != nil {
		f.Fatal(err)
	}
	if _, err := tokens.CreateRegistrationToken(ctx, account.RegistrationToken{Token: "fuzztoken"}); err != nil {
		f.Fatal(err)
	}

	for _, seed := range []string{
		// Valid bodies.
		`{"type":"m.login.password","identifier":{"type":"m.id.user","user":"fuzzer"},"password":"fuzzpassword1"}`,
		`{"type":"m.login.password","user":"@fuzzer:localhost","password":"fuzzpassword1","device_id":"DEV","initial_device_display_name":"d"}`,
		`{"type":"m.login.password","identifier":{"type":"m.id.user","user":"fuzzer"},"password":"wrong"}`,
		`{"type":"m.login.password","identifier":{"type":"m.id.thirdparty","medium":"email","address":"a@b"},"password":"x"}`,
		`{"type":"org.matrix.login.jwt","token":"abc"}`,
		`{"type":"m.login.token","token":"abc"}`,
		`{"username":"newuser","password":"longenough1"}`,
		`{"username":"dummyuser","password":"longenough1","auth":{"type":"m.login.dummy"}}`,
		`{"username":"tokenuser","password":"longenough1","auth":{"type":"m.login.registration_token","token":"fuzztoken"}}`,
		`{"username":"inhibited","password":"longenough1","inhibit_login":true,"refresh_token":true,"auth":{"type":"m.login.dummy"}}`,
		`{"password":"longenough1","device_id":"PHONE","initial_device_display_name":"phone","auth":{"type":"m.login.dummy"}}`,
		`{"username":"x","password":"longenough1","auth":{"type":"m.login.dummy","session":"nosuchsession"}}`,
		`{"username":"y","password":"longenough1","auth":{"type":"m.login.password","identifier":{"type":"m.id.user","user":"fuzzer"},"password":"fuzzpassword1"}}`,
		`{}`,
		// Truncated and not JSON.
		``, `{`, `{"type":"m.login.password","identifier":{"type":"m.id.user","user":"fuz`, `[]`, `null`, `"str"`, `{"a":1}}`, "\xff\xfe",
		// Wrong types.
		`{"type":5}`, `{"identifier":"fuzzer","type":"m.login.password"}`, `{"username":["a"],"password":{}}`,
		`{"username":"a","password":"longenough1","auth":"dummy"}`, `{"username":"a","password":"longenough1","auth":{"type":["m.login.dummy"]}}`,
		`{"inhibit_login":"true"}`, `{"refresh_token":1}`, `{"type":null,"identifier":null,"password":null}`,
		// Huge numbers.
		`{"type":1e999999}`, `{"username":123456789012345678901234567890123456789,"password":-0.0e-99999}`,
		// Nested objects.
		`{"auth":` + strings.Repeat(`{"auth":`, 200) + `{}` + strings.Repeat(`}`, 201),
		`{"identifier":{"type":"m.id.user","user":{"user":{"user":"fuzzer"}}}}`,
		`{"type":"m.login.password","x":` + strings.Repeat(`[`, 5000) + strings.Repeat(`]`, 5000) + `}`,
		// Unicode, escapes and NULs.
		`{"username":"ünïcödé","password":"pässwörd1"}`,
		`{"username":"\u0000","password":"longenough1","auth":{"type":"m.login.dummy"}}`,
		`{"username":"ok","password":"long\u0000enough1","initial_device_display_name":"\u0000","auth":{"type":"m.login.dummy"}}`,
		`{"type":"m.login.password","identifier":{"type":"m.id.user","user":"fuzzer\u0000"},"password":"x"}`,
		`{"type":"m.login.password","identifier":{"type":"m.id.user","user":"fuzzer"},"password":"fuzzpassword1","initial_device_display_name":"\u0000"}`,
		`{"username":"zz","password":"longenough1","auth":{"type":"m.login.registration_token","token":"\u0000"}}`,
		`{"username":"zz","password":"longenough1","auth":{"type":"m.login.dummy","session":"\u0000"}}`,
		`{"username":"\ud800","password":"\udfff\udfff\udfff\udfff"}`,
		`{"username":"😀","password":"😀😀😀😀😀😀😀😀"}`,
		`{"type":"m.login.password","user":"@fuzzer:lōcalhost","password":"x"}`,
		`{"username":"` + strings.Repeat("a", 300) + `","password":"` + strings.Repeat("p", 100) + `"}`,
	} {
		f.Add([]byte(seed))
	}

	f.Fuzz(func(t *testing.T, body []byte) {
		for _, c := range []struct {
			name    string
			handler http.Handler
			path    string
		}{
			{"login", open, "/_matrix/client/v3/login"},
			{"register", open, "/_matrix/client/v3/register"},
			{"register", open, "/_matrix/client/v3/register?kind=guest"},
			{"register", withToken, "/_matrix/client/v3/register"},
		} {
			req := httptest.NewRequest("POST", c.path, bytes.NewReader(body))
			req.Header.Set("Content-Type", "application/json")
			rec := httptest.NewRecorder()
			c.handler.ServeHTTP(rec, req)
			checkMatrixAnswer(t, c.name, c.path, body, rec)
		}
	})
}

// checkMatrixAnswer fails unless rec is a well-formed answer of endpoint.
func checkMatrixAnswer(t *testing.T, endpoint, path string, in []byte, rec *httptest.ResponseRecorder) {
	t.Helper()
	fail := func(why string) {
		t.Helper()
		t.Fatalf("POST %s with %q: %s: %d %s", path, in, why, rec.Code, rec.Body.Bytes())
	}
	if rec.Code >= 500 {
		fail("server error")
	}
	if ct := rec.Header().Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		fail("content type " + ct)
	}
	var out map[string]any
	if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil || out == nil {
		fail("not a JSON object")
	}
	str := func(k string) string {
		s, _ := out[k].(string)
		return s
	}
	switch {
	case rec.Code == http.StatusOK:
		if !strings.HasPrefix(str("user_id"), "@") {
			fail("success without user_id")
		}
		if endpoint == "login" && (str("access_token") == "" || str("device_id") == "") {
			fail("login without access_token or device_id")
		}
		if _, hasToken := out["access_token"]; hasToken && (str("access_token") == "" || str("device_id") == "") {
			fail("malformed credentials")
		}
	case rec.Code == http.StatusUnauthorized && endpoint == "register" && out["flows"] != nil:
		flows, ok := out["flows"].([]any)
		if !ok || len(flows) == 0 || str("session") == "" {
			fail("malformed UIA challenge")
		}
		if _, ok := out["params"].(map[string]any); !ok {
			fail("UIA challenge without params")
		}
		if e, has := out["errcode"]; has {
			if s, ok := e.(string); !ok || !strings.HasPrefix(s, "M_") || str("error") == "" {
				fail("UIA challenge with a malformed error")
			}
		}
	default:
		if rec.Code < 400 {
			fail("unexpected status")
		}
		if !strings.HasPrefix(str("errcode"), "M_") || str("error") == "" {
			fail("not a Matrix error")
		}
	}
}
