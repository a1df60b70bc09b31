package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"
)

// TestE2EEClients is issue 7's end-to-end encryption test with real crypto
// clients: matrix-js-sdk's Rust crypto (testdata/jssdk/e2ee.mjs, on the same
// Node 22 and npm packages as TestMatrixJSSDK) and, as a second independent
// implementation, mautrix-go's crypto (testdata/mautrixcrypto, run by the
// script). The script's header lists the scenario: two users with two
// devices each in an encrypted room, every device decrypting every message,
// a device logging in later that restores the server-side key backup with
// the recovery key, a deleted device that gets no new room keys, and
// mautrix-go decrypting and being decrypted in the same room.
//
// Afterwards this test checks, over plain HTTP, what the server kept: the
// devices and cross-signing keys /keys/query reports (the deleted device
// gone, the late device signed by alice's self-signing key), the key
// backup's version and count, and that the room holds no plaintext. Like
// TestMatrixJSSDK it fails, not skips, without Node.js and npm.
func TestE2EEClients(t *testing.T) {
	dir, err := filepath.Abs(filepath.Join("testdata", "jssdk"))
	if err != nil {
		t.Fatal(err)
	}
	// The mautrix client builds (about half a minute on a cold cache) while
	// npm installs and the server starts.
	var mautrixBin string
	var mautrixErr error
	var built sync.WaitGroup
	built.Go(func() { mautrixBin, mautrixErr = buildMautrixCrypto(t) })
	node := jssdkInstall(t, dir)

	srv := startAccounts(t, nil)
	const alicePass, bobPass = "e2ee alice password", "e2ee bob password"
	alice := registerNoDevice(t, srv, "e2ee-alice", alicePass)
	bob := registerNoDevice(t, srv, "e2ee-bob", bobPass)
	carol := registerUser(t, srv, "e2ee-carol", "e2ee carol password")
	built.Wait()
	if mautrixErr != nil {
		t.Fatal(mautrixErr)
	}

	out := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, node, "e2ee.mjs")
	cmd.Dir = dir
	cmd.Env = append(cleanEnv(),
		"JSSDK_BASE_URL="+srv.URL,
		"JSSDK_A_USER_ID="+alice.String(),
		"JSSDK_A_PASSWORD="+alicePass,
		"JSSDK_B_USER_ID="+bob.String(),
		"JSSDK_B_PASSWORD="+bobPass,
		"JSSDK_C_USER_ID="+carol.UserID.String(),
		"JSSDK_C_TOKEN="+carol.AccessToken,
		"JSSDK_C_DEVICE_ID="+carol.DeviceID.String(),
		"JSSDK_MAUTRIX_BIN="+mautrixBin,
		"JSSDK_OUT_DIR="+out,
		"JSSDK_STEP_TIMEOUT_MS=20000",
	)
	var log bytes.Buffer
	cmd.Stdout, cmd.Stderr = &log, &log
	cmd.WaitDelay = 5 * time.Second
	err = cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("e2ee.mjs did not finish within 4 minutes; its output:\n%s", log.String())
	}
	if err != nil {
		t.Fatalf("e2ee.mjs failed (%v); its output:\n%s", err, log.String())
	}
	t.Logf("e2ee.mjs output:\n%s", log.String())

	raw, err := os.ReadFile(filepath.Join(out, "result.json"))
	if err != nil {
		t.Fatalf("e2ee.mjs passed but left no result: %v", err)
	}
	var res e2eeResult
	if err := json.Unmarshal(raw, &res); err != nil {
		t.Fatalf("result.json: %v: %s", err, raw)
	}

	t.Run("keys/query", func(t *testing.T) {
		e2eeCheckKeys(t, srv, carol, alice, bob, res)
	})
	t.Run("room_keys/version", func(t *testing.T) {
		r := doJSON(t, "GET", clientURL(srv, "v3", "room_keys", "version"), res.AliceToken, nil)
		r.wantOK(t)
		specValidate(t, r.Body, "key_backup.yaml", "/room_keys/version", "get", "200")
		if r.Body["version"] != res.BackupVersion {
			t.Errorf("current backup version %v, the script backed up to %s", r.Body["version"], res.BackupVersion)
		}
		if r.Body["algorithm"] != "m.megolm_backup.v1.curve25519-aes-sha2" {
			t.Errorf("backup algorithm %v", r.Body["algorithm"])
		}
		// The script waited for the four sessions of its first messages to
		// be in the backup; later ones may still be on their way.
		if n, _ := r.Body["count"].(float64); n < 4 {
			t.Errorf("backup count %v, want at least 4: %s", r.Body["count"], r.Raw)
		}
		if s, _ := r.Body["etag"].(string); s == "" {
			t.Errorf("backup has no etag: %s", r.Raw)
		}
		if dig(r.Body, "auth_data", "signatures", alice.String()) == nil {
			t.Errorf("backup auth_data carries no signature of %s: %s", alice, r.Raw)
		}
	})
	t.Run("no plaintext in the room", func(t *testing.T) {
		e2eeCheckCiphertext(t, srv, res)
	})
}

// e2eeResult is what e2ee.mjs leaves in result.json.
type e2eeResult struct {
	RoomID        id.RoomID              `json:"room_id"`
	BackupVersion string                 `json:"backup_version"`
	AliceToken    string                 `json:"alice_token"`
	Devices       map[string]id.DeviceID `json:"devices"`
	DeletedDevice id.DeviceID            `json:"deleted_device"`
	Messages      []struct {
		EventID   id.EventID `json:"event_id"`
		Body      string     `json:"body"`
		SessionID string     `json:"session_id"`
	} `json:"messages"`
}

// e2eeCheckKeys queries alice's and bob's keys as carol: bob has B1 only (B2
// was deleted, and its keys with it), alice has A1, A2 and A3, her
// cross-signing keys are published, and A1 and A3 (which imported them from
// secret storage) are signed by her self-signing key.
func e2eeCheckKeys(t *testing.T, srv *Server, carol *mautrix.Client, alice, bob id.UserID, res e2eeResult) {
	r := doJSON(t, "POST", clientURL(srv, "v3", "keys", "query"), carol.AccessToken,
		map[string]any{"device_keys": map[string]any{alice.String(): []string{}, bob.String(): []string{}}})
	r.wantOK(t)
	specValidate(t, r.Body, "keys.yaml", "/keys/query", "post", "200")
	var q mautrix.RespQueryKeys
	if err := json.Unmarshal(r.Raw, &q); err != nil {
		t.Fatalf("/keys/query: %v: %s", err, r.Raw)
	}
	if len(q.Failures) > 0 {
		t.Errorf("/keys/query failures: %v", q.Failures)
	}
	devicesOf := func(u id.UserID) []id.DeviceID {
		var ids []id.DeviceID
		for d := range q.DeviceKeys[u] {
			ids = append(ids, d)
		}
		slices.Sort(ids)
		return ids
	}
	wantIDs(t, "bob's devices with keys", devicesOf(bob), res.Devices["B1"])
	if res.DeletedDevice != res.Devices["B2"] {
		t.Errorf("the script deleted %s, B2 was %s", res.DeletedDevice, res.Devices["B2"])
	}
	aliceDevices := []id.DeviceID{res.Devices["A1"], res.Devices["A2"], res.Devices["A3"]}
	slices.Sort(aliceDevices)
	wantIDs(t, "alice's devices with keys", devicesOf(alice), aliceDevices...)

	master, ok := q.MasterKeys[alice]
	if !ok || len(master.Keys) != 1 {
		t.Fatalf("alice's master key: %+v (%s)", master, r.Raw)
	}
	ssk, ok := q.SelfSigningKeys[alice]
	if !ok || len(ssk.Keys) != 1 {
		t.Fatalf("alice's self-signing key: %+v (%s)", ssk, r.Raw)
	}
	if _, ok := q.UserSigningKeys[alice]; ok {
		t.Errorf("carol was shown alice's user-signing key: %s", r.Raw)
	}
	var sskID id.KeyID
	for k := range ssk.Keys {
		sskID = k
	}
	for _, name := range []string{"A1", "A3"} {
		dk := q.DeviceKeys[alice][res.Devices[name]]
		if _, ok := dk.Signatures[alice][sskID]; !ok {
			t.Errorf("%s (%s) is not signed by alice's self-signing key %s: signatures %v", name, res.Devices[name], sskID, dk.Signatures)
		}
	}
}

// e2eeCheckCiphertext reads the room's timeline as alice: every message the
// script sent is an m.room.encrypted Megolm event, and no body appears
// anywhere in the answer.
func e2eeCheckCiphertext(t *testing.T, srv *Server, res e2eeResult) {
	r := doJSON(t, "GET", clientURL(srv, "v3", "rooms", res.RoomID.String(), "messages")+"?dir=b&limit=100", res.AliceToken, nil)
	r.wantOK(t)
	types := map[id.EventID]string{}
	algorithms := map[id.EventID]any{}
	chunk, _ := r.Body["chunk"].([]any)
	for _, e := range chunk {
		ev, _ := e.(map[string]any)
		eid, _ := ev["event_id"].(string)
		typ, _ := ev["type"].(string)
		types[id.EventID(eid)] = typ
		algorithms[id.EventID(eid)] = dig(ev, "content", "algorithm")
	}
	if len(res.Messages) < 9 {
		t.Errorf("the script reports %d messages, want 9", len(res.Messages))
	}
	for _, m := range res.Messages {
		if types[m.EventID] != "m.room.encrypted" || algorithms[m.EventID] != "m.megolm.v1.aes-sha2" {
			t.Errorf("%s is %q with algorithm %v in /messages, want m.room.encrypted with m.megolm.v1.aes-sha2", m.EventID, types[m.EventID], algorithms[m.EventID])
		}
		if strings.Contains(string(r.Raw), m.Body) {
			t.Errorf("the plaintext %q is in the room's /messages", m.Body)
		}
	}
}

// registerNoDevice registers localpart with inhibit_login, so the account
// starts with no device: the clients' logins are its only devices.
func registerNoDevice(t *testing.T, srv *Server, localpart, password string) id.UserID {
	t.Helper()
	resp, err := srv.Client().RegisterDummy(context.Background(), &mautrix.ReqRegister[any]{
		Username: localpart, Password: password, InhibitLogin: true,
	})
	if err != nil {
		t.Fatalf("registering %s: %v", localpart, err)
	}
	if resp.AccessToken != "" || resp.DeviceID != "" {
		t.Fatalf("registering %s with inhibit_login answered a session (device %q)", localpart, resp.DeviceID)
	}
	return resp.UserID
}

// buildMautrixCrypto builds the mautrix-go client, testdata/mautrixcrypto,
// its own module, with the goolm tag (mautrix's pure-Go Olm; without it
// mautrix needs libolm through cgo) and CGO_ENABLED=0 (so no SQLite driver
// is compiled: the program keeps its stores in memory). It returns an
// error rather than failing the test, as it runs on its own goroutine.
func buildMautrixCrypto(t *testing.T) (string, error) {
	src, err := filepath.Abs(filepath.Join("testdata", "mautrixcrypto"))
	if err != nil {
		return "", err
	}
	bin := filepath.Join(t.TempDir(), "mautrixcrypto")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "build", "-tags", "goolm", "-o", bin, ".")
	cmd.Dir = src
	cmd.Env = append(cleanEnv(), "GOTOOLCHAIN=auto", "CGO_ENABLED=0", "GOWORK=off", "GOFLAGS=-mod=readonly")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("building the mautrix-go client (go build -tags goolm in %s): %v\n%s", src, err, out)
	}
	return bin, nil
}
