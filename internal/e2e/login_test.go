package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/jackc/pgx/v5"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"

	"github.com/weftchat/weft/storage/pgtest"
)

// End-to-end tests of login, access and refresh tokens, logout, devices,
// password change, JWT login, lockout, rate limits and request draining.

const (
	loginPw      = "correct horse battery"
	loginOtherPw = "another long password"
)

// loginPost sends a raw POST /login.
func loginPost(t *testing.T, srv *Server, body any) rawResponse {
	t.Helper()
	return doJSON(t, "POST", srv.URL+"/_matrix/client/v3/login", "", body)
}

// loginPasswordBody is a password login request for user.
func loginPasswordBody(user, password string) map[string]any {
	return map[string]any{
		"type":       "m.login.password",
		"identifier": map[string]any{"type": "m.id.user", "user": user},
		"password":   password,
	}
}

// loginTokenDead fails unless token is refused with 401 M_UNKNOWN_TOKEN.
func loginTokenDead(t *testing.T, srv *Server, token, what string) {
	t.Helper()
	r := whoami(t, srv, token)
	if r.Status != http.StatusUnauthorized || r.Body["errcode"] != "M_UNKNOWN_TOKEN" {
		t.Fatalf("%s: whoami got %d %s, want 401 M_UNKNOWN_TOKEN", what, r.Status, r.Raw)
	}
}

// loginTokenAlive fails unless whoami with token answers 200 for user.
func loginTokenAlive(t *testing.T, srv *Server, token string, user id.UserID, what string) {
	t.Helper()
	r := whoami(t, srv, token)
	if r.Status != http.StatusOK || r.Body["user_id"] != string(user) {
		t.Fatalf("%s: whoami got %d %s, want 200 for %s", what, r.Status, r.Raw, user)
	}
}

// loginUIAPassword is a UIA auth object for the m.login.password stage.
func loginUIAPassword(user id.UserID, password, session string) map[string]any {
	return map[string]any{
		"type":       "m.login.password",
		"identifier": map[string]any{"type": "m.id.user", "user": string(user)},
		"password":   password,
		"session":    session,
	}
}

// loginUIASession checks that r is the first UIA 401 offering exactly the
// password flow, and returns its session.
func loginUIASession(t *testing.T, r rawResponse) string {
	t.Helper()
	var c struct {
		Flows []struct {
			Stages []string `json:"stages"`
		} `json:"flows"`
		Session string `json:"session"`
		Errcode string `json:"errcode"`
	}
	if r.Status != http.StatusUnauthorized {
		t.Fatalf("got %d %s, want a 401 UIA challenge", r.Status, r.Raw)
	}
	if err := json.Unmarshal(r.Raw, &c); err != nil {
		t.Fatal(err)
	}
	if len(c.Flows) != 1 || len(c.Flows[0].Stages) != 1 || c.Flows[0].Stages[0] != "m.login.password" || c.Session == "" || c.Errcode != "" {
		t.Fatalf("UIA challenge %s, want flows [[m.login.password]], a session and no errcode", r.Raw)
	}
	return c.Session
}

// loginDeviceIDs lists the device IDs of token's user.
func loginDeviceIDs(t *testing.T, srv *Server, token string) []string {
	t.Helper()
	r := doJSON(t, "GET", srv.URL+"/_matrix/client/v3/devices", token, nil)
	r.wantOK(t)
	var out []string
	devs, _ := r.Body["devices"].([]any)
	for _, d := range devs {
		out = append(out, d.(map[string]any)["device_id"].(string))
	}
	return out
}

func loginCount(list []string, s string) int {
	n := 0
	for _, x := range list {
		if x == s {
			n++
		}
	}
	return n
}

func TestLoginFlows(t *testing.T) {
	t.Parallel()
	plain := startAccounts(t, nil)
	flows, err := plain.Client().GetLoginFlows(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(flows.Flows) != 1 || flows.Flows[0].Type != mautrix.AuthTypePassword {
		t.Fatalf("flows without JWT: %+v, want only m.login.password", flows.Flows)
	}
	// The r0 path serves the same.
	r := doJSON(t, "GET", plain.URL+"/_matrix/client/r0/login", "", nil)
	r.wantOK(t)
	if !strings.Contains(string(r.Raw), `"m.login.password"`) || strings.Contains(string(r.Raw), "jwt") {
		t.Fatalf("r0 flows %s", r.Raw)
	}
	// JWT login is refused when not enabled.
	loginPost(t, plain, map[string]any{"type": "org.matrix.login.jwt", "token": "x.y.z"}).wantErr(t, 400, "M_UNKNOWN")

	withJWT := startAccounts(t, map[string]string{"WEFT_JWT_ENABLED": "true", "WEFT_JWT_SECRET": "s3cret-s3cret-s3cret"})
	flows, err = withJWT.Client().GetLoginFlows(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var types []string
	for _, f := range flows.Flows {
		types = append(types, string(f.Type))
	}
	if len(types) != 2 || loginCount(types, "m.login.password") != 1 || loginCount(types, "org.matrix.login.jwt") != 1 {
		t.Fatalf("flows with JWT: %v, want m.login.password and org.matrix.login.jwt", types)
	}
}

func TestLoginPassword(t *testing.T) {
	t.Parallel()
	srv := startAccounts(t, nil)
	registerUser(t, srv, "alice", loginPw)
	ctx := context.Background()

	// Every spelling of the user logs in as @alice:localhost, and the token
	// it returns is the session of the device it returns.
	seen := map[id.DeviceID]bool{}
	for _, user := range []string{"alice", "@alice:localhost", "ALICE", "@Alice:LOCALHOST"} {
		cli := srv.Client()
		resp, err := cli.Login(ctx, &mautrix.ReqLogin{
			Type:             mautrix.AuthTypePassword,
			Identifier:       mautrix.UserIdentifier{Type: mautrix.IdentifierTypeUser, User: user},
			Password:         loginPw,
			StoreCredentials: true,
		})
		if err != nil {
			t.Fatalf("login as %q: %v", user, err)
		}
		if resp.UserID != "@alice:localhost" || resp.AccessToken == "" || resp.DeviceID == "" {
			t.Fatalf("login as %q: %+v", user, resp)
		}
		if resp.RefreshToken != "" || resp.ExpiresInMS != 0 {
			t.Fatalf("login as %q without refresh_token got refresh_token/expires_in_ms: %+v", user, resp)
		}
		if seen[resp.DeviceID] {
			t.Fatalf("device %s handed out twice", resp.DeviceID)
		}
		seen[resp.DeviceID] = true
		who, err := cli.Whoami(ctx)
		if err != nil || who.UserID != "@alice:localhost" || who.DeviceID != resp.DeviceID {
			t.Fatalf("whoami after login as %q: %+v %v", user, who, err)
		}
	}

	// The deprecated top-level "user" field still works.
	r := loginPost(t, srv, map[string]any{"type": "m.login.password", "user": "alice", "password": loginPw})
	r.wantOK(t)
	if r.Body["user_id"] != "@alice:localhost" || r.Body["access_token"] == "" {
		t.Fatalf("login with user field: %s", r.Raw)
	}
	loginTokenAlive(t, srv, r.Body["access_token"].(string), "@alice:localhost", "token from deprecated login")

	// Failures: the same 403 for a wrong password, an unknown user and
	// another server's user.
	for _, body := range []map[string]any{
		loginPasswordBody("alice", "wrong password!"),
		loginPasswordBody("alice", ""),
		loginPasswordBody("nobody", loginPw),
		loginPasswordBody("@alice:elsewhere.example", loginPw),
	} {
		r := loginPost(t, srv, body)
		r.wantErr(t, 403, "M_FORBIDDEN")
		if r.Body["access_token"] != nil {
			t.Fatalf("failed login returned a token: %s", r.Raw)
		}
	}
	_, err := srv.Client().Login(ctx, &mautrix.ReqLogin{
		Type:       mautrix.AuthTypePassword,
		Identifier: mautrix.UserIdentifier{Type: mautrix.IdentifierTypeUser, User: "alice"},
		Password:   "wrong password!",
	})
	wantHTTPErr(t, err, 403, "M_FORBIDDEN")

	loginPost(t, srv, map[string]any{"type": "m.login.bogus", "user": "alice", "password": loginPw}).wantErr(t, 400, "M_UNKNOWN")

	// The r0 path logs in too.
	r = doJSON(t, "POST", srv.URL+"/_matrix/client/r0/login", "", loginPasswordBody("alice", loginPw))
	r.wantOK(t)
	if r.Body["user_id"] != "@alice:localhost" {
		t.Fatalf("r0 login: %s", r.Raw)
	}
	loginTokenAlive(t, srv, r.Body["access_token"].(string), "@alice:localhost", "token from r0 login")
}

// A client-chosen device_id is kept, logging in again with it reuses the
// device, and initial_device_display_name names only a new device.
func TestLoginDeviceIDReused(t *testing.T) {
	t.Parallel()
	srv := startAccounts(t, nil)
	reg := registerUser(t, srv, "dora", loginPw)
	ctx := context.Background()
	before := loginDeviceIDs(t, srv, reg.AccessToken)

	login := func(name string) *mautrix.RespLogin {
		resp, err := srv.Client().Login(ctx, &mautrix.ReqLogin{
			Type:                     mautrix.AuthTypePassword,
			Identifier:               mautrix.UserIdentifier{Type: mautrix.IdentifierTypeUser, User: "dora"},
			Password:                 loginPw,
			DeviceID:                 "MYLAPTOP",
			InitialDeviceDisplayName: name,
		})
		if err != nil {
			t.Fatal(err)
		}
		if resp.DeviceID != "MYLAPTOP" {
			t.Fatalf("device_id %q, want the requested MYLAPTOP", resp.DeviceID)
		}
		return resp
	}
	first := login("Dora's laptop")
	second := login("Something else")
	if first.AccessToken == second.AccessToken {
		t.Fatal("two logins got the same access token")
	}
	loginTokenAlive(t, srv, second.AccessToken, "@dora:localhost", "second login on MYLAPTOP")

	after := loginDeviceIDs(t, srv, second.AccessToken)
	if loginCount(after, "MYLAPTOP") != 1 || len(after) != len(before)+1 {
		t.Fatalf("devices %v after two logins on MYLAPTOP (before: %v), want one MYLAPTOP added", after, before)
	}
	dev := doJSON(t, "GET", srv.URL+"/_matrix/client/v3/devices/MYLAPTOP", second.AccessToken, nil)
	dev.wantOK(t)
	if dev.Body["display_name"] != "Dora's laptop" {
		t.Fatalf("display_name %v, want the first login's (ignored for a known device)", dev.Body["display_name"])
	}
}

func TestTokenTransport(t *testing.T) {
	t.Parallel()
	srv := startAccounts(t, nil)
	cli := registerUser(t, srv, "tom", loginPw)
	ctx := context.Background()
	whoamiURL := srv.URL + "/_matrix/client/v3/account/whoami"

	// Bearer header, through mautrix.
	who, err := cli.Whoami(ctx)
	if err != nil || who.UserID != "@tom:localhost" || who.DeviceID != cli.DeviceID {
		t.Fatalf("whoami: %+v %v", who, err)
	}
	r := whoami(t, srv, cli.AccessToken)
	r.wantOK(t)
	if r.Body["user_id"] != "@tom:localhost" || r.Body["device_id"] != string(cli.DeviceID) || r.Body["is_guest"] != false {
		t.Fatalf("whoami body %s, want user_id, device_id and is_guest false", r.Raw)
	}

	// Deprecated query parameter.
	r = doJSON(t, "GET", whoamiURL+"?access_token="+cli.AccessToken, "", nil)
	r.wantOK(t)
	if r.Body["user_id"] != "@tom:localhost" {
		t.Fatalf("whoami with ?access_token: %s", r.Raw)
	}

	// The header wins over the query parameter, both ways.
	doJSON(t, "GET", whoamiURL+"?access_token=wat_not_a_real_token", cli.AccessToken, nil).wantOK(t)
	doJSON(t, "GET", whoamiURL+"?access_token="+cli.AccessToken, "wat_not_a_real_token", nil).wantErr(t, 401, "M_UNKNOWN_TOKEN")

	// None, and garbage.
	doJSON(t, "GET", whoamiURL, "", nil).wantErr(t, 401, "M_MISSING_TOKEN")
	r = doJSON(t, "GET", whoamiURL, "garbage", nil)
	r.wantErr(t, 401, "M_UNKNOWN_TOKEN")
	if r.Body["soft_logout"] == true {
		t.Fatalf("an unknown token is not a soft logout: %s", r.Raw)
	}
	doJSON(t, "GET", whoamiURL+"?access_token=garbage", "", nil).wantErr(t, 401, "M_UNKNOWN_TOKEN")
	_, err = srv.Client().Whoami(ctx)
	wantHTTPErr(t, err, 401, "M_MISSING_TOKEN")
}

func TestLogoutRevokesTokens(t *testing.T) {
	t.Parallel()
	srv := startAccounts(t, nil)
	reg := registerUser(t, srv, "lou", loginPw)
	ctx := context.Background()
	c1 := loginWith(t, srv, "lou", loginPw)
	c2 := loginWith(t, srv, "lou", loginPw)
	tok1 := c1.AccessToken

	if _, err := c1.Logout(ctx); err != nil {
		t.Fatal(err)
	}
	loginTokenDead(t, srv, tok1, "token after /logout")
	loginTokenAlive(t, srv, c2.AccessToken, "@lou:localhost", "other device after /logout")
	loginTokenAlive(t, srv, reg.AccessToken, "@lou:localhost", "registration device after /logout")
	if devs := loginDeviceIDs(t, srv, c2.AccessToken); loginCount(devs, string(c1.DeviceID)) != 0 {
		t.Fatalf("logged-out device %s still listed: %v", c1.DeviceID, devs)
	}
	// Logging out twice with the dead token is refused.
	doJSON(t, "POST", srv.URL+"/_matrix/client/v3/logout", tok1, map[string]any{}).wantErr(t, 401, "M_UNKNOWN_TOKEN")

	// Another user's sessions are untouched by /logout/all.
	other := registerUser(t, srv, "olga", loginPw)
	c3 := loginWith(t, srv, "lou", loginPw)
	if _, err := c3.LogoutAll(ctx); err != nil {
		t.Fatal(err)
	}
	for name, tok := range map[string]string{"c2": c2.AccessToken, "c3": c3.AccessToken, "registration": reg.AccessToken} {
		loginTokenDead(t, srv, tok, name+" after /logout/all")
	}
	loginTokenAlive(t, srv, other.AccessToken, "@olga:localhost", "another user after /logout/all")
	// The account itself still works.
	c4 := loginWith(t, srv, "lou", loginPw)
	if devs := loginDeviceIDs(t, srv, c4.AccessToken); len(devs) != 1 || devs[0] != string(c4.DeviceID) {
		t.Fatalf("devices after /logout/all and a new login: %v", devs)
	}
}

func TestDeviceDeleteWithUIA(t *testing.T) {
	t.Parallel()
	srv := startAccounts(t, nil)
	registerUser(t, srv, "dan", loginPw)
	registerUser(t, srv, "eve", loginOtherPw)
	me := loginWith(t, srv, "dan", loginPw)
	victim := loginWith(t, srv, "dan", loginPw)
	const user = id.UserID("@dan:localhost")
	url := srv.URL + "/_matrix/client/v3/devices/" + string(victim.DeviceID)

	// First attempt: the challenge; nothing is deleted yet.
	session := loginUIASession(t, doJSON(t, "DELETE", url, me.AccessToken, nil))
	loginTokenAlive(t, srv, victim.AccessToken, user, "device after the UIA challenge")

	// A wrong password is a 401 with M_FORBIDDEN, and deletes nothing.
	r := doJSON(t, "DELETE", url, me.AccessToken, map[string]any{"auth": loginUIAPassword(user, "wrong password!", session)})
	if r.Status != 401 || r.Body["errcode"] != "M_FORBIDDEN" || r.Body["session"] == nil || r.Body["flows"] == nil {
		t.Fatalf("wrong UIA password: %d %s, want 401 M_FORBIDDEN with the flows", r.Status, r.Raw)
	}
	// Another user's correct password does not prove dan.
	r = doJSON(t, "DELETE", url, me.AccessToken, map[string]any{"auth": loginUIAPassword("@eve:localhost", loginOtherPw, session)})
	if r.Status != 401 || r.Body["errcode"] != "M_FORBIDDEN" {
		t.Fatalf("UIA with eve's password: %d %s, want 401 M_FORBIDDEN", r.Status, r.Raw)
	}
	loginTokenAlive(t, srv, victim.AccessToken, user, "device after failed UIA")

	doJSON(t, "DELETE", url, me.AccessToken, map[string]any{"auth": loginUIAPassword(user, loginPw, session)}).wantOK(t)
	loginTokenDead(t, srv, victim.AccessToken, "deleted device's token")
	loginTokenAlive(t, srv, me.AccessToken, user, "the deleting device")
	doJSON(t, "GET", url, me.AccessToken, nil).wantErr(t, 404, "M_NOT_FOUND")
	// The spent session authorises nothing more.
	third := loginWith(t, srv, "dan", loginPw)
	r = doJSON(t, "DELETE", srv.URL+"/_matrix/client/v3/devices/"+string(third.DeviceID), me.AccessToken,
		map[string]any{"auth": loginUIAPassword(user, loginPw, session)})
	if r.Status == 200 {
		t.Fatal("a used UIA session deleted a second device")
	}
	loginTokenAlive(t, srv, third.AccessToken, user, "device targeted with a spent UIA session")

	// POST /delete_devices: several at once, the same UIA.
	a := loginWith(t, srv, "dan", loginPw)
	b := loginWith(t, srv, "dan", loginPw)
	body := map[string]any{"devices": []string{string(a.DeviceID), string(b.DeviceID), "NOSUCHDEVICE"}}
	delURL := srv.URL + "/_matrix/client/v3/delete_devices"
	session = loginUIASession(t, doJSON(t, "POST", delURL, me.AccessToken, body))
	body["auth"] = loginUIAPassword(user, "wrong password!", session)
	r = doJSON(t, "POST", delURL, me.AccessToken, body)
	if r.Status != 401 || r.Body["errcode"] != "M_FORBIDDEN" {
		t.Fatalf("delete_devices with a wrong password: %d %s", r.Status, r.Raw)
	}
	loginTokenAlive(t, srv, a.AccessToken, user, "device a after failed UIA")
	body["auth"] = loginUIAPassword(user, loginPw, session)
	doJSON(t, "POST", delURL, me.AccessToken, body).wantOK(t)
	loginTokenDead(t, srv, a.AccessToken, "device a after delete_devices")
	loginTokenDead(t, srv, b.AccessToken, "device b after delete_devices")
	loginTokenAlive(t, srv, me.AccessToken, user, "the deleting device after delete_devices")
	loginTokenAlive(t, srv, third.AccessToken, user, "a device not listed in delete_devices")
	devs := loginDeviceIDs(t, srv, me.AccessToken)
	if loginCount(devs, string(a.DeviceID))+loginCount(devs, string(b.DeviceID)) != 0 {
		t.Fatalf("deleted devices still listed: %v", devs)
	}
}

func TestDeviceManagement(t *testing.T) {
	t.Parallel()
	srv := startAccounts(t, nil)
	registerUser(t, srv, "dev", loginPw)
	other := registerUser(t, srv, "nosy", loginPw)
	ctx := context.Background()
	cli := srv.Client()
	if _, err := cli.Login(ctx, &mautrix.ReqLogin{
		Type:                     mautrix.AuthTypePassword,
		Identifier:               mautrix.UserIdentifier{Type: mautrix.IdentifierTypeUser, User: "dev"},
		Password:                 loginPw,
		DeviceID:                 "DEVX",
		InitialDeviceDisplayName: "Laptop",
		StoreCredentials:         true,
	}); err != nil {
		t.Fatal(err)
	}

	list, err := cli.GetDevicesInfo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, d := range list.Devices {
		if d.DeviceID == "DEVX" {
			found = true
			if d.DisplayName != "Laptop" || d.LastSeenTS == 0 {
				t.Fatalf("DEVX in list: %+v, want display name Laptop and a last_seen_ts", d)
			}
		}
	}
	if !found || len(list.Devices) != 2 {
		t.Fatalf("devices %+v, want the registration device and DEVX", list.Devices)
	}
	d, err := cli.GetDeviceInfo(ctx, "DEVX")
	if err != nil || d.DeviceID != "DEVX" || d.DisplayName != "Laptop" {
		t.Fatalf("GET /devices/DEVX: %+v %v", d, err)
	}
	if err := cli.SetDeviceInfo(ctx, "DEVX", &mautrix.ReqDeviceInfo{DisplayName: "Phone"}); err != nil {
		t.Fatal(err)
	}
	d, err = cli.GetDeviceInfo(ctx, "DEVX")
	if err != nil || d.DisplayName != "Phone" {
		t.Fatalf("after rename: %+v %v", d, err)
	}

	_, err = cli.GetDeviceInfo(ctx, "NOSUCHDEVICE")
	wantHTTPErr(t, err, 404, "M_NOT_FOUND")
	doJSON(t, "PUT", srv.URL+"/_matrix/client/v3/devices/NOSUCHDEVICE", cli.AccessToken, map[string]any{"display_name": "x"}).wantErr(t, 404, "M_NOT_FOUND")
	doJSON(t, "DELETE", srv.URL+"/_matrix/client/v3/devices/NOSUCHDEVICE", cli.AccessToken, nil).wantErr(t, 404, "M_NOT_FOUND")

	// Another user can neither see nor rename dev's device.
	doJSON(t, "GET", srv.URL+"/_matrix/client/v3/devices/DEVX", other.AccessToken, nil).wantErr(t, 404, "M_NOT_FOUND")
	doJSON(t, "PUT", srv.URL+"/_matrix/client/v3/devices/DEVX", other.AccessToken, map[string]any{"display_name": "pwned"}).wantErr(t, 404, "M_NOT_FOUND")
	if d, _ := cli.GetDeviceInfo(ctx, "DEVX"); d == nil || d.DisplayName != "Phone" {
		t.Fatalf("DEVX after another user's rename attempt: %+v", d)
	}
	// And the device endpoints need a token.
	doJSON(t, "GET", srv.URL+"/_matrix/client/v3/devices", "", nil).wantErr(t, 401, "M_MISSING_TOKEN")
}

func TestPasswordChange(t *testing.T) {
	t.Parallel()
	srv := startAccounts(t, nil)
	reg := registerUser(t, srv, "pat", loginPw)
	registerUser(t, srv, "quinn", loginOtherPw)
	const user = id.UserID("@pat:localhost")
	me := loginWith(t, srv, "pat", loginPw)
	other := loginWith(t, srv, "pat", loginPw)
	url := srv.URL + "/_matrix/client/v3/account/password"
	const newPw = "a brand new password"

	body := map[string]any{"new_password": newPw}
	session := loginUIASession(t, doJSON(t, "POST", url, me.AccessToken, body))
	body["auth"] = loginUIAPassword(user, "wrong password!", session)
	r := doJSON(t, "POST", url, me.AccessToken, body)
	if r.Status != 401 || r.Body["errcode"] != "M_FORBIDDEN" {
		t.Fatalf("password change with a wrong password: %d %s", r.Status, r.Raw)
	}
	body["auth"] = loginUIAPassword("@quinn:localhost", loginOtherPw, session)
	r = doJSON(t, "POST", url, me.AccessToken, body)
	if r.Status != 401 || r.Body["errcode"] != "M_FORBIDDEN" {
		t.Fatalf("password change proven with another user's password: %d %s", r.Status, r.Raw)
	}
	// Nothing changed yet.
	loginTokenAlive(t, srv, other.AccessToken, user, "other device after failed UIA")
	loginWith(t, srv, "pat", loginPw)

	body["auth"] = loginUIAPassword(user, loginPw, session)
	doJSON(t, "POST", url, me.AccessToken, body).wantOK(t)
	// Default logout_devices: every other device goes, this one stays.
	loginTokenAlive(t, srv, me.AccessToken, user, "the changing device")
	loginTokenDead(t, srv, other.AccessToken, "other device after password change")
	loginTokenDead(t, srv, reg.AccessToken, "registration device after password change")
	if devs := loginDeviceIDs(t, srv, me.AccessToken); len(devs) != 1 || devs[0] != string(me.DeviceID) {
		t.Fatalf("devices after password change: %v, want only %s", devs, me.DeviceID)
	}
	loginPost(t, srv, loginPasswordBody("pat", loginPw)).wantErr(t, 403, "M_FORBIDDEN")
	fresh := loginWith(t, srv, "pat", newPw)

	// logout_devices: false keeps the others.
	const newerPw = "yet another password"
	body = map[string]any{"new_password": newerPw, "logout_devices": false}
	session = loginUIASession(t, doJSON(t, "POST", url, fresh.AccessToken, body))
	body["auth"] = loginUIAPassword(user, newPw, session)
	doJSON(t, "POST", url, fresh.AccessToken, body).wantOK(t)
	loginTokenAlive(t, srv, me.AccessToken, user, "other device with logout_devices false")
	loginTokenAlive(t, srv, fresh.AccessToken, user, "changing device with logout_devices false")
	loginPost(t, srv, loginPasswordBody("pat", newPw)).wantErr(t, 403, "M_FORBIDDEN")
	loginWith(t, srv, "pat", newerPw)
}

func TestRefreshTokens(t *testing.T) {
	t.Parallel()
	srv := startAccounts(t, map[string]string{"WEFT_LOGIN_ACCESS_TOKEN_LIFETIME": "5m"})
	registerUser(t, srv, "rita", loginPw)
	const user = id.UserID("@rita:localhost")
	ctx := context.Background()
	resp, err := srv.Client().Login(ctx, &mautrix.ReqLogin{
		Type:         mautrix.AuthTypePassword,
		Identifier:   mautrix.UserIdentifier{Type: mautrix.IdentifierTypeUser, User: "rita"},
		Password:     loginPw,
		RefreshToken: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	if resp.RefreshToken == "" || resp.ExpiresInMS != (5*time.Minute).Milliseconds() {
		t.Fatalf("login with refresh_token: %+v, want a refresh token and expires_in_ms 300000", resp)
	}
	a1, r1 := resp.AccessToken, resp.RefreshToken
	loginTokenAlive(t, srv, a1, user, "first access token")

	refresh := func(tok string) rawResponse {
		t.Helper()
		return doJSON(t, "POST", srv.URL+"/_matrix/client/v3/refresh", "", map[string]any{"refresh_token": tok})
	}
	tokens := func(r rawResponse) (string, string) {
		t.Helper()
		r.wantOK(t)
		a, _ := r.Body["access_token"].(string)
		rt, _ := r.Body["refresh_token"].(string)
		if a == "" || rt == "" || r.Body["expires_in_ms"] != float64(300000) {
			t.Fatalf("refresh answer %s", r.Raw)
		}
		return a, rt
	}

	a2, r2 := tokens(refresh(r1))
	if a2 == a1 || r2 == r1 {
		t.Fatal("refresh returned the old tokens")
	}
	loginTokenDead(t, srv, a1, "access token replaced by /refresh")
	// Until a2 is used, r1 still works (the client may have lost the answer).
	a3, r3 := tokens(refresh(r1))
	// Using the new access token retires r1.
	loginTokenAlive(t, srv, a3, user, "access token from the repeated refresh")
	refresh(r1).wantErr(t, 401, "M_UNKNOWN_TOKEN")

	// The same again one step down the chain, checking the device stays.
	a4, _ := tokens(refresh(r3))
	loginTokenDead(t, srv, a3, "access token replaced by the second refresh")
	r := whoami(t, srv, a4)
	r.wantOK(t)
	if r.Body["device_id"] != string(resp.DeviceID) {
		t.Fatalf("refreshed token on device %v, want %s", r.Body["device_id"], resp.DeviceID)
	}
	refresh(r3).wantErr(t, 401, "M_UNKNOWN_TOKEN")
	_ = r2

	refresh("garbage").wantErr(t, 401, "M_UNKNOWN_TOKEN")
	refresh("wrt_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA").wantErr(t, 401, "M_UNKNOWN_TOKEN")
	// An access token is not a refresh token.
	refresh(a4).wantErr(t, 401, "M_UNKNOWN_TOKEN")

	// Logging out kills the refresh tokens of the device too.
	doJSON(t, "POST", srv.URL+"/_matrix/client/v3/logout", a4, map[string]any{}).wantOK(t)
	refresh(r2).wantErr(t, 401, "M_UNKNOWN_TOKEN")
}

// An expired access token is a soft logout: 401 M_UNKNOWN_TOKEN with
// soft_logout true, and the refresh token still gets a new one.
func TestTokenSoftLogout(t *testing.T) {
	t.Parallel()
	dbURL := pgtest.NewDatabase(t)
	srv := Start(t, Options{Env: accountsEnv(map[string]string{"WEFT_DATABASE_URL": dbURL})})
	reg := registerUser(t, srv, "sam", loginPw)
	const user = id.UserID("@sam:localhost")
	resp, err := srv.Client().Login(context.Background(), &mautrix.ReqLogin{
		Type:         mautrix.AuthTypePassword,
		Identifier:   mautrix.UserIdentifier{Type: mautrix.IdentifierTypeUser, User: "sam"},
		Password:     loginPw,
		RefreshToken: true,
	})
	if err != nil {
		t.Fatal(err)
	}

	// Expire the token before its first use: the server caches tokens once
	// it has seen them.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	tag, err := conn.Exec(ctx, `UPDATE access_tokens SET expires_at = now() - interval '1 second' WHERE user_id = $1 AND device_id = $2`,
		string(user), string(resp.DeviceID))
	if err != nil || tag.RowsAffected() != 1 {
		t.Fatalf("expiring the token: %v (%d rows)", err, tag.RowsAffected())
	}

	r := whoami(t, srv, resp.AccessToken)
	r.wantErr(t, 401, "M_UNKNOWN_TOKEN")
	if r.Body["soft_logout"] != true {
		t.Fatalf("expired token: %s, want soft_logout true", r.Raw)
	}
	// Only that device's token expired.
	loginTokenAlive(t, srv, reg.AccessToken, user, "another device's token")

	// The refresh token brings the session back on the same device.
	rr := doJSON(t, "POST", srv.URL+"/_matrix/client/v3/refresh", "", map[string]any{"refresh_token": resp.RefreshToken})
	rr.wantOK(t)
	fresh := whoami(t, srv, rr.Body["access_token"].(string))
	fresh.wantOK(t)
	if fresh.Body["device_id"] != string(resp.DeviceID) {
		t.Fatalf("refreshed session on %v, want %s", fresh.Body["device_id"], resp.DeviceID)
	}
}

// loginJWT signs claims with method and key.
func loginJWT(t *testing.T, method jwt.SigningMethod, key any, claims jwt.MapClaims) string {
	t.Helper()
	s, err := jwt.NewWithClaims(method, claims).SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func loginJWTBody(token string) map[string]any {
	return map[string]any{"type": "org.matrix.login.jwt", "token": token}
}

func TestJWTLogin(t *testing.T) {
	t.Parallel()
	const secret = "a-shared-hmac-secret-for-tests"
	const issuer = "https://idp.example.org"
	env := map[string]string{
		"WEFT_JWT_ENABLED":   "true",
		"WEFT_JWT_SECRET":    secret,
		"WEFT_JWT_ALGORITHM": "HS256",
		"WEFT_JWT_ISSUER":    issuer,
		"WEFT_JWT_AUDIENCES": "weft, other-app",
	}
	srv := startAccounts(t, env)
	registerUser(t, srv, "alice", loginPw)
	now := time.Now()
	claims := func(sub string) jwt.MapClaims {
		return jwt.MapClaims{"sub": sub, "iss": issuer, "aud": "weft", "iat": now.Unix(), "exp": now.Add(time.Hour).Unix()}
	}
	sign := func(c jwt.MapClaims) string { return loginJWT(t, jwt.SigningMethodHS256, []byte(secret), c) }

	r := loginPost(t, srv, loginJWTBody(sign(claims("alice"))))
	r.wantOK(t)
	if r.Body["user_id"] != "@alice:localhost" {
		t.Fatalf("JWT login: %s", r.Raw)
	}
	loginTokenAlive(t, srv, r.Body["access_token"].(string), "@alice:localhost", "JWT session")
	// A second audience of the list, and the full user ID as subject.
	c := claims("@alice:localhost")
	c["aud"] = []string{"someone-else", "other-app"}
	loginPost(t, srv, loginJWTBody(sign(c))).wantOK(t)

	// No auto-provisioning: an unknown subject has no account.
	loginPost(t, srv, loginJWTBody(sign(claims("newcomer")))).wantErr(t, 403, "M_FORBIDDEN")
	loginPost(t, srv, loginPasswordBody("newcomer", loginPw)).wantErr(t, 403, "M_FORBIDDEN")

	bad := map[string]string{}
	c = claims("alice")
	c["exp"], c["iat"] = now.Add(-time.Hour).Unix(), now.Add(-2*time.Hour).Unix()
	bad["expired"] = sign(c)
	c = claims("alice")
	c["aud"] = "someone-else"
	bad["wrong audience"] = sign(c)
	c = claims("alice")
	delete(c, "aud")
	bad["no audience"] = sign(c)
	c = claims("alice")
	c["iss"] = "https://evil.example.org"
	bad["wrong issuer"] = sign(c)
	bad["wrong key"] = loginJWT(t, jwt.SigningMethodHS256, []byte("not-the-secret"), claims("alice"))
	bad["other HMAC algorithm"] = loginJWT(t, jwt.SigningMethodHS512, []byte(secret), claims("alice"))
	bad["alg none"] = loginJWT(t, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, claims("alice"))
	bad["other server's user"] = sign(claims("@alice:elsewhere.example"))
	bad["not a JWT"] = "not.a.jwt"
	good := sign(claims("alice"))
	bad["tampered"] = good[:len(good)-2] + flipB64(good[len(good)-2:])
	for name, tok := range bad {
		r := loginPost(t, srv, loginJWTBody(tok))
		if r.Status != 403 || r.Body["errcode"] != "M_FORBIDDEN" {
			t.Errorf("%s: got %d %s, want 403 M_FORBIDDEN", name, r.Status, r.Raw)
		}
	}
	loginPost(t, srv, loginJWTBody("")).wantErr(t, 403, "M_FORBIDDEN")

	// With auto-provisioning, the first login creates the account.
	prov := startAccounts(t, map[string]string{
		"WEFT_JWT_ENABLED":        "true",
		"WEFT_JWT_SECRET":         secret,
		"WEFT_JWT_AUTO_PROVISION": "true",
		"WEFT_REGISTRATION_MODE":  "disabled",
	})
	tok := loginJWT(t, jwt.SigningMethodHS256, []byte(secret), jwt.MapClaims{"sub": "Newcomer", "exp": now.Add(time.Hour).Unix()})
	r = loginPost(t, prov, loginJWTBody(tok))
	r.wantOK(t)
	if r.Body["user_id"] != "@newcomer:localhost" {
		t.Fatalf("provisioned user: %s", r.Raw)
	}
	first := r.Body["access_token"].(string)
	loginTokenAlive(t, prov, first, "@newcomer:localhost", "provisioned account")
	// The next login finds the same account, with a new device.
	r = loginPost(t, prov, loginJWTBody(tok))
	r.wantOK(t)
	if r.Body["user_id"] != "@newcomer:localhost" || r.Body["device_id"] == nil {
		t.Fatalf("second JWT login: %s", r.Raw)
	}
	if devs := loginDeviceIDs(t, prov, first); len(devs) != 2 {
		t.Fatalf("devices after two JWT logins: %v", devs)
	}
	// A provisioned account has no password to log in with.
	loginPost(t, prov, loginPasswordBody("newcomer", "")).wantErr(t, 403, "M_FORBIDDEN")
	// Bad tokens still provision nobody.
	wrong := loginJWT(t, jwt.SigningMethodHS256, []byte("not-the-secret"), jwt.MapClaims{"sub": "intruder"})
	loginPost(t, prov, loginJWTBody(wrong)).wantErr(t, 403, "M_FORBIDDEN")
	loginPost(t, prov, loginJWTBody(loginJWT(t, jwt.SigningMethodHS256, []byte(secret), jwt.MapClaims{"sub": "intruder"}))).wantOK(t)
}

// flipB64 changes a base64url string to another valid one of the same length.
func flipB64(s string) string {
	b := []byte(s)
	if b[0] == 'A' {
		b[0] = 'B'
	} else {
		b[0] = 'A'
	}
	return string(b)
}

func TestJWTLoginRS256(t *testing.T) {
	t.Parallel()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	otherKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	pemText := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
	keyFile := filepath.Join(t.TempDir(), "idp.pem")
	if err := os.WriteFile(keyFile, pemText, 0o644); err != nil {
		t.Fatal(err)
	}
	claims := jwt.MapClaims{"sub": "rsauser", "exp": time.Now().Add(time.Hour).Unix()}

	for name, pub := range map[string]string{"file": keyFile, "inline": string(pemText)} {
		t.Run(name, func(t *testing.T) {
			srv := startAccounts(t, map[string]string{
				"WEFT_JWT_ENABLED":        "true",
				"WEFT_JWT_ALGORITHM":      "RS256",
				"WEFT_JWT_PUBLIC_KEY":     pub,
				"WEFT_JWT_AUTO_PROVISION": "true",
			})
			r := loginPost(t, srv, loginJWTBody(loginJWT(t, jwt.SigningMethodRS256, key, claims)))
			r.wantOK(t)
			if r.Body["user_id"] != "@rsauser:localhost" {
				t.Fatalf("RS256 login: %s", r.Raw)
			}
			loginPost(t, srv, loginJWTBody(loginJWT(t, jwt.SigningMethodRS256, otherKey, claims))).wantErr(t, 403, "M_FORBIDDEN")
			// Algorithm confusion: the public key used as an HMAC secret.
			loginPost(t, srv, loginJWTBody(loginJWT(t, jwt.SigningMethodHS256, pemText, claims))).wantErr(t, 403, "M_FORBIDDEN")
			loginPost(t, srv, loginJWTBody(loginJWT(t, jwt.SigningMethodPS256, key, claims))).wantErr(t, 403, "M_FORBIDDEN")
		})
	}
}

func TestLoginLockout(t *testing.T) {
	t.Parallel()
	const lock = 3 * time.Second
	srv := startAccounts(t, map[string]string{
		"WEFT_LOGIN_MAX_FAILURES":   "3",
		"WEFT_LOGIN_FAILURE_WINDOW": "10m",
		"WEFT_LOGIN_LOCK_DURATION":  lock.String(),
	})
	session := registerUser(t, srv, "bob", loginPw)
	registerUser(t, srv, "carl", loginPw)
	const user = id.UserID("@bob:localhost")

	// A success resets the count: two failures, a success, two failures
	// lock nothing.
	for range 2 {
		loginPost(t, srv, loginPasswordBody("bob", "wrong password!")).wantErr(t, 403, "M_FORBIDDEN")
	}
	loginWith(t, srv, "bob", loginPw)
	for range 2 {
		loginPost(t, srv, loginPasswordBody("bob", "wrong password!")).wantErr(t, 403, "M_FORBIDDEN")
	}
	// The third failure in a row locks.
	r := loginPost(t, srv, loginPasswordBody("bob", "wrong password!"))
	lockedAt := time.Now()
	if r.Status == 403 {
		r = loginPost(t, srv, loginPasswordBody("bob", "wrong password!"))
	}
	r.wantErr(t, 401, "M_USER_LOCKED")
	if r.Body["soft_logout"] != true {
		t.Fatalf("lock answer %s, want soft_logout true", r.Raw)
	}
	// Even the right password is refused while locked, by mautrix too.
	r = loginPost(t, srv, loginPasswordBody("bob", loginPw))
	r.wantErr(t, 401, "M_USER_LOCKED")
	if r.Body["soft_logout"] != true || r.Body["access_token"] != nil {
		t.Fatalf("right password while locked: %s", r.Raw)
	}
	_, err := srv.Client().Login(context.Background(), &mautrix.ReqLogin{
		Type:       mautrix.AuthTypePassword,
		Identifier: mautrix.UserIdentifier{Type: mautrix.IdentifierTypeUser, User: "@bob:localhost"},
		Password:   loginPw,
	})
	wantHTTPErr(t, err, 401, "M_USER_LOCKED")
	// Existing sessions keep working, and other accounts are not locked.
	loginTokenAlive(t, srv, session.AccessToken, user, "existing session of a locked account")
	loginWith(t, srv, "carl", loginPw)
	if out := srv.Output(); !strings.Contains(out, "account locked after repeated failed logins") || !strings.Contains(out, "@bob:localhost") {
		t.Fatalf("the lock is not in the log:\n%s", out)
	}

	// After the lock ends the right password works again.
	time.Sleep(time.Until(lockedAt.Add(lock + 300*time.Millisecond)))
	loginWith(t, srv, "@bob:localhost", loginPw)
	// And the count started over: one failure is a plain 403.
	loginPost(t, srv, loginPasswordBody("bob", "wrong password!")).wantErr(t, 403, "M_FORBIDDEN")
}

// loginWant429 fails unless r is 429 M_LIMIT_EXCEEDED with a positive
// integer retry_after_ms.
func loginWant429(t *testing.T, r rawResponse) {
	t.Helper()
	r.wantErr(t, 429, "M_LIMIT_EXCEEDED")
	var body struct {
		RetryAfterMS json.Number `json:"retry_after_ms"`
	}
	dec := json.NewDecoder(bytes.NewReader(r.Raw))
	dec.UseNumber()
	if err := dec.Decode(&body); err != nil {
		t.Fatal(err)
	}
	if ms, err := strconv.ParseInt(string(body.RetryAfterMS), 10, 64); err != nil || ms <= 0 {
		t.Fatalf("retry_after_ms in %s, want a positive integer", r.Raw)
	}
	if r.Header.Get("Retry-After") == "" {
		t.Fatalf("429 without Retry-After")
	}
}

// loginPostNewConn is loginPost on a connection of its own.
func loginPostNewConn(t *testing.T, srv *Server, body any) rawResponse {
	t.Helper()
	raw, err := json.Marshal(body)
	if err != nil {
		t.Fatal(err)
	}
	cli := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 30 * time.Second}
	resp, err := cli.Post(srv.URL+"/_matrix/client/v3/login", "application/json", bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out := rawResponse{Status: resp.StatusCode, Header: resp.Header}
	out.Raw, _ = io.ReadAll(resp.Body)
	if err := json.Unmarshal(out.Raw, &out.Body); err != nil {
		t.Fatalf("login answer %q is not JSON", out.Raw)
	}
	return out
}

func TestRateLimitLogin(t *testing.T) {
	t.Parallel()
	srv := startAccounts(t, map[string]string{
		"WEFT_RATE_LIMITS_ENABLED":           "true",
		"WEFT_RATE_LIMITS_LOGIN_PER_SECOND":  "0.01",
		"WEFT_RATE_LIMITS_LOGIN_BURST":       "2",
		"WEFT_RATE_LIMITS_WRITES_PER_SECOND": "0.01",
		"WEFT_RATE_LIMITS_WRITES_BURST":      "3",
		// Each dummy-flow registration takes two requests.
		"WEFT_RATE_LIMITS_REGISTER_BURST": "10",
	})
	alice := registerUser(t, srv, "alice", loginPw)
	bob := registerUser(t, srv, "bob", loginPw)

	// Login: two attempts (successful or not) use the burst; the third is
	// refused. Each comes on a new connection: the bucket is the IP's, not
	// the connection's.
	loginPostNewConn(t, srv, loginPasswordBody("alice", "wrong password!")).wantErr(t, 403, "M_FORBIDDEN")
	loginPostNewConn(t, srv, loginPasswordBody("alice", loginPw)).wantOK(t)
	loginWant429(t, loginPostNewConn(t, srv, loginPasswordBody("alice", loginPw)))
	_, err := srv.Client().Login(context.Background(), &mautrix.ReqLogin{
		Type:       mautrix.AuthTypePassword,
		Identifier: mautrix.UserIdentifier{Type: mautrix.IdentifierTypeUser, User: "bob"},
		Password:   loginPw,
	})
	wantHTTPErr(t, err, 429, "M_LIMIT_EXCEEDED")
	// The login flows (GET) are not limited.
	doJSON(t, "GET", srv.URL+"/_matrix/client/v3/login", "", nil).wantOK(t)

	// Writes: per user.
	put := func(c *mautrix.Client, name string) rawResponse {
		return doJSON(t, "PUT", srv.URL+"/_matrix/client/v3/profile/"+string(c.UserID)+"/displayname", c.AccessToken,
			map[string]any{"displayname": name})
	}
	for i := range 3 {
		put(alice, fmt.Sprintf("Alice %d", i)).wantOK(t)
	}
	loginWant429(t, put(alice, "Alice too many"))
	// Reads are not limited, and the refused write changed nothing.
	r := doJSON(t, "GET", srv.URL+"/_matrix/client/v3/profile/@alice:localhost/displayname", alice.AccessToken, nil)
	r.wantOK(t)
	if r.Body["displayname"] != "Alice 2" {
		t.Fatalf("displayname %v after a refused write, want Alice 2", r.Body["displayname"])
	}
	loginTokenAlive(t, srv, alice.AccessToken, "@alice:localhost", "reads while write-limited")
	// Another user on the same IP has their own bucket.
	put(bob, "Bob").wantOK(t)
}

func TestRateLimitDisabled(t *testing.T) {
	t.Parallel()
	srv := startAccounts(t, map[string]string{
		"WEFT_RATE_LIMITS_ENABLED":           "false",
		"WEFT_RATE_LIMITS_LOGIN_PER_SECOND":  "0.01",
		"WEFT_RATE_LIMITS_LOGIN_BURST":       "1",
		"WEFT_RATE_LIMITS_WRITES_PER_SECOND": "0.01",
		"WEFT_RATE_LIMITS_WRITES_BURST":      "1",
	})
	alice := registerUser(t, srv, "alice", loginPw)
	for i := range 10 {
		loginPost(t, srv, loginPasswordBody("alice", loginPw)).wantOK(t)
		doJSON(t, "PUT", srv.URL+"/_matrix/client/v3/profile/@alice:localhost/displayname", alice.AccessToken,
			map[string]any{"displayname": fmt.Sprintf("Alice %d", i)}).wantOK(t)
	}
}

// loginHalfRequest opens a connection and sends a login request's headers
// and the first half of its body, leaving the handler blocked reading the
// rest. It returns the connection and the unsent rest of the body.
func loginHalfRequest(t *testing.T, srv *Server, body string) (net.Conn, string) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", srv.Addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	head := fmt.Sprintf("POST /_matrix/client/v3/login HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n", srv.Addr, len(body))
	half := len(body) / 2
	if _, err := io.WriteString(conn, head+body[:half]); err != nil {
		t.Fatal(err)
	}
	return conn, body[half:]
}

// loginWaitOutput waits until the server's output contains s.
func loginWaitOutput(t *testing.T, srv *Server, s string, limit time.Duration) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !strings.Contains(srv.Output(), s) {
		if time.Now().After(deadline) {
			t.Fatalf("output never contained %q:\n%s", s, srv.Output())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// SIGTERM lets a request that is already being read finish and answer.
func TestLoginDrainInFlight(t *testing.T) {
	t.Parallel()
	srv := startAccounts(t, map[string]string{"WEFT_HTTP_SHUTDOWN_GRACE": "30s"})
	registerUser(t, srv, "dina", loginPw)
	body, _ := json.Marshal(loginPasswordBody("dina", loginPw))
	conn, rest := loginHalfRequest(t, srv, string(body))
	time.Sleep(200 * time.Millisecond) // the handler is now blocked on the body

	srv.Signal(syscall.SIGTERM)
	loginWaitOutput(t, srv, "draining", 10*time.Second)
	// New connections are refused while the old one drains.
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", srv.Addr, time.Second)
		if err != nil {
			break
		}
		c.Close()
		if time.Now().After(deadline) {
			t.Fatal("still accepting new connections while draining")
		}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond)
	if srv.Exited() {
		t.Fatalf("exited with a request in flight:\n%s", srv.Output())
	}

	if _, err := io.WriteString(conn, rest); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(20 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("reading the drained response: %v", err)
	}
	raw, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/json" || json.Unmarshal(raw, &got) != nil ||
		got["user_id"] != "@dina:localhost" || got["access_token"] == nil {
		t.Fatalf("drained login answered %d %q", resp.StatusCode, raw)
	}
	if code := srv.Wait(20 * time.Second); code != 0 {
		t.Fatalf("exit code %d after draining:\n%s", code, srv.Output())
	}
	if strings.Contains(srv.Output(), "grace period over") {
		t.Fatalf("drain hit the grace period:\n%s", srv.Output())
	}
}

// A request that never completes does not hold shutdown beyond the grace.
func TestShutdownGraceBounded(t *testing.T) {
	t.Parallel()
	srv := startAccounts(t, map[string]string{"WEFT_HTTP_SHUTDOWN_GRACE": "1s"})
	body, _ := json.Marshal(loginPasswordBody("nobody", loginPw))
	conn, _ := loginHalfRequest(t, srv, string(body))
	time.Sleep(200 * time.Millisecond)

	start := time.Now()
	srv.Signal(syscall.SIGTERM)
	code := srv.Wait(15 * time.Second)
	took := time.Since(start)
	if code != 0 {
		t.Fatalf("exit code %d with a stuck request:\n%s", code, srv.Output())
	}
	if took < 900*time.Millisecond || took > 8*time.Second {
		t.Fatalf("exited after %s, want about the 1s grace", took)
	}
	if !strings.Contains(srv.Output(), "grace period over") {
		t.Fatalf("no grace-over line:\n%s", srv.Output())
	}
	// The stuck connection was closed, without a response.
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := conn.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("stuck connection still open after exit (read %d, %v)", n, err)
	}
}
