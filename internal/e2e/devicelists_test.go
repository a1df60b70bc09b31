package e2e

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"net/url"
	"slices"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/crypto/canonicaljson"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// dlDevice is a client device with its own ed25519 signing key.
type dlDevice struct {
	cli  *mautrix.Client
	priv ed25519.PrivateKey
}

func dlNew(t *testing.T, cli *mautrix.Client) dlDevice {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return dlDevice{cli: cli, priv: priv}
}

var dlB64 = base64.RawStdEncoding.EncodeToString

// signed adds the device's signature to obj (a JSON object without
// signatures or unsigned).
func (d dlDevice) signed(t *testing.T, obj map[string]any) map[string]any {
	t.Helper()
	raw, err := json.Marshal(obj)
	if err != nil {
		t.Fatal(err)
	}
	sig := ed25519.Sign(d.priv, canonicaljson.CanonicalJSONAssumeValid(raw))
	obj["signatures"] = map[string]any{string(d.cli.UserID): map[string]string{"ed25519:" + string(d.cli.DeviceID): dlB64(sig)}}
	return obj
}

// upload posts /keys/upload with mautrix's client: the device's identity
// keys (the first time), and n signed one-time keys and a fallback key.
func (d dlDevice) upload(t *testing.T, identity bool, n int, fallback bool) map[string]any {
	t.Helper()
	dev := string(d.cli.DeviceID)
	body := map[string]any{}
	if identity {
		curve := make([]byte, 32)
		_, _ = rand.Read(curve)
		body["device_keys"] = d.signed(t, map[string]any{
			"user_id": d.cli.UserID, "device_id": dev,
			"algorithms": []string{"m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"},
			"keys":       map[string]string{"curve25519:" + dev: dlB64(curve), "ed25519:" + dev: dlB64(d.priv.Public().(ed25519.PublicKey))},
		})
	}
	key := func() string {
		k := make([]byte, 32)
		_, _ = rand.Read(k)
		return dlB64(k)
	}
	if n > 0 {
		otks := map[string]any{}
		for range n {
			k := key()
			otks["signed_curve25519:"+k[:8]] = d.signed(t, map[string]any{"key": k})
		}
		body["one_time_keys"] = otks
	}
	if fallback {
		k := key()
		body["fallback_keys"] = map[string]any{"signed_curve25519:fb" + k[:6]: d.signed(t, map[string]any{"key": k, "fallback": true})}
	}
	var resp map[string]any
	if _, err := d.cli.MakeRequest(context.Background(), "POST", d.cli.BuildClientURL("v3", "keys", "upload"), body, &resp); err != nil {
		t.Fatalf("%s/%s uploading keys: %v", d.cli.UserID, dev, err)
	}
	return resp
}

// dlStep syncs cli from since with mautrix and checks device_lists, then
// checks that GET /keys/changes over the same window agrees and matches
// the spec. It returns the new token.
func dlStep(t *testing.T, srv *Server, what string, cli *mautrix.Client, since string, changed, left []id.UserID) string {
	t.Helper()
	resp := tdSync(t, cli, since, 0)
	got := func(us []id.UserID) []id.UserID {
		us = slices.Clone(us)
		slices.Sort(us)
		return us
	}
	slices.Sort(changed)
	slices.Sort(left)
	if c, l := got(resp.DeviceLists.Changed), got(resp.DeviceLists.Left); !slices.Equal(c, changed) || !slices.Equal(l, left) {
		t.Errorf("%s: device_lists changed %v left %v, want changed %v left %v", what, c, l, changed, left)
	}
	q := url.Values{"from": {since}, "to": {resp.NextBatch}}
	raw := doJSON(t, "GET", srv.URL+"/_matrix/client/v3/keys/changes?"+q.Encode(), cli.AccessToken, nil)
	raw.wantOK(t)
	specValidate(t, raw.Body, "keys.yaml", "/keys/changes", "get", "200")
	var kc mautrix.RespKeyChanges
	if err := json.Unmarshal(raw.Raw, &kc); err != nil {
		t.Fatal(err)
	}
	if c, l := got(kc.Changed), got(kc.Left); !slices.Equal(c, changed) || !slices.Equal(l, left) {
		t.Errorf("%s: /keys/changes changed %v left %v, want changed %v left %v", what, c, l, changed, left)
	}
	return resp.NextBatch
}

// TestDeviceListsWithMautrix: device_lists.changed after a user sharing
// an encrypted room uploads keys, logs in a new device that uploads keys,
// or deletes a device; nothing for users sharing only unencrypted rooms;
// left after the other user leaves the only shared encrypted room;
// /keys/changes agrees. The device's one-time key counts come with every
// response.
func TestDeviceListsWithMautrix(t *testing.T) {
	srv := startAccounts(t, nil)
	ctx := context.Background()
	alice := dlNew(t, registerUser(t, srv, "alice", "alice password"))
	bob := dlNew(t, registerUser(t, srv, "bob", "bob password"))
	carol := dlNew(t, registerUser(t, srv, "carol", "carol password"))
	encrypted := createRoom(t, alice.cli, &mautrix.ReqCreateRoom{Preset: "public_chat", InitialState: []*event.Event{{
		Type: event.StateEncryption, StateKey: new(string),
		Content: event.Content{Parsed: &event.EncryptionEventContent{Algorithm: id.AlgorithmMegolmV1}},
	}}})
	plain := createRoom(t, alice.cli, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	first := tdSync(t, alice.cli, "", 0)
	if !first.DeviceLists.IsZero() {
		t.Fatalf("an initial sync carries device_lists %v", first.DeviceLists)
	}
	tok := first.NextBatch

	joinRoom(t, bob.cli, encrypted)
	joinRoom(t, carol.cli, plain)
	tok = dlStep(t, srv, "bob joined the encrypted room, carol the plain one", alice.cli, tok, []id.UserID{bob.cli.UserID}, nil)

	bob.upload(t, true, 0, false)
	carol.upload(t, true, 0, false)
	tok = dlStep(t, srv, "bob and carol uploaded keys", alice.cli, tok, []id.UserID{bob.cli.UserID}, nil)

	bob2 := dlNew(t, loginWith(t, srv, "bob", "bob password"))
	bob2.upload(t, true, 0, false)
	tok = dlStep(t, srv, "bob logged in a new device with keys", alice.cli, tok, []id.UserID{bob.cli.UserID}, nil)

	err := bob.cli.DeleteDevice(ctx, bob2.cli.DeviceID, &mautrix.ReqDeleteDevice[any]{Auth: map[string]any{
		"type": "m.login.password", "identifier": map[string]any{"type": "m.id.user", "user": "bob"}, "password": "bob password",
	}})
	if err != nil {
		t.Fatal(err)
	}
	tok = dlStep(t, srv, "bob deleted a device", alice.cli, tok, []id.UserID{bob.cli.UserID}, nil)

	// One-time keys and a fallback key: counted in every response, and
	// not news by themselves.
	alice.upload(t, true, 5, true)
	r := tdSync(t, alice.cli, tok, 0)
	if r.DeviceOTKCount.SignedCurve25519 != 5 || !slices.Equal(r.FallbackKeys, []id.KeyAlgorithm{id.KeyAlgorithmSignedCurve25519}) {
		t.Fatalf("key counts %+v, unused fallback %v: want 5 and [signed_curve25519]", r.DeviceOTKCount, r.FallbackKeys)
	}
	if c := r.DeviceLists.Changed; !slices.Equal(c, []id.UserID{alice.cli.UserID}) {
		t.Fatalf("alice's own new keys: changed %v", c)
	}
	tok = r.NextBatch
	if _, err := carol.cli.ClaimKeys(ctx, &mautrix.ReqClaimKeys{OneTimeKeys: mautrix.OneTimeKeysRequest{
		alice.cli.UserID: {alice.cli.DeviceID: id.KeyAlgorithmSignedCurve25519},
	}}); err != nil {
		t.Fatal(err)
	}
	r = tdSync(t, alice.cli, tok, 0)
	if r.DeviceOTKCount.SignedCurve25519 != 4 || !r.DeviceLists.IsZero() {
		t.Fatalf("after a claim: count %d (want 4), device_lists %v", r.DeviceOTKCount.SignedCurve25519, r.DeviceLists)
	}

	leave := func(cli *mautrix.Client, roomID id.RoomID) {
		t.Helper()
		if _, err := cli.LeaveRoom(ctx, roomID); err != nil {
			t.Fatal(err)
		}
	}
	leave(bob.cli, encrypted)
	tok = dlStep(t, srv, "bob left the only shared encrypted room", alice.cli, tok, nil, []id.UserID{bob.cli.UserID})
	leave(carol.cli, plain)
	tok = dlStep(t, srv, "carol left an unencrypted room", alice.cli, tok, nil, nil)
	bob3 := dlNew(t, loginWith(t, srv, "bob", "bob password"))
	bob3.upload(t, true, 0, false)
	dlStep(t, srv, "bob, sharing nothing, uploaded keys", alice.cli, tok, nil, nil)
}
