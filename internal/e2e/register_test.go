package e2e

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha1"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"

	"github.com/weftchat/weft/storage/pgtest"
)

// Registration, end to end: POST /register in each mode, registration tokens,
// username and password rules, guests, devices, Synapse's shared-secret
// registration, the r0 alias and malformed bodies.

const regPassword = "correct horse battery"

func regURL(srv *Server) string { return srv.URL + "/_matrix/client/v3/register" }

// regWantUIA fails unless r is a 401 user-interactive auth answer offering
// exactly one flow, stages, and returns its session.
func regWantUIA(t *testing.T, r rawResponse, stages ...string) string {
	t.Helper()
	if r.Status != http.StatusUnauthorized {
		t.Fatalf("got %d %s, want 401 with UIA flows", r.Status, r.Raw)
	}
	flows, ok := r.Body["flows"].([]any)
	if !ok || len(flows) != 1 {
		t.Fatalf("flows: want exactly one, got %s", r.Raw)
	}
	flow, _ := flows[0].(map[string]any)
	got, _ := flow["stages"].([]any)
	if len(got) != len(stages) {
		t.Fatalf("stages: got %v, want %v", got, stages)
	}
	for i, st := range stages {
		if got[i] != st {
			t.Fatalf("stages: got %v, want %v", got, stages)
		}
	}
	if _, ok := r.Body["params"].(map[string]any); !ok {
		t.Fatalf("params must be an object: %s", r.Raw)
	}
	session, _ := r.Body["session"].(string)
	if session == "" {
		t.Fatalf("no session: %s", r.Raw)
	}
	return session
}

// regDummy registers through the dummy flow with raw requests at url
// (v3 or r0) and returns the final answer.
func regDummy(t *testing.T, url string, body map[string]any) rawResponse {
	t.Helper()
	first := doJSON(t, "POST", url, "", body)
	session := regWantUIA(t, first, "m.login.dummy")
	withAuth := map[string]any{"auth": map[string]any{"type": "m.login.dummy", "session": session}}
	for k, v := range body {
		withAuth[k] = v
	}
	return doJSON(t, "POST", url, "", withAuth)
}

// regWantCredentials checks a successful registration answer: user ID,
// device and a token that whoami accepts for that user and device.
func regWantCredentials(t *testing.T, srv *Server, r rawResponse, wantUser id.UserID) string {
	t.Helper()
	r.wantOK(t)
	token, _ := r.Body["access_token"].(string)
	device, _ := r.Body["device_id"].(string)
	if token == "" || device == "" {
		t.Fatalf("registration answer lacks access_token or device_id: %s", r.Raw)
	}
	if wantUser != "" && r.Body["user_id"] != string(wantUser) {
		t.Fatalf("user_id %v, want %s", r.Body["user_id"], wantUser)
	}
	who := whoami(t, srv, token)
	who.wantOK(t)
	if who.Body["user_id"] != r.Body["user_id"] || who.Body["device_id"] != device {
		t.Fatalf("whoami %s does not match registration %s", who.Raw, r.Raw)
	}
	return token
}

// regAvailable is GET /register/available?username=name.
func regAvailable(t *testing.T, srv *Server, name string) rawResponse {
	t.Helper()
	return doJSON(t, "GET", srv.URL+"/_matrix/client/v3/register/available?username="+url.QueryEscape(name), "", nil)
}

func TestRegistrationDisabled(t *testing.T) {
	srv := startAccounts(t, map[string]string{"WEFT_REGISTRATION_MODE": "disabled"})
	doJSON(t, "POST", regURL(srv), "", map[string]any{}).wantErr(t, 403, "M_FORBIDDEN")
	doJSON(t, "POST", regURL(srv), "", map[string]any{
		"username": "alice", "password": regPassword,
		"auth": map[string]any{"type": "m.login.dummy"},
	}).wantErr(t, 403, "M_FORBIDDEN")
	doJSON(t, "POST", srv.URL+"/_matrix/client/r0/register", "", map[string]any{
		"username": "alice", "password": regPassword,
	}).wantErr(t, 403, "M_FORBIDDEN")
	// Tokens are not in use: the validity endpoint says so (spec: 403).
	doJSON(t, "GET", srv.URL+"/_matrix/client/v1/register/m.login.registration_token/validity?token=abc", "", nil).
		wantErr(t, 403, "M_FORBIDDEN")
	if _, err := srv.Client().RegisterDummy(context.Background(), &mautrix.ReqRegister[any]{Username: "alice", Password: regPassword}); err == nil {
		t.Fatal("mautrix registered on a server with registration disabled")
	}
}

func TestRegistrationOpenDummy(t *testing.T) {
	srv := startAccounts(t, nil)
	ctx := context.Background()

	// The first call, without auth, only starts user-interactive auth.
	first := doJSON(t, "POST", regURL(srv), "", map[string]any{"username": "alice", "password": regPassword})
	regWantUIA(t, first, "m.login.dummy")
	if _, ok := first.Body["errcode"]; ok {
		t.Fatalf("a fresh UIA challenge carries no errcode: %s", first.Raw)
	}
	regAvailable(t, srv, "alice").wantOK(t) // nothing was created yet

	// mautrix completes the dummy flow.
	cli := srv.Client()
	resp, err := cli.RegisterDummy(ctx, &mautrix.ReqRegister[any]{Username: "alice", Password: regPassword})
	if err != nil {
		t.Fatal(err)
	}
	if resp.UserID != "@alice:localhost" || resp.AccessToken == "" || resp.DeviceID == "" {
		t.Fatalf("registration answer %+v", resp)
	}
	cli.SetCredentials(resp.UserID, resp.AccessToken)
	who, err := cli.Whoami(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if who.UserID != resp.UserID || who.DeviceID != resp.DeviceID {
		t.Fatalf("whoami %+v, registered %+v", who, resp)
	}
	// The stored password is the one given: a password login works.
	login, err := srv.Client().Login(ctx, &mautrix.ReqLogin{
		Type:       mautrix.AuthTypePassword,
		Identifier: mautrix.UserIdentifier{Type: mautrix.IdentifierTypeUser, User: "alice"},
		Password:   regPassword,
	})
	if err != nil {
		t.Fatalf("login after registration: %v", err)
	}
	if login.UserID != resp.UserID {
		t.Fatalf("login as %s, registered %s", login.UserID, resp.UserID)
	}

	// A session that completed a registration cannot register another account.
	s1 := regWantUIA(t, doJSON(t, "POST", regURL(srv), "", map[string]any{"username": "bob", "password": regPassword}), "m.login.dummy")
	regWantCredentials(t, srv, doJSON(t, "POST", regURL(srv), "", map[string]any{
		"username": "bob", "password": regPassword,
		"auth": map[string]any{"type": "m.login.dummy", "session": s1},
	}), "@bob:localhost")
	again := doJSON(t, "POST", regURL(srv), "", map[string]any{
		"username": "carol", "password": regPassword,
		"auth": map[string]any{"type": "m.login.dummy", "session": s1},
	})
	if again.Status == http.StatusOK || again.Body["errcode"] == nil {
		t.Fatalf("spent UIA session registered again: %d %s", again.Status, again.Raw)
	}
	regAvailable(t, srv, "carol").wantOK(t)

	// An auth type not offered is refused with the flows again.
	bad := doJSON(t, "POST", regURL(srv), "", map[string]any{
		"username": "dave", "password": regPassword,
		"auth": map[string]any{"type": "m.login.registration_token", "token": "x"},
	})
	regWantUIA(t, bad, "m.login.dummy")
	if bad.Body["errcode"] == nil {
		t.Fatalf("unoffered stage accepted silently: %s", bad.Raw)
	}
	regAvailable(t, srv, "dave").wantOK(t)
}

func TestRegistrationR0Alias(t *testing.T) {
	srv := startAccounts(t, nil)
	r0 := srv.URL + "/_matrix/client/r0/register"
	regWantUIA(t, doJSON(t, "POST", r0, "", map[string]any{"username": "olduser", "password": regPassword}), "m.login.dummy")
	token := regWantCredentials(t, srv, regDummy(t, r0, map[string]any{"username": "olduser", "password": regPassword}), "@olduser:localhost")
	who := doJSON(t, "GET", srv.URL+"/_matrix/client/r0/account/whoami", token, nil)
	who.wantOK(t)
	if who.Body["user_id"] != "@olduser:localhost" {
		t.Fatalf("r0 whoami %s", who.Raw)
	}
	// Same validation as v3.
	doJSON(t, "POST", r0, "", map[string]any{"username": "olduser", "password": regPassword}).wantErr(t, 400, "M_USER_IN_USE")
	doJSON(t, "POST", r0, "", "nope").wantErr(t, 400, "M_NOT_JSON")
	doJSON(t, "GET", srv.URL+"/_matrix/client/r0/register/available?username=olduser", "", nil).wantErr(t, 400, "M_USER_IN_USE")
}

// regInsertToken adds a registration token straight into the database.
func regInsertToken(t *testing.T, dbURL, token string, usesAllowed *int, expiry *time.Time) {
	t.Helper()
	withDB(t, dbURL, func(ctx context.Context, conn *pgx.Conn) {
		if _, err := conn.Exec(ctx, `INSERT INTO registration_tokens (token, uses_allowed, expiry_time) VALUES ($1, $2, $3)`,
			token, usesAllowed, expiry); err != nil {
			t.Fatal(err)
		}
	})
}

// regTokenCounts reads a token's pending and completed uses.
func regTokenCounts(t *testing.T, dbURL, token string) (pending, completed int) {
	t.Helper()
	withDB(t, dbURL, func(ctx context.Context, conn *pgx.Conn) {
		if err := conn.QueryRow(ctx, `SELECT pending, completed FROM registration_tokens WHERE token = $1`, token).Scan(&pending, &completed); err != nil {
			t.Fatal(err)
		}
	})
	return pending, completed
}

// regWithToken registers username with a registration token in two steps
// (challenge, then the token stage) and returns the session and final answer.
func regWithToken(t *testing.T, srv *Server, username, token string) (string, rawResponse) {
	t.Helper()
	body := map[string]any{"username": username, "password": regPassword}
	session := regWantUIA(t, doJSON(t, "POST", regURL(srv), "", body), "m.login.registration_token")
	body["auth"] = map[string]any{"type": "m.login.registration_token", "token": token, "session": session}
	return session, doJSON(t, "POST", regURL(srv), "", body)
}

// regWantTokenRefused checks the 401 a failed token stage answers: the
// flows again, the same session, and errcode M_FORBIDDEN.
func regWantTokenRefused(t *testing.T, r rawResponse, session string) {
	t.Helper()
	got := regWantUIA(t, r, "m.login.registration_token")
	if got != session {
		t.Fatalf("session changed from %q to %q", session, got)
	}
	if r.Body["errcode"] != "M_FORBIDDEN" || r.Body["error"] == nil {
		t.Fatalf("refused token: want errcode M_FORBIDDEN and error: %s", r.Raw)
	}
	if _, ok := r.Body["access_token"]; ok {
		t.Fatalf("refused token got an access token: %s", r.Raw)
	}
}

func TestRegistrationTokens(t *testing.T) {
	dbURL := pgtest.NewDatabase(t)
	one, five := 1, 5
	past, future := time.Now().Add(-time.Hour), time.Now().Add(24*time.Hour)
	regInsertToken(t, dbURL, "unlimited", nil, nil)
	regInsertToken(t, dbURL, "single", &one, nil)
	regInsertToken(t, dbURL, "expired", nil, &past)
	regInsertToken(t, dbURL, "later", &five, &future)
	regInsertToken(t, dbURL, "race", &one, nil)
	srv := startAccounts(t, map[string]string{"WEFT_REGISTRATION_MODE": "token", "WEFT_DATABASE_URL": dbURL})

	validity := func(token string) rawResponse {
		return doJSON(t, "GET", srv.URL+"/_matrix/client/v1/register/m.login.registration_token/validity?token="+url.QueryEscape(token), "", nil)
	}
	wantValid := func(token string, want bool) {
		t.Helper()
		r := validity(token)
		r.wantOK(t)
		if v, ok := r.Body["valid"].(bool); !ok || v != want {
			t.Fatalf("validity of %q: %s, want valid=%v", token, r.Raw, want)
		}
	}
	wantValid("unlimited", true)
	wantValid("single", true)
	wantValid("later", true)
	wantValid("expired", false)
	wantValid("no-such-token", false)
	validity("bad\x00token").wantErr(t, 400, "M_INVALID_PARAM")
	doJSON(t, "GET", srv.URL+"/_matrix/client/v1/register/m.login.registration_token/validity", "", nil).
		wantErr(t, 400, "M_MISSING_PARAM")

	t.Run("WrongThenGoodToken", func(t *testing.T) {
		body := map[string]any{"username": "tokenuser", "password": regPassword}
		session := regWantUIA(t, doJSON(t, "POST", regURL(srv), "", body), "m.login.registration_token")
		body["auth"] = map[string]any{"type": "m.login.registration_token", "token": "wrong", "session": session}
		regWantTokenRefused(t, doJSON(t, "POST", regURL(srv), "", body), session)
		regAvailable(t, srv, "tokenuser").wantOK(t)
		// The dummy stage does not get round the token.
		body["auth"] = map[string]any{"type": "m.login.dummy", "session": session}
		if r := doJSON(t, "POST", regURL(srv), "", body); r.Status != http.StatusUnauthorized {
			t.Fatalf("dummy auth in token mode: %d %s", r.Status, r.Raw)
		}
		regAvailable(t, srv, "tokenuser").wantOK(t)
		body["auth"] = map[string]any{"type": "m.login.registration_token", "token": "unlimited", "session": session}
		regWantCredentials(t, srv, doJSON(t, "POST", regURL(srv), "", body), "@tokenuser:localhost")
		if p, c := regTokenCounts(t, dbURL, "unlimited"); p != 0 || c != 1 {
			t.Fatalf("unlimited: pending %d completed %d, want 0 1", p, c)
		}
	})

	t.Run("MissingToken", func(t *testing.T) {
		body := map[string]any{"username": "notoken", "password": regPassword}
		session := regWantUIA(t, doJSON(t, "POST", regURL(srv), "", body), "m.login.registration_token")
		body["auth"] = map[string]any{"type": "m.login.registration_token", "session": session}
		r := doJSON(t, "POST", regURL(srv), "", body)
		regWantUIA(t, r, "m.login.registration_token")
		if r.Body["errcode"] == nil {
			t.Fatalf("token stage without a token: %s", r.Raw)
		}
		regAvailable(t, srv, "notoken").wantOK(t)
	})

	t.Run("UsesAllowedExhausted", func(t *testing.T) {
		_, r := regWithToken(t, srv, "firstuse", "single")
		regWantCredentials(t, srv, r, "@firstuse:localhost")
		wantValid("single", false)
		session, r := regWithToken(t, srv, "seconduse", "single")
		regWantTokenRefused(t, r, session)
		regAvailable(t, srv, "seconduse").wantOK(t)
		if p, c := regTokenCounts(t, dbURL, "single"); p != 0 || c != 1 {
			t.Fatalf("single: pending %d completed %d, want 0 1", p, c)
		}
	})

	t.Run("Expired", func(t *testing.T) {
		session, r := regWithToken(t, srv, "latecomer", "expired")
		regWantTokenRefused(t, r, session)
		regAvailable(t, srv, "latecomer").wantOK(t)
	})

	t.Run("NotYetExpired", func(t *testing.T) {
		_, r := regWithToken(t, srv, "intime", "later")
		regWantCredentials(t, srv, r, "@intime:localhost")
		wantValid("later", true) // 1 of 5 used
	})

	// Many clients racing for a single-use token: exactly one gets it.
	t.Run("ConcurrentSingleUse", func(t *testing.T) {
		const n = 6
		sessions := make([]string, n)
		for i := range sessions {
			sessions[i] = regWantUIA(t, doJSON(t, "POST", regURL(srv), "", map[string]any{
				"username": "racer" + string(rune('a'+i)), "password": regPassword,
			}), "m.login.registration_token")
		}
		type result struct {
			status int
			raw    string
		}
		results := make([]result, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				body, _ := json.Marshal(map[string]any{
					"username": "racer" + string(rune('a'+i)), "password": regPassword,
					"auth": map[string]any{"type": "m.login.registration_token", "token": "race", "session": sessions[i]},
				})
				resp, err := http.Post(regURL(srv), "application/json", bytes.NewReader(body))
				if err != nil {
					results[i] = result{raw: err.Error()}
					return
				}
				resp.Body.Close()
				results[i] = result{status: resp.StatusCode}
			}()
		}
		wg.Wait()
		ok := 0
		for i, r := range results {
			switch r.status {
			case http.StatusOK:
				ok++
			case http.StatusUnauthorized:
			default:
				t.Errorf("racer %d: %d %s", i, r.status, r.raw)
			}
		}
		if ok != 1 {
			t.Fatalf("%d registrations used a single-use token, want 1", ok)
		}
		if p, c := regTokenCounts(t, dbURL, "race"); p != 0 || c != 1 {
			t.Fatalf("race: pending %d completed %d, want 0 1", p, c)
		}
	})
}

func TestRegisterUsernameRules(t *testing.T) {
	srv := startAccounts(t, nil)
	post := func(username string) rawResponse {
		return doJSON(t, "POST", regURL(srv), "", map[string]any{
			"username": username, "password": regPassword,
			"auth": map[string]any{"type": "m.login.dummy"},
		})
	}

	// Upper case is folded to lower case.
	regWantCredentials(t, srv, regDummy(t, regURL(srv), map[string]any{"username": "Alice", "password": regPassword}), "@alice:localhost")

	for _, name := range []string{"bad name", "a:b", "émile", "semi;colon", "tab\tname", "#hash", "@at", strings.Repeat("x", 250)} {
		post(name).wantErr(t, 400, "M_INVALID_USERNAME")
		regAvailable(t, srv, name).wantErr(t, 400, "M_INVALID_USERNAME")
	}
	for _, name := range []string{"_bridge", "_irc_alice"} {
		post(name).wantErr(t, 400, "M_EXCLUSIVE")
		regAvailable(t, srv, name).wantErr(t, 400, "M_EXCLUSIVE")
	}
	for _, name := range []string{"admin", "Admin", "root", "postmaster"} {
		post(name).wantErr(t, 400, "M_USER_IN_USE")
		regAvailable(t, srv, name).wantErr(t, 400, "M_USER_IN_USE")
	}
	for _, name := range []string{"alice", "ALICE", "aLiCe"} {
		post(name).wantErr(t, 400, "M_USER_IN_USE")
		regAvailable(t, srv, name).wantErr(t, 400, "M_USER_IN_USE")
	}

	// Every character the grammar allows.
	free := regAvailable(t, srv, "bob.smith_1=2-3/4+5")
	free.wantOK(t)
	if free.Body["available"] != true {
		t.Fatalf("available: %s", free.Raw)
	}
	if _, err := srv.Client().RegisterAvailable(context.Background(), "bob"); err != nil {
		t.Fatalf("mautrix RegisterAvailable: %v", err)
	}
	regWantCredentials(t, srv, regDummy(t, regURL(srv), map[string]any{"username": "bob.smith_1=2-3/4+5", "password": regPassword}), "@bob.smith_1=2-3/4+5:localhost")
	regAvailable(t, srv, "bob.smith_1=2-3/4+5").wantErr(t, 400, "M_USER_IN_USE")
	doJSON(t, "GET", srv.URL+"/_matrix/client/v3/register/available", "", nil).wantErr(t, 400, "M_MISSING_PARAM")

	// No username: the server picks a valid, fresh one.
	var generated []string
	for range 2 {
		r := regDummy(t, regURL(srv), map[string]any{"password": regPassword})
		regWantCredentials(t, srv, r, "")
		uid := id.UserID(r.Body["user_id"].(string))
		lp, server, err := uid.ParseAndValidateStrict()
		if err != nil || server != "localhost" || lp == "" {
			t.Fatalf("generated user ID %q: %v", uid, err)
		}
		generated = append(generated, lp)
	}
	if generated[0] == generated[1] {
		t.Fatalf("two registrations got the same generated localpart %q", generated[0])
	}
}

func TestRegisterPasswordPolicy(t *testing.T) {
	srv := startAccounts(t, map[string]string{
		"WEFT_PASSWORDS_MIN_LENGTH":        "12",
		"WEFT_PASSWORDS_REQUIRE_DIGIT":     "true",
		"WEFT_PASSWORDS_REQUIRE_SYMBOL":    "true",
		"WEFT_PASSWORDS_REQUIRE_LOWERCASE": "true",
		"WEFT_PASSWORDS_REQUIRE_UPPERCASE": "true",
	})
	post := func(body map[string]any) rawResponse {
		return doJSON(t, "POST", regURL(srv), "", body)
	}
	for _, pw := range []string{
		"Sh0rt!pass",            // 10 characters
		"Long enough password!", // no digit
		"LongEnoughPassw0rd",    // no symbol (a space would count, as in Synapse)
		"long enough passw0rd!", // no upper case
		"LONG ENOUGH PASSW0RD!", // no lower case
	} {
		post(map[string]any{"username": "weak", "password": pw}).wantErr(t, 400, "M_WEAK_PASSWORD")
		// Also when the client already completed the dummy stage.
		post(map[string]any{"username": "weak", "password": pw, "auth": map[string]any{"type": "m.login.dummy"}}).
			wantErr(t, 400, "M_WEAK_PASSWORD")
	}
	post(map[string]any{"username": "weak"}).wantErr(t, 400, "M_MISSING_PARAM")
	post(map[string]any{"username": "weak", "password": ""}).wantErr(t, 400, "M_MISSING_PARAM")
	// Longer than bcrypt can hash: refused, never truncated.
	if r := post(map[string]any{"username": "weak", "password": "Aa1!" + strings.Repeat("x", 80)}); r.Status != 400 || r.Body["errcode"] == nil {
		t.Fatalf("over-long password: %d %s", r.Status, r.Raw)
	}
	regAvailable(t, srv, "weak").wantOK(t) // no refused attempt created the account

	// Twelve characters counted as characters, not bytes.
	strong := "Ünïcödé-Päß1"
	regWantCredentials(t, srv, regDummy(t, regURL(srv), map[string]any{"username": "strong", "password": strong}), "@strong:localhost")
	if _, err := srv.Client().Login(context.Background(), &mautrix.ReqLogin{
		Type:       mautrix.AuthTypePassword,
		Identifier: mautrix.UserIdentifier{Type: mautrix.IdentifierTypeUser, User: "strong"},
		Password:   strong,
	}); err != nil {
		t.Fatalf("login with the registered password: %v", err)
	}
}

func TestRegisterInhibitLogin(t *testing.T) {
	srv := startAccounts(t, nil)
	r := regDummy(t, regURL(srv), map[string]any{"username": "quiet", "password": regPassword, "inhibit_login": true})
	r.wantOK(t)
	if r.Body["user_id"] != "@quiet:localhost" {
		t.Fatalf("user_id: %s", r.Raw)
	}
	for _, k := range []string{"access_token", "device_id", "refresh_token"} {
		if _, ok := r.Body[k]; ok {
			t.Fatalf("inhibit_login answered %s: %s", k, r.Raw)
		}
	}
	// The account exists and has no device until it logs in.
	regAvailable(t, srv, "quiet").wantErr(t, 400, "M_USER_IN_USE")
	ctx := context.Background()
	cli := srv.Client()
	if _, err := cli.Login(ctx, &mautrix.ReqLogin{
		Type:             mautrix.AuthTypePassword,
		Identifier:       mautrix.UserIdentifier{Type: mautrix.IdentifierTypeUser, User: "quiet"},
		Password:         regPassword,
		StoreCredentials: true,
	}); err != nil {
		t.Fatal(err)
	}
	devs, err := cli.GetDevicesInfo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(devs.Devices) != 1 || devs.Devices[0].DeviceID != cli.DeviceID {
		t.Fatalf("devices after inhibited registration and one login: %+v (logged in as %s)", devs.Devices, cli.DeviceID)
	}
}

func TestRegisterGuest(t *testing.T) {
	t.Run("ForbiddenByDefault", func(t *testing.T) {
		srv := startAccounts(t, nil)
		doJSON(t, "POST", regURL(srv)+"?kind=guest", "", map[string]any{}).wantErr(t, 403, "M_GUEST_ACCESS_FORBIDDEN")
		if _, _, err := srv.Client().RegisterGuest(context.Background(), &mautrix.ReqRegister[any]{}); !errors.Is(err, mautrix.RespError{ErrCode: "M_GUEST_ACCESS_FORBIDDEN"}) {
			t.Fatalf("mautrix RegisterGuest: %v", err)
		}
		doJSON(t, "POST", regURL(srv)+"?kind=robot", "", map[string]any{}).wantErr(t, 400, "M_INVALID_PARAM")
	})
	t.Run("Allowed", func(t *testing.T) {
		srv := startAccounts(t, map[string]string{"WEFT_REGISTRATION_ALLOW_GUESTS": "true"})
		ctx := context.Background()
		resp, _, err := srv.Client().RegisterGuest(ctx, &mautrix.ReqRegister[any]{})
		if err != nil {
			t.Fatal(err)
		}
		if resp.AccessToken == "" || resp.DeviceID == "" || resp.UserID == "" {
			t.Fatalf("guest registration %+v", resp)
		}
		who := whoami(t, srv, resp.AccessToken)
		who.wantOK(t)
		if who.Body["is_guest"] != true || who.Body["user_id"] != string(resp.UserID) {
			t.Fatalf("guest whoami: %s", who.Raw)
		}
		// A guest does not choose its name.
		r := doJSON(t, "POST", regURL(srv)+"?kind=guest", "", map[string]any{"username": "chosen"})
		r.wantOK(t)
		if r.Body["user_id"] == "@chosen:localhost" || r.Body["user_id"] == string(resp.UserID) {
			t.Fatalf("second guest: %s", r.Raw)
		}
		// Ordinary users are not guests.
		user := registerUser(t, srv, "member", regPassword)
		who = whoami(t, srv, user.AccessToken)
		who.wantOK(t)
		if who.Body["is_guest"] != false {
			t.Fatalf("user whoami: %s", who.Raw)
		}
	})
}

func TestRegisterDeviceIDAndName(t *testing.T) {
	srv := startAccounts(t, nil)
	r := regDummy(t, regURL(srv), map[string]any{
		"username": "phoneuser", "password": regPassword,
		"device_id": "MYPHONE", "initial_device_display_name": "Alice's phone ☎",
	})
	token := regWantCredentials(t, srv, r, "@phoneuser:localhost")
	if r.Body["device_id"] != "MYPHONE" {
		t.Fatalf("device_id: %s", r.Raw)
	}
	cli := srv.Client()
	cli.SetCredentials("@phoneuser:localhost", token)
	devs, err := cli.GetDevicesInfo(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(devs.Devices) != 1 || devs.Devices[0].DeviceID != "MYPHONE" || devs.Devices[0].DisplayName != "Alice's phone ☎" {
		t.Fatalf("devices: %+v", devs.Devices)
	}
	// Without them, the server picks a device ID.
	r = regDummy(t, regURL(srv), map[string]any{"username": "other", "password": regPassword})
	regWantCredentials(t, srv, r, "@other:localhost")
	// A device ID that is not printable ASCII is refused before anything is created.
	doJSON(t, "POST", regURL(srv), "", map[string]any{"username": "spacey", "password": regPassword, "device_id": "MY PHONE"}).
		wantErr(t, 400, "M_INVALID_PARAM")
	regAvailable(t, srv, "spacey").wantOK(t)
	// PostgreSQL text cannot hold U+0000: a client error, not a 500.
	regWantUIA(t, doJSON(t, "POST", regURL(srv), "", map[string]any{"username": "nul", "password": regPassword}), "m.login.dummy")
	doJSON(t, "POST", regURL(srv), "", map[string]any{
		"username": "nul", "password": regPassword, "initial_device_display_name": "a\x00b",
		"auth": map[string]any{"type": "m.login.dummy"},
	}).wantErr(t, 400, "M_INVALID_PARAM")
	doJSON(t, "POST", regURL(srv), "", map[string]any{
		"username": "nul", "password": regPassword, "auth": map[string]any{"type": "m.login.dummy", "session": "\x00"},
	}).wantErr(t, 400, "M_INVALID_PARAM")
	regAvailable(t, srv, "nul").wantOK(t)
}

func TestRegisterMalformedBodies(t *testing.T) {
	srv := startAccounts(t, nil)
	for _, body := range []string{"", "not json", "[]", `"username"`, `{"username": "x"`, "null"} {
		doJSON(t, "POST", regURL(srv), "", body).wantErr(t, 400, "M_NOT_JSON")
	}
	for _, body := range []string{
		`{"username": 5, "password": "correct horse battery"}`,
		`{"username": "x", "password": ["a"]}`,
		`{"username": "x", "password": "correct horse battery", "inhibit_login": "yes"}`,
		`{"username": "x", "password": "correct horse battery", "device_id": {}}`,
		`{"username": "x", "password": "correct horse battery", "auth": "dummy"}`,
		`{"username": "x", "password": "correct horse battery", "auth": {"type": 1}}`,
	} {
		doJSON(t, "POST", regURL(srv), "", body).wantErr(t, 400, "M_BAD_JSON")
	}
	regAvailable(t, srv, "x").wantOK(t)
	doJSON(t, "POST", srv.URL+"/_synapse/admin/v1/register", "", "nope").wantErr(t, 400, "M_NOT_JSON")
}

// regMAC is Synapse's shared-secret registration MAC, computed here
// independently of the server.
func regMAC(secret, nonce, user, password string, admin bool) string {
	m := hmac.New(sha1.New, []byte(secret))
	role := "notadmin"
	if admin {
		role = "admin"
	}
	m.Write([]byte(strings.Join([]string{nonce, user, password, role}, "\x00")))
	return hex.EncodeToString(m.Sum(nil))
}

func TestSharedSecretRegistrationOff(t *testing.T) {
	srv := startAccounts(t, nil)
	nonce := doJSON(t, "GET", srv.URL+"/_synapse/admin/v1/register", "", nil)
	if nonce.Status < 400 || nonce.Status >= 500 || nonce.Body["errcode"] == nil || nonce.Body["nonce"] != nil {
		t.Fatalf("nonce with no shared secret: %d %s", nonce.Status, nonce.Raw)
	}
	r := doJSON(t, "POST", srv.URL+"/_synapse/admin/v1/register", "", map[string]any{
		"nonce": "abc", "username": "sneaky", "password": regPassword, "mac": regMAC("", "abc", "sneaky", regPassword, true), "admin": true,
	})
	if r.Status < 400 || r.Status >= 500 || r.Body["errcode"] == nil {
		t.Fatalf("shared-secret registration with no secret: %d %s", r.Status, r.Raw)
	}
	regAvailable(t, srv, "sneaky").wantOK(t)
}

func TestSharedSecretRegistration(t *testing.T) {
	const secret = "a long shared secret for operators"
	dbURL := pgtest.NewDatabase(t)
	// Registration is disabled: the shared secret still works, it is the operator's.
	srv := startAccounts(t, map[string]string{
		"WEFT_REGISTRATION_MODE":          "disabled",
		"WEFT_REGISTRATION_SHARED_SECRET": secret,
		"WEFT_DATABASE_URL":               dbURL,
	})
	endpoint := srv.URL + "/_synapse/admin/v1/register"
	nonceRE := regexp.MustCompile(`^\S+$`)
	getNonce := func() string {
		t.Helper()
		r := doJSON(t, "GET", endpoint, "", nil)
		r.wantOK(t)
		n, _ := r.Body["nonce"].(string)
		if !nonceRE.MatchString(n) {
			t.Fatalf("nonce: %s", r.Raw)
		}
		return n
	}
	isAdmin := func(userID string) bool {
		t.Helper()
		var admin bool
		withDB(t, dbURL, func(ctx context.Context, conn *pgx.Conn) {
			if err := conn.QueryRow(ctx, `SELECT is_admin FROM users WHERE user_id = $1`, userID).Scan(&admin); err != nil {
				t.Fatal(err)
			}
		})
		return admin
	}
	register := func(nonce, user, password string, admin bool, mac string) rawResponse {
		return doJSON(t, "POST", endpoint, "", map[string]any{
			"nonce": nonce, "username": user, "password": password, "admin": admin, "mac": mac,
			"displayname": "Operator " + user,
		})
	}

	n1, n2 := getNonce(), getNonce()
	if n1 == n2 {
		t.Fatalf("two nonces are equal: %s", n1)
	}

	// A plain user.
	r := register(n1, "scripted", regPassword, false, regMAC(secret, n1, "scripted", regPassword, false))
	token := regWantCredentials(t, srv, r, "@scripted:localhost")
	if isAdmin("@scripted:localhost") {
		t.Fatal("notadmin registration made an admin")
	}
	name := doJSON(t, "GET", srv.URL+"/_matrix/client/v3/profile/@scripted:localhost/displayname", token, nil)
	name.wantOK(t)
	if name.Body["displayname"] != "Operator scripted" {
		t.Fatalf("displayname: %s", name.Raw)
	}

	// A nonce is single use, even with a correct MAC for a new user.
	register(n1, "replayed", regPassword, false, regMAC(secret, n1, "replayed", regPassword, false)).wantErr(t, 403, "M_FORBIDDEN")
	regAvailable(t, srv, "replayed").wantOK(t)

	// An admin.
	r = register(n2, "boss", regPassword, true, regMAC(secret, n2, "boss", regPassword, true))
	regWantCredentials(t, srv, r, "@boss:localhost")
	if !isAdmin("@boss:localhost") {
		t.Fatal("admin registration did not make an admin")
	}

	// Wrong MACs: another secret, another password, and a MAC for notadmin
	// presented with admin true (the MAC binds the admin flag).
	for _, c := range []struct {
		name, user string
		admin      bool
		mac        func(nonce string) string
	}{
		{"wrong secret", "w1", false, func(n string) string { return regMAC("guess", n, "w1", regPassword, false) }},
		{"other password", "w2", false, func(n string) string { return regMAC(secret, n, "w2", "something else", false) }},
		{"admin flag", "w3", true, func(n string) string { return regMAC(secret, n, "w3", regPassword, false) }},
		{"not hex", "w4", false, func(string) string { return "zz" }},
		{"truncated", "w5", false, func(n string) string { return regMAC(secret, n, "w5", regPassword, false)[:20] }},
	} {
		n := getNonce()
		register(n, c.user, regPassword, c.admin, c.mac(n)).wantErr(t, 403, "M_FORBIDDEN")
		regAvailable(t, srv, c.user).wantOK(t)
	}

	// A nonce the server never issued.
	register("made-up", "w6", regPassword, false, regMAC(secret, "made-up", "w6", regPassword, false)).wantErr(t, 403, "M_FORBIDDEN")
	// An expired nonce (they live 60 s; age this one in the database).
	n := getNonce()
	withDB(t, dbURL, func(ctx context.Context, conn *pgx.Conn) {
		tag, err := conn.Exec(ctx, `UPDATE registration_nonces SET expires_at = now() - interval '1 second' WHERE nonce = $1`, n)
		if err != nil || tag.RowsAffected() != 1 {
			t.Fatalf("ageing nonce: %v %v", tag, err)
		}
	})
	register(n, "w9", regPassword, false, regMAC(secret, n, "w9", regPassword, false)).wantErr(t, 403, "M_FORBIDDEN")
	regAvailable(t, srv, "w9").wantOK(t)
	// Missing fields.
	doJSON(t, "POST", endpoint, "", map[string]any{"username": "w7", "password": regPassword}).wantErr(t, 400, "M_MISSING_PARAM")
	// The usual username rules apply.
	n = getNonce()
	register(n, "admin", regPassword, false, regMAC(secret, n, "admin", regPassword, false)).wantErr(t, 400, "M_USER_IN_USE")
	n = getNonce()
	register(n, "scripted", regPassword, false, regMAC(secret, n, "scripted", regPassword, false)).wantErr(t, 400, "M_USER_IN_USE")
	// Ordinary registration stays disabled.
	doJSON(t, "POST", regURL(srv), "", map[string]any{"username": "w8", "password": regPassword}).wantErr(t, 403, "M_FORBIDDEN")
}
