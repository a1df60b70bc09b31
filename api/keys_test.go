package api_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/crypto/canonicaljson"
	"maunium.net/go/mautrix/id"

	"github.com/weftchat/weft/account"
	"github.com/weftchat/weft/api"
	"github.com/weftchat/weft/storage/pgtest"
)

const keysServer = "keys.example"

// keysStack is the router with the account domain over real Postgres.
func keysStack(t testing.TB) *httptest.Server {
	t.Helper()
	db := pgtest.NewDB(t)
	accounts := account.New(account.Config{
		ServerName: keysServer, RegistrationMode: "open",
		Password:            account.PasswordPolicy{MinLength: 8, BcryptCost: 4},
		AccessTokenLifetime: time.Hour,
	}, db.Accounts(), nil, nil)
	srv := httptest.NewServer(api.NewRouter(api.Options{
		ServerName: keysServer, MaxBodyBytes: 1 << 20, Accounts: accounts, RegistrationMode: "open", Health: db,
	}))
	t.Cleanup(srv.Close)
	return srv
}

// keysDevice is a session with its own ed25519 device key.
type keysDevice struct {
	user   id.UserID
	device id.DeviceID
	token  string
	pub    ed25519.PublicKey
	priv   ed25519.PrivateKey
}

func keysNewPair(t testing.TB) (ed25519.PublicKey, ed25519.PrivateKey) {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return pub, priv
}

// keysRegister registers localpart (register) or logs it in again, as a
// new device with a new device key.
func keysRegister(t testing.TB, srv *httptest.Server, localpart string, register bool) keysDevice {
	t.Helper()
	cli, err := mautrix.NewClient(srv.URL, "", "")
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	var d keysDevice
	if register {
		resp, err := cli.RegisterDummy(ctx, &mautrix.ReqRegister[any]{Username: localpart, Password: "password " + localpart})
		if err != nil {
			t.Fatalf("register %s: %v", localpart, err)
		}
		d = keysDevice{user: resp.UserID, device: resp.DeviceID, token: resp.AccessToken}
	} else {
		resp, err := cli.Login(ctx, &mautrix.ReqLogin{
			Type:       mautrix.AuthTypePassword,
			Identifier: mautrix.UserIdentifier{Type: mautrix.IdentifierTypeUser, User: localpart},
			Password:   "password " + localpart, InitialDeviceDisplayName: localpart + "'s second device",
		})
		if err != nil {
			t.Fatalf("login %s: %v", localpart, err)
		}
		d = keysDevice{user: resp.UserID, device: resp.DeviceID, token: resp.AccessToken}
	}
	d.pub, d.priv = keysNewPair(t)
	return d
}

func keysB64(b []byte) string { return base64.RawStdEncoding.EncodeToString(b) }

// keysSign adds user's signature by keyID over obj's canonical JSON without
// signatures and unsigned.
func keysSign(t testing.TB, obj map[string]any, priv ed25519.PrivateKey, user id.UserID, keyID string) map[string]any {
	t.Helper()
	c := map[string]any{}
	for f, v := range obj {
		if f != "signatures" && f != "unsigned" {
			c[f] = v
		}
	}
	msg, err := canonicaljson.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	sigs, _ := obj["signatures"].(map[string]any)
	if sigs == nil {
		sigs = map[string]any{}
	}
	mine, _ := sigs[string(user)].(map[string]any)
	if mine == nil {
		mine = map[string]any{}
	}
	mine[keyID] = keysB64(ed25519.Sign(priv, msg))
	sigs[string(user)] = mine
	obj["signatures"] = sigs
	return obj
}

func (d keysDevice) keyID() string { return "ed25519:" + string(d.device) }

func (d keysDevice) deviceKeys(t testing.TB) map[string]any {
	return keysSign(t, map[string]any{
		"user_id": string(d.user), "device_id": string(d.device),
		"algorithms": []any{"m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"},
		"keys":       map[string]any{"curve25519:" + string(d.device): "c-" + string(d.device), d.keyID(): keysB64(d.pub)},
	}, d.priv, d.user, d.keyID())
}

// oneTimeKeys are n signed one-time keys named prefix0, prefix1...
func (d keysDevice) oneTimeKeys(t testing.TB, prefix string, n int) map[string]any {
	out := map[string]any{}
	for i := range n {
		out[fmt.Sprintf("signed_curve25519:%s%d", prefix, i)] = keysSign(t, map[string]any{"key": fmt.Sprintf("otk-%s%d", prefix, i)}, d.priv, d.user, d.keyID())
	}
	return out
}

func (d keysDevice) fallbackKey(t testing.TB, name string) map[string]any {
	return map[string]any{"signed_curve25519:" + name: keysSign(t, map[string]any{"key": "fb-" + name, "fallback": true}, d.priv, d.user, d.keyID())}
}

// keysDo sends a JSON request and decodes the JSON answer.
func keysDo(t testing.TB, srv *httptest.Server, method, path, token string, body any) (int, map[string]any) {
	t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	default:
		raw, err := json.Marshal(b)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(raw)
	}
	req, err := http.NewRequest(method, srv.URL+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var out map[string]any
	if err := json.Unmarshal(raw, &out); err != nil {
		t.Fatalf("%s %s: %d %q is not a JSON object", method, path, resp.StatusCode, raw)
	}
	return resp.StatusCode, out
}

func keysWantErr(t testing.TB, what string, status int, body map[string]any, wantStatus int, errcode string) {
	t.Helper()
	if status != wantStatus || body["errcode"] != errcode {
		t.Errorf("%s: %d %v, want %d %s", what, status, body, wantStatus, errcode)
	}
}

func keysDig(v any, keys ...string) any {
	for _, k := range keys {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = m[k]
	}
	return v
}

func TestKeysUploadQueryClaimOverHTTP(t *testing.T) {
	srv := keysStack(t)
	alice := keysRegister(t, srv, "alice", true)
	bob := keysRegister(t, srv, "bob", true)

	up := map[string]any{"device_keys": alice.deviceKeys(t), "one_time_keys": alice.oneTimeKeys(t, "a", 3), "fallback_keys": alice.fallbackKey(t, "fb")}
	status, body := keysDo(t, srv, "POST", "/_matrix/client/v3/keys/upload", alice.token, up)
	if status != 200 || keysDig(body, "one_time_key_counts", "signed_curve25519") != 3.0 {
		t.Fatalf("upload: %d %v", status, body)
	}
	// The r0 path is the same endpoint; an identical upload is fine.
	status, body = keysDo(t, srv, "POST", "/_matrix/client/r0/keys/upload", alice.token, up)
	if status != 200 || keysDig(body, "one_time_key_counts", "signed_curve25519") != 3.0 {
		t.Fatalf("r0 re-upload: %d %v", status, body)
	}
	// An empty upload just reports the counts (signed_curve25519 even at 0).
	status, body = keysDo(t, srv, "POST", "/_matrix/client/v3/keys/upload", bob.token, map[string]any{})
	if status != 200 || keysDig(body, "one_time_key_counts", "signed_curve25519") != 0.0 {
		t.Fatalf("empty upload: %d %v", status, body)
	}

	// Bob queries Alice: her device with its display name and signature.
	status, body = keysDo(t, srv, "POST", "/_matrix/client/v3/keys/query", bob.token,
		map[string]any{"device_keys": map[string]any{string(alice.user): []any{}, string(bob.user): []any{}, "@carol:elsewhere.example": []any{}}, "timeout": 10000})
	if status != 200 {
		t.Fatalf("query: %d %v", status, body)
	}
	dev := keysDig(body, "device_keys", string(alice.user), string(alice.device))
	if keysDig(dev, "keys", alice.keyID()) != keysB64(alice.pub) || keysDig(dev, "unsigned") == nil ||
		keysDig(dev, "signatures", string(alice.user), alice.keyID()) == nil {
		t.Fatalf("queried device: %v", dev)
	}
	if m, ok := keysDig(body, "device_keys", string(bob.user)).(map[string]any); !ok || len(m) != 0 {
		t.Fatalf("bob without keys: %v", body["device_keys"])
	}
	if keysDig(body, "failures", "elsewhere.example") == nil {
		t.Fatalf("remote user not in failures: %v", body)
	}
	for _, f := range []string{"master_keys", "self_signing_keys", "user_signing_keys"} {
		if _, ok := body[f].(map[string]any); !ok {
			t.Fatalf("query answer has no %s: %v", f, body)
		}
	}
	// A device filter.
	_, body = keysDo(t, srv, "POST", "/_matrix/client/v3/keys/query", bob.token,
		map[string]any{"device_keys": map[string]any{string(alice.user): []any{"NOSUCHDEVICE"}}})
	if m := keysDig(body, "device_keys", string(alice.user)).(map[string]any); len(m) != 0 {
		t.Fatalf("unknown device listed: %v", m)
	}

	// Bob claims: the oldest one-time key, and then the next ones, then the fallback.
	claim := map[string]any{"one_time_keys": map[string]any{string(alice.user): map[string]any{string(alice.device): "signed_curve25519"}}, "timeout": 10000}
	seen := map[string]bool{}
	for i := range 4 {
		status, body = keysDo(t, srv, "POST", "/_matrix/client/v3/keys/claim", bob.token, claim)
		keys, _ := keysDig(body, "one_time_keys", string(alice.user), string(alice.device)).(map[string]any)
		if status != 200 || len(keys) != 1 || body["failures"] == nil {
			t.Fatalf("claim %d: %d %v", i, status, body)
		}
		for k, v := range keys {
			if seen[k] {
				t.Fatalf("key %s handed out twice", k)
			}
			if i < 3 {
				seen[k] = true
			} else if k != "signed_curve25519:fb" || keysDig(v, "fallback") != true {
				t.Fatalf("claim %d got %s %v, want the fallback key", i, k, v)
			}
		}
	}
	// Alice's next sync-time counts: no one-time key, the fallback used.
	status, body = keysDo(t, srv, "POST", "/_matrix/client/v3/keys/upload", alice.token, map[string]any{})
	if status != 200 || keysDig(body, "one_time_key_counts", "signed_curve25519") != 0.0 {
		t.Fatalf("counts after claims: %d %v", status, body)
	}
}

func TestKeysRequestErrorsOverHTTP(t *testing.T) {
	srv := keysStack(t)
	alice := keysRegister(t, srv, "alice", true)
	other, otherPriv := keysNewPair(t)
	_ = other
	up := func(dk map[string]any) (int, map[string]any) {
		return keysDo(t, srv, "POST", "/_matrix/client/v3/keys/upload", alice.token, map[string]any{"device_keys": dk})
	}
	dk := alice.deviceKeys(t)
	dk["user_id"] = "@bob:" + keysServer
	status, body := up(dk)
	keysWantErr(t, "another user's device keys", status, body, 400, "M_INVALID_PARAM")
	dk = alice.deviceKeys(t)
	dk["device_id"] = "NOTMINE"
	status, body = up(dk)
	keysWantErr(t, "another device's keys", status, body, 400, "M_INVALID_PARAM")
	dk = alice.deviceKeys(t)
	delete(dk, "algorithms")
	status, body = up(dk)
	keysWantErr(t, "no algorithms", status, body, 400, "M_BAD_JSON")
	dk = alice.deviceKeys(t)
	delete(dk, "signatures")
	keysSign(t, dk, otherPriv, alice.user, alice.keyID())
	status, body = up(dk)
	keysWantErr(t, "signed by another key", status, body, 400, "M_INVALID_SIGNATURE")
	status, body = keysDo(t, srv, "POST", "/_matrix/client/v3/keys/upload", alice.token, map[string]any{
		"one_time_keys": map[string]any{"signed_curve25519:x": keysSign(t, map[string]any{"key": "k"}, otherPriv, alice.user, alice.keyID())},
		"device_keys":   alice.deviceKeys(t)})
	keysWantErr(t, "one-time key signed by another key", status, body, 400, "M_INVALID_SIGNATURE")
	status, body = keysDo(t, srv, "POST", "/_matrix/client/v3/keys/upload", alice.token, map[string]any{"device_keys": "nope"})
	keysWantErr(t, "device_keys a string", status, body, 400, "M_BAD_JSON")
	status, body = keysDo(t, srv, "POST", "/_matrix/client/v3/keys/upload", alice.token, "not json")
	keysWantErr(t, "not JSON", status, body, 400, "M_NOT_JSON")
	status, body = keysDo(t, srv, "POST", "/_matrix/client/v3/keys/upload", "", map[string]any{})
	keysWantErr(t, "no token", status, body, 401, "M_MISSING_TOKEN")
	status, body = keysDo(t, srv, "POST", "/_matrix/client/v3/keys/query", alice.token, map[string]any{})
	keysWantErr(t, "query without device_keys", status, body, 400, "M_BAD_JSON")
	status, body = keysDo(t, srv, "POST", "/_matrix/client/v3/keys/query", alice.token, map[string]any{"device_keys": map[string]any{string(alice.user): "all"}})
	keysWantErr(t, "query with a string for devices", status, body, 400, "M_BAD_JSON")
	status, body = keysDo(t, srv, "POST", "/_matrix/client/v3/keys/claim", alice.token, map[string]any{})
	keysWantErr(t, "claim without one_time_keys", status, body, 400, "M_BAD_JSON")
	status, body = keysDo(t, srv, "POST", "/_matrix/client/v3/keys/signatures/upload", alice.token, map[string]any{string(alice.user): "x"})
	keysWantErr(t, "signatures of the wrong shape", status, body, 400, "M_BAD_JSON")
	status, body = keysDo(t, srv, "GET", "/_matrix/client/v3/keys/upload", alice.token, nil)
	keysWantErr(t, "GET on upload", status, body, 405, "M_UNRECOGNIZED")

	// The device's identity key cannot change once uploaded.
	if status, body = up(alice.deviceKeys(t)); status != 200 {
		t.Fatalf("upload: %d %v", status, body)
	}
	changed := alice
	changed.pub, changed.priv = keysNewPair(t)
	status, body = up(changed.deviceKeys(t))
	keysWantErr(t, "a new identity key", status, body, 400, "M_INVALID_PARAM")
}

// 32 clients claim at once from a device with 20 one-time keys: each key
// goes to at most one of them, and the other 12 get the fallback key.
func TestKeysConcurrentClaimsOverHTTP(t *testing.T) {
	srv := keysStack(t)
	alice := keysRegister(t, srv, "alice", true)
	bob := keysRegister(t, srv, "bob", true)
	status, body := keysDo(t, srv, "POST", "/_matrix/client/v3/keys/upload", alice.token, map[string]any{
		"device_keys": alice.deviceKeys(t), "one_time_keys": alice.oneTimeKeys(t, "k", 20), "fallback_keys": alice.fallbackKey(t, "fb")})
	if status != 200 || keysDig(body, "one_time_key_counts", "signed_curve25519") != 20.0 {
		t.Fatalf("upload: %d %v", status, body)
	}
	const claimers = 32
	got := make([]string, claimers)
	var wg sync.WaitGroup
	for i := range claimers {
		wg.Go(func() {
			status, body := keysDo(t, srv, "POST", "/_matrix/client/v3/keys/claim", bob.token,
				map[string]any{"one_time_keys": map[string]any{string(alice.user): map[string]any{string(alice.device): "signed_curve25519"}}})
			keys, _ := keysDig(body, "one_time_keys", string(alice.user), string(alice.device)).(map[string]any)
			if status != 200 || len(keys) != 1 {
				t.Errorf("claim: %d %v", status, body)
				return
			}
			for k := range keys {
				got[i] = k
			}
		})
	}
	wg.Wait()
	count := map[string]int{}
	for _, k := range got {
		count[k]++
	}
	for k, n := range count {
		if k != "signed_curve25519:fb" && n != 1 {
			t.Errorf("one-time key %s handed out %d times", k, n)
		}
	}
	if len(count) != 21 || count["signed_curve25519:fb"] != claimers-20 {
		t.Fatalf("handed out %v", count)
	}
}

func TestKeysCrossSigningOverHTTP(t *testing.T) {
	srv := keysStack(t)
	alice := keysRegister(t, srv, "alice", true)
	bob := keysRegister(t, srv, "bob", true)
	for _, d := range []keysDevice{alice, bob} {
		if status, body := keysDo(t, srv, "POST", "/_matrix/client/v3/keys/upload", d.token, map[string]any{"device_keys": d.deviceKeys(t)}); status != 200 {
			t.Fatalf("upload: %d %v", status, body)
		}
	}
	xs := func(user id.UserID, usage string, pub ed25519.PublicKey, signer ed25519.PrivateKey, signerPub ed25519.PublicKey) map[string]any {
		obj := map[string]any{"user_id": string(user), "usage": []any{usage}, "keys": map[string]any{"ed25519:" + keysB64(pub): keysB64(pub)}}
		if signer != nil {
			keysSign(t, obj, signer, user, "ed25519:"+keysB64(signerPub))
		}
		return obj
	}
	mPub, mPriv := keysNewPair(t)
	sPub, sPriv := keysNewPair(t)
	uPub, uPriv := keysNewPair(t)
	first := map[string]any{
		"master_key":       xs(alice.user, "master", mPub, nil, nil),
		"self_signing_key": xs(alice.user, "self_signing", sPub, mPriv, mPub),
		"user_signing_key": xs(alice.user, "user_signing", uPub, mPriv, mPub),
	}
	bad := map[string]any{"master_key": first["master_key"], "self_signing_key": xs(alice.user, "self_signing", sPub, sPriv, sPub)}
	status, body := keysDo(t, srv, "POST", "/_matrix/client/v3/keys/device_signing/upload", alice.token, bad)
	keysWantErr(t, "self-signing key not signed by the master key", status, body, 400, "M_INVALID_SIGNATURE")
	status, body = keysDo(t, srv, "POST", "/_matrix/client/v3/keys/device_signing/upload", alice.token,
		map[string]any{"self_signing_key": first["self_signing_key"]})
	keysWantErr(t, "no master key", status, body, 400, "M_MISSING_PARAM")
	if status, body = keysDo(t, srv, "POST", "/_matrix/client/v3/keys/device_signing/upload", alice.token, first); status != 200 {
		t.Fatalf("first upload: %d %v", status, body)
	}
	if status, body = keysDo(t, srv, "POST", "/_matrix/client/v3/keys/device_signing/upload", alice.token, first); status != 200 {
		t.Fatalf("the same keys again: %d %v", status, body)
	}
	// Replacing needs UIA: 401 with the password flow.
	m2Pub, _ := keysNewPair(t)
	replace := map[string]any{"master_key": xs(alice.user, "master", m2Pub, nil, nil)}
	status, body = keysDo(t, srv, "POST", "/_matrix/client/v3/keys/device_signing/upload", alice.token, replace)
	session, _ := body["session"].(string)
	if status != 401 || session == "" || keysDig(body, "flows") == nil {
		t.Fatalf("replacing without auth: %d %v", status, body)
	}
	// (The replacement is not completed: Alice keeps her first keys below.)

	// Signatures: Alice's self-signing key on her device, her
	// user-signing key on Bob's master key (which he uploads first).
	bmPub, _ := keysNewPair(t)
	if status, body = keysDo(t, srv, "POST", "/_matrix/client/v3/keys/device_signing/upload", bob.token,
		map[string]any{"master_key": xs(bob.user, "master", bmPub, nil, nil)}); status != 200 {
		t.Fatalf("bob's master: %d %v", status, body)
	}
	devSigned := keysSign(t, alice.deviceKeys(t), sPriv, alice.user, "ed25519:"+keysB64(sPub))
	bobSigned := keysSign(t, xs(bob.user, "master", bmPub, nil, nil), uPriv, alice.user, "ed25519:"+keysB64(uPub))
	badSig := keysSign(t, alice.deviceKeys(t), uPriv, alice.user, "ed25519:"+keysB64(sPub))
	status, body = keysDo(t, srv, "POST", "/_matrix/client/v3/keys/signatures/upload", alice.token, map[string]any{
		string(alice.user): map[string]any{string(alice.device): devSigned},
		string(bob.user):   map[string]any{keysB64(bmPub): bobSigned},
	})
	if f, _ := body["failures"].(map[string]any); status != 200 || f == nil || len(f) != 0 {
		t.Fatalf("signatures: %d %v", status, body)
	}
	status, body = keysDo(t, srv, "POST", "/_matrix/client/v3/keys/signatures/upload", alice.token, map[string]any{
		string(alice.user): map[string]any{string(alice.device): badSig}})
	if status != 200 || keysDig(body, "failures", string(alice.user), string(alice.device), "errcode") != "M_INVALID_SIGNATURE" {
		t.Fatalf("a bad signature: %d %v", status, body)
	}

	// What each of them sees.
	query := map[string]any{"device_keys": map[string]any{string(alice.user): []any{}, string(bob.user): []any{}}}
	_, asBob := keysDo(t, srv, "POST", "/_matrix/client/v3/keys/query", bob.token, query)
	_, asAlice := keysDo(t, srv, "POST", "/_matrix/client/v3/keys/query", alice.token, query)
	if keysDig(asBob, "device_keys", string(alice.user), string(alice.device), "signatures", string(alice.user), "ed25519:"+keysB64(sPub)) == nil {
		t.Errorf("Bob does not see Alice's self-signing signature on her device")
	}
	if keysDig(asBob, "master_keys", string(alice.user)) == nil || keysDig(asBob, "self_signing_keys", string(alice.user)) == nil {
		t.Errorf("Bob does not see Alice's master and self-signing keys: %v", asBob)
	}
	if keysDig(asBob, "user_signing_keys", string(alice.user)) != nil || keysDig(asAlice, "user_signing_keys", string(alice.user)) == nil {
		t.Errorf("user-signing key: Bob sees %v, Alice sees %v", asBob["user_signing_keys"], asAlice["user_signing_keys"])
	}
	if keysDig(asBob, "master_keys", string(bob.user), "signatures", string(alice.user)) != nil {
		t.Errorf("Bob sees Alice's verification of him")
	}
	if keysDig(asAlice, "master_keys", string(bob.user), "signatures", string(alice.user), "ed25519:"+keysB64(uPub)) == nil {
		t.Errorf("Alice does not see her verification of Bob")
	}
	if !strings.Contains(fmt.Sprint(keysDig(asAlice, "master_keys", string(alice.user), "keys")), keysB64(mPub)) {
		t.Errorf("Alice's master key changed without UIA: %v", asAlice["master_keys"])
	}
}

func TestKeysGoWithTheirDeviceOverHTTP(t *testing.T) {
	srv := keysStack(t)
	alice := keysRegister(t, srv, "alice", true)
	second := keysRegister(t, srv, "alice", false)
	third := keysRegister(t, srv, "alice", false)
	for _, d := range []keysDevice{alice, second, third} {
		if status, body := keysDo(t, srv, "POST", "/_matrix/client/v3/keys/upload", d.token, map[string]any{
			"device_keys": d.deviceKeys(t), "one_time_keys": d.oneTimeKeys(t, "x", 2)}); status != 200 {
			t.Fatalf("upload: %d %v", status, body)
		}
	}
	devices := func() map[string]any {
		status, body := keysDo(t, srv, "POST", "/_matrix/client/v3/keys/query", alice.token,
			map[string]any{"device_keys": map[string]any{string(alice.user): []any{}}})
		if status != 200 {
			t.Fatalf("query: %d %v", status, body)
		}
		return keysDig(body, "device_keys", string(alice.user)).(map[string]any)
	}
	if n := len(devices()); n != 3 {
		t.Fatalf("%d devices with keys", n)
	}
	if got := keysDig(devices(), string(second.device), "unsigned", "device_display_name"); got != "alice's second device" {
		t.Fatalf("display name %v", got)
	}
	// DELETE /devices/{id} (UIA), then logout: their keys go.
	path := "/_matrix/client/v3/devices/" + string(second.device)
	status, body := keysDo(t, srv, "DELETE", path, alice.token, map[string]any{})
	session, _ := body["session"].(string)
	if status != 401 || session == "" {
		t.Fatalf("delete without auth: %d %v", status, body)
	}
	status, body = keysDo(t, srv, "DELETE", path, alice.token, map[string]any{"auth": map[string]any{
		"type": "m.login.password", "session": session, "password": "password alice",
		"identifier": map[string]any{"type": "m.id.user", "user": "alice"}}})
	if status != 200 {
		t.Fatalf("delete: %d %v", status, body)
	}
	if status, body = keysDo(t, srv, "POST", "/_matrix/client/v3/logout", third.token, map[string]any{}); status != 200 {
		t.Fatalf("logout: %d %v", status, body)
	}
	got := devices()
	if len(got) != 1 || got[string(alice.device)] == nil {
		t.Fatalf("devices with keys after deletion: %v", got)
	}
	status, body = keysDo(t, srv, "POST", "/_matrix/client/v3/keys/claim", alice.token, map[string]any{"one_time_keys": map[string]any{
		string(alice.user): map[string]any{string(second.device): "signed_curve25519", string(third.device): "signed_curve25519"}}})
	if status != 200 || len(keysDig(body, "one_time_keys").(map[string]any)) != 0 {
		t.Fatalf("claimed keys of deleted devices: %d %v", status, body)
	}
}

// TestKeysQueryIsNotAWrite: /keys/query is a POST that only reads; clients
// send it often, so it does not count against the per-user write limit,
// while /keys/claim (which hands keys out) does.
func TestKeysQueryIsNotAWrite(t *testing.T) {
	st := newMediaStack(t, mediaOpts{rateLimits: api.RateLimits{
		Enabled: true, Login: api.Bucket{PerSecond: 100, Burst: 100}, Register: api.Bucket{PerSecond: 100, Burst: 100},
		Writes: api.Bucket{PerSecond: 0.001, Burst: 2},
	}})
	tok := st.register(t, "alice")
	for range 5 {
		st.do(t, "POST", "/_matrix/client/v3/keys/query", tok, strings.NewReader(`{"device_keys":{"@alice:`+mediaServer+`":[]}}`), nil).wantStatus(t, 200)
	}
	claim := `{"one_time_keys":{"@alice:` + mediaServer + `":{"NOPE":"signed_curve25519"}}}`
	for range 2 {
		st.do(t, "POST", "/_matrix/client/v3/keys/claim", tok, strings.NewReader(claim), nil).wantStatus(t, 200)
	}
	st.do(t, "POST", "/_matrix/client/v3/keys/claim", tok, strings.NewReader(claim), nil).wantErr(t, 429, "M_LIMIT_EXCEEDED")
}
