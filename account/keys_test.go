package account_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"testing"

	"maunium.net/go/mautrix/crypto/canonicaljson"
	"maunium.net/go/mautrix/id"

	"github.com/weftchat/weft/account"
)

// keysSigner is an ed25519 key pair of a device or a cross-signing key.
type keysSigner struct {
	pub  ed25519.PublicKey
	priv ed25519.PrivateKey
}

func newKeysSigner(t *testing.T) keysSigner {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return keysSigner{pub, priv}
}

func (k keysSigner) b64() string { return base64.RawStdEncoding.EncodeToString(k.pub) }

// sign adds user's signature by keyID over obj's canonical JSON without
// signatures and unsigned, as the spec's "Signing JSON" says.
func (k keysSigner) sign(t *testing.T, obj map[string]any, user id.UserID, keyID string) map[string]any {
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
	mine[keyID] = base64.RawStdEncoding.EncodeToString(ed25519.Sign(k.priv, msg))
	sigs[string(user)] = mine
	obj["signatures"] = sigs
	return obj
}

// keysDevice is a logged-in device with its own ed25519 key.
type keysDevice struct {
	r   *account.Requester
	key keysSigner
}

func newKeysDevice(t *testing.T, svc *account.Service, user, name string) keysDevice {
	t.Helper()
	ctx := context.Background()
	creds, err := svc.LoginPassword(ctx, user, "password "+user, account.DeviceParams{DisplayName: name})
	if err != nil {
		t.Fatal(err)
	}
	return keysDevice{r: &account.Requester{UserID: creds.UserID, DeviceID: creds.DeviceID}, key: newKeysSigner(t)}
}

func keysUser(t *testing.T, svc *account.Service, user string) {
	t.Helper()
	if _, err := svc.CreateUserByOperator(context.Background(), user, "password "+user, false); err != nil {
		t.Fatal(err)
	}
}

func (d keysDevice) keyID() string { return "ed25519:" + string(d.r.DeviceID) }

// deviceKeys is the device's signed identity keys.
func (d keysDevice) deviceKeys(t *testing.T) map[string]any {
	obj := map[string]any{
		"user_id": string(d.r.UserID), "device_id": string(d.r.DeviceID),
		"algorithms": []any{"m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"},
		"keys": map[string]any{
			"curve25519:" + string(d.r.DeviceID): "curve-" + string(d.r.DeviceID),
			d.keyID():                            d.key.b64(),
		},
	}
	return d.key.sign(t, obj, d.r.UserID, d.keyID())
}

// otk is a signed one-time (or fallback) key.
func (d keysDevice) otk(t *testing.T, key string, fallback bool) map[string]any {
	obj := map[string]any{"key": key}
	if fallback {
		obj["fallback"] = true
	}
	return d.key.sign(t, obj, d.r.UserID, d.keyID())
}

func rawJSON(t *testing.T, v any) json.RawMessage {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// xsKey is a cross-signing key object for signer's public key, signed by
// by (nil: unsigned) as user.
func xsKey(t *testing.T, user id.UserID, usage string, k keysSigner, by *keysSigner) map[string]any {
	obj := map[string]any{"user_id": string(user), "usage": []any{usage}, "keys": map[string]any{"ed25519:" + k.b64(): k.b64()}}
	if by != nil {
		by.sign(t, obj, user, "ed25519:"+by.b64())
	}
	return obj
}

func TestKeysUploadChecksDeviceKeys(t *testing.T) {
	ctx := context.Background()
	svc, _, _ := newService(t)
	keysUser(t, svc, "alice")
	d := newKeysDevice(t, svc, "alice", "Alice's laptop")
	other := newKeysSigner(t)
	upload := func(mut func(map[string]any)) error {
		dk := d.deviceKeys(t)
		mut(dk)
		_, err := svc.UploadKeys(ctx, d.r, account.UploadKeysRequest{DeviceKeys: rawJSON(t, dk)})
		return err
	}
	for _, tc := range []struct {
		name, errcode string
		mut           func(map[string]any)
	}{
		{"another user", "M_INVALID_PARAM", func(dk map[string]any) {
			dk["user_id"] = "@mallory:example.org"
			d.key.sign(t, dk, "@mallory:example.org", d.keyID())
		}},
		{"another device", "M_INVALID_PARAM", func(dk map[string]any) { dk["device_id"] = "OTHER" }},
		{"no algorithms", "M_BAD_JSON", func(dk map[string]any) { delete(dk, "algorithms") }},
		{"no keys", "M_BAD_JSON", func(dk map[string]any) { delete(dk, "keys") }},
		{"no ed25519 key", "M_BAD_JSON", func(dk map[string]any) {
			delete(dk["keys"].(map[string]any), d.keyID())
		}},
		{"ed25519 key not base64", "M_BAD_JSON", func(dk map[string]any) { dk["keys"].(map[string]any)[d.keyID()] = "!!" }},
		{"no signatures field", "M_BAD_JSON", func(dk map[string]any) { delete(dk, "signatures") }},
		{"not signed by the device", "M_INVALID_SIGNATURE", func(dk map[string]any) { dk["signatures"] = map[string]any{} }},
		{"signed by another key", "M_INVALID_SIGNATURE", func(dk map[string]any) {
			delete(dk, "signatures")
			other.sign(t, dk, d.r.UserID, d.keyID())
		}},
		{"changed after signing", "M_INVALID_SIGNATURE", func(dk map[string]any) { dk["algorithms"] = []any{"m.megolm.v1.aes-sha2"} }},
		{"signature of the wrong shape", "M_BAD_JSON", func(dk map[string]any) { dk["signatures"] = map[string]any{string(d.r.UserID): "x"} }},
		{"a float", "M_BAD_JSON", func(dk map[string]any) { dk["x"] = 1.5 }},
	} {
		if err := upload(tc.mut); errcode(err) != tc.errcode {
			t.Errorf("%s: %v, want %s", tc.name, err, tc.errcode)
		}
	}

	// A valid upload; what the client put in unsigned is not kept.
	dk := d.deviceKeys(t)
	dk["unsigned"] = map[string]any{"device_display_name": "forged"}
	counts, err := svc.UploadKeys(ctx, d.r, account.UploadKeysRequest{
		DeviceKeys:   rawJSON(t, dk),
		OneTimeKeys:  map[string]json.RawMessage{"signed_curve25519:A": rawJSON(t, d.otk(t, "k1", false))},
		FallbackKeys: map[string]json.RawMessage{"signed_curve25519:F": rawJSON(t, d.otk(t, "f1", true))},
	})
	if err != nil {
		t.Fatal(err)
	}
	if counts[id.KeyAlgorithmSignedCurve25519] != 1 {
		t.Fatalf("counts %v", counts)
	}
	resp, err := svc.QueryKeys(ctx, d.r, map[id.UserID][]id.DeviceID{d.r.UserID: nil})
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	if err := json.Unmarshal(resp.DeviceKeys[d.r.UserID][d.r.DeviceID], &got); err != nil {
		t.Fatal(err)
	}
	if got["unsigned"].(map[string]any)["device_display_name"] != "Alice's laptop" || got["device_id"] != string(d.r.DeviceID) {
		t.Fatalf("queried device keys %v", got)
	}

	// Keys uploaded later are checked against the stored device key.
	for _, tc := range []struct {
		name, errcode string
		req           account.UploadKeysRequest
	}{
		{"one-time key signed by another key", "M_INVALID_SIGNATURE", account.UploadKeysRequest{OneTimeKeys: map[string]json.RawMessage{
			"signed_curve25519:B": rawJSON(t, keysDevice{r: d.r, key: other}.otk(t, "k2", false))}}},
		{"one-time key without a key", "M_BAD_JSON", account.UploadKeysRequest{OneTimeKeys: map[string]json.RawMessage{
			"signed_curve25519:B": rawJSON(t, d.key.sign(t, map[string]any{"nokey": "x"}, d.r.UserID, d.keyID()))}}},
		{"key ID without algorithm", "M_BAD_JSON", account.UploadKeysRequest{OneTimeKeys: map[string]json.RawMessage{
			"B": rawJSON(t, d.otk(t, "k2", false))}}},
		{"a number for a key", "M_BAD_JSON", account.UploadKeysRequest{OneTimeKeys: map[string]json.RawMessage{
			"curve25519:B": json.RawMessage(`42`)}}},
		{"two fallback keys of one algorithm", "M_INVALID_PARAM", account.UploadKeysRequest{FallbackKeys: map[string]json.RawMessage{
			"signed_curve25519:F2": rawJSON(t, d.otk(t, "f2", true)), "signed_curve25519:F3": rawJSON(t, d.otk(t, "f3", true))}}},
		{"a reused one-time key ID", "M_INVALID_PARAM", account.UploadKeysRequest{OneTimeKeys: map[string]json.RawMessage{
			"signed_curve25519:A": rawJSON(t, d.otk(t, "not k1", false))}}},
		{"another identity key", "M_INVALID_PARAM", account.UploadKeysRequest{DeviceKeys: rawJSON(t, keysDevice{r: d.r, key: other}.deviceKeys(t))}},
	} {
		if _, err := svc.UploadKeys(ctx, d.r, tc.req); errcode(err) != tc.errcode {
			t.Errorf("%s: %v, want %s", tc.name, err, tc.errcode)
		}
	}
	// Unsigned curve25519 keys (older clients) are stored as strings.
	counts, err = svc.UploadKeys(ctx, d.r, account.UploadKeysRequest{OneTimeKeys: map[string]json.RawMessage{
		"curve25519:C": json.RawMessage(`"plainkey"`), "signed_curve25519:A": rawJSON(t, d.otk(t, "k1", false))}})
	if err != nil || counts[id.KeyAlgorithmCurve25519] != 1 || counts[id.KeyAlgorithmSignedCurve25519] != 1 {
		t.Fatalf("counts %v %v", counts, err)
	}
	c, fb, err := svc.OneTimeKeyCounts(ctx, d.r.UserID, d.r.DeviceID)
	if err != nil || c[id.KeyAlgorithmCurve25519] != 1 || len(fb) != 1 || fb[0] != id.KeyAlgorithmSignedCurve25519 {
		t.Fatalf("OneTimeKeyCounts %v %v %v", c, fb, err)
	}
	// A device with nothing uploaded still lists signed_curve25519 and an
	// empty (not nil) fallback list.
	c, fb, err = svc.OneTimeKeyCounts(ctx, d.r.UserID, "NOKEYS")
	if err != nil || len(c) != 1 || c[id.KeyAlgorithmSignedCurve25519] != 0 || fb == nil || len(fb) != 0 {
		t.Fatalf("empty device: %v %v %v", c, fb, err)
	}
}

// crossSign uploads master, self-signing and user-signing keys for d's user
// (a first upload: no UIA) and returns them.
func crossSign(t *testing.T, svc *account.Service, d keysDevice) (master, ssk, usk keysSigner) {
	t.Helper()
	master, ssk, usk = newKeysSigner(t), newKeysSigner(t), newKeysSigner(t)
	err := svc.UploadCrossSigningKeys(context.Background(), d.r, account.CrossSigningUploadRequest{
		Master:      rawJSON(t, xsKey(t, d.r.UserID, "master", master, nil)),
		SelfSigning: rawJSON(t, xsKey(t, d.r.UserID, "self_signing", ssk, &master)),
		UserSigning: rawJSON(t, xsKey(t, d.r.UserID, "user_signing", usk, &master)),
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return master, ssk, usk
}

func TestKeysCrossSigningUpload(t *testing.T) {
	ctx := context.Background()
	svc, _, _ := newService(t)
	keysUser(t, svc, "bob")
	d := newKeysDevice(t, svc, "bob", "")
	user := d.r.UserID

	// Refusals before any key exists.
	m0, s0 := newKeysSigner(t), newKeysSigner(t)
	for _, tc := range []struct {
		name, errcode string
		req           account.CrossSigningUploadRequest
	}{
		{"self-signing key without a master key", "M_MISSING_PARAM", account.CrossSigningUploadRequest{
			SelfSigning: rawJSON(t, xsKey(t, user, "self_signing", s0, &m0))}},
		{"self-signing key not signed by the master key", "M_INVALID_SIGNATURE", account.CrossSigningUploadRequest{
			Master: rawJSON(t, xsKey(t, user, "master", m0, nil)), SelfSigning: rawJSON(t, xsKey(t, user, "self_signing", s0, &s0))}},
		{"another user's key", "M_FORBIDDEN", account.CrossSigningUploadRequest{
			Master: rawJSON(t, xsKey(t, "@eve:example.org", "master", m0, nil))}},
		{"wrong usage", "M_INVALID_PARAM", account.CrossSigningUploadRequest{
			Master: rawJSON(t, xsKey(t, user, "self_signing", m0, nil))}},
		{"no user_id", "M_BAD_JSON", account.CrossSigningUploadRequest{
			Master: json.RawMessage(`{"usage":["master"],"keys":{"ed25519:` + m0.b64() + `":"` + m0.b64() + `"}}`)}},
		{"two keys", "M_INVALID_PARAM", account.CrossSigningUploadRequest{
			Master: json.RawMessage(fmt.Sprintf(`{"user_id":%q,"usage":["master"],"keys":{"ed25519:%s":%q,"ed25519:%s":%q}}`, user, m0.b64(), m0.b64(), s0.b64(), s0.b64()))}},
		{"key name not its value", "M_INVALID_PARAM", account.CrossSigningUploadRequest{
			Master: json.RawMessage(fmt.Sprintf(`{"user_id":%q,"usage":["master"],"keys":{"ed25519:abc":%q}}`, user, m0.b64()))}},
	} {
		if err := svc.UploadCrossSigningKeys(ctx, d.r, tc.req, nil); errcode(err) != tc.errcode {
			t.Errorf("%s: %v, want %s", tc.name, err, tc.errcode)
		}
	}

	// A public key equal to one of the user's device IDs is refused.
	clash := newKeysSigner(t)
	if _, err := svc.LoginPassword(ctx, "bob", "password bob", account.DeviceParams{DeviceID: id.DeviceID(clash.b64())}); err != nil {
		t.Fatal(err)
	}
	if err := svc.UploadCrossSigningKeys(ctx, d.r, account.CrossSigningUploadRequest{
		Master: rawJSON(t, xsKey(t, user, "master", clash, nil))}, nil); errcode(err) != "M_FORBIDDEN" {
		t.Fatalf("key ID in use: %v", err)
	}

	// The first upload needs no UIA, nor the same keys again.
	master, ssk, usk := newKeysSigner(t), newKeysSigner(t), newKeysSigner(t)
	first := account.CrossSigningUploadRequest{
		Master:      rawJSON(t, xsKey(t, user, "master", master, nil)),
		SelfSigning: rawJSON(t, xsKey(t, user, "self_signing", ssk, &master)),
		UserSigning: rawJSON(t, xsKey(t, user, "user_signing", usk, &master)),
	}
	if err := svc.UploadCrossSigningKeys(ctx, d.r, first, nil); err != nil {
		t.Fatalf("first upload: %v", err)
	}
	if err := svc.UploadCrossSigningKeys(ctx, d.r, first, nil); err != nil {
		t.Fatalf("the same keys again: %v", err)
	}
	// And the other way round: a login may not take a cross-signing public
	// key as its device ID.
	if _, err := svc.LoginPassword(ctx, "bob", "password bob", account.DeviceParams{DeviceID: id.DeviceID(master.b64())}); errcode(err) != "M_INVALID_PARAM" {
		t.Fatalf("login with the master key as device ID: %v", err)
	}
	// A new self-signing key (signed by the stored master) needs UIA.
	ssk2 := newKeysSigner(t)
	replace := account.CrossSigningUploadRequest{SelfSigning: rawJSON(t, xsKey(t, user, "self_signing", ssk2, &master))}
	err := svc.UploadCrossSigningKeys(ctx, d.r, replace, nil)
	var uia *account.UIAChallenge
	if !errors.As(err, &uia) || uia.Session == "" {
		t.Fatalf("replacing without UIA: %v", err)
	}
	auth := rawJSON(t, map[string]any{"type": "m.login.password", "session": uia.Session, "password": "wrong",
		"identifier": map[string]any{"type": "m.id.user", "user": "bob"}})
	if err := svc.UploadCrossSigningKeys(ctx, d.r, replace, auth); !errors.As(err, &uia) || uia.Errcode != "M_FORBIDDEN" {
		t.Fatalf("wrong password: %v", err)
	}
	auth = rawJSON(t, map[string]any{"type": "m.login.password", "session": uia.Session, "password": "password bob",
		"identifier": map[string]any{"type": "m.id.user", "user": "bob"}})
	if err := svc.UploadCrossSigningKeys(ctx, d.r, replace, auth); err != nil {
		t.Fatalf("with UIA: %v", err)
	}
	keys, err := svc.QueryKeys(ctx, d.r, map[id.UserID][]id.DeviceID{user: nil})
	if err != nil {
		t.Fatal(err)
	}
	if !jsonHasKey(t, keys.SelfSigningKeys[user], ssk2.b64()) || !jsonHasKey(t, keys.UserSigningKeys[user], usk.b64()) {
		t.Fatalf("after replacing the self-signing key: %s / %s", keys.SelfSigningKeys[user], keys.UserSigningKeys[user])
	}
	// A new master key alone: the keys the old one signed go.
	master2 := newKeysSigner(t)
	err = svc.UploadCrossSigningKeys(ctx, d.r, account.CrossSigningUploadRequest{Master: rawJSON(t, xsKey(t, user, "master", master2, nil))}, nil)
	if !errors.As(err, &uia) {
		t.Fatalf("new master without UIA: %v", err)
	}
	auth = rawJSON(t, map[string]any{"type": "m.login.password", "session": uia.Session, "password": "password bob",
		"identifier": map[string]any{"type": "m.id.user", "user": "bob"}})
	if err := svc.UploadCrossSigningKeys(ctx, d.r, account.CrossSigningUploadRequest{Master: rawJSON(t, xsKey(t, user, "master", master2, nil))}, auth); err != nil {
		t.Fatal(err)
	}
	keys, _ = svc.QueryKeys(ctx, d.r, map[id.UserID][]id.DeviceID{user: nil})
	if !jsonHasKey(t, keys.MasterKeys[user], master2.b64()) || keys.SelfSigningKeys[user] != nil || keys.UserSigningKeys[user] != nil {
		t.Fatalf("after the new master: %+v", keys)
	}
}

// jsonHasKey reports whether a cross-signing key object holds pub.
func jsonHasKey(t *testing.T, raw json.RawMessage, pub string) bool {
	t.Helper()
	var k struct {
		Keys map[string]string `json:"keys"`
	}
	if raw == nil {
		return false
	}
	if err := json.Unmarshal(raw, &k); err != nil {
		t.Fatal(err)
	}
	return k.Keys["ed25519:"+pub] == pub
}

func sigsOf(t *testing.T, raw json.RawMessage) map[string]map[string]string {
	t.Helper()
	var k struct {
		Signatures map[string]map[string]string `json:"signatures"`
	}
	if err := json.Unmarshal(raw, &k); err != nil {
		t.Fatal(err)
	}
	return k.Signatures
}

func TestKeysSignaturesAndWhoSeesThem(t *testing.T) {
	ctx := context.Background()
	svc, _, _ := newService(t)
	keysUser(t, svc, "carol")
	keysUser(t, svc, "dan")
	carol, dan := newKeysDevice(t, svc, "carol", "phone"), newKeysDevice(t, svc, "dan", "")
	for _, d := range []keysDevice{carol, dan} {
		if _, err := svc.UploadKeys(ctx, d.r, account.UploadKeysRequest{DeviceKeys: rawJSON(t, d.deviceKeys(t))}); err != nil {
			t.Fatal(err)
		}
	}
	cMaster, cSSK, cUSK := crossSign(t, svc, carol)
	dMaster, _, _ := crossSign(t, svc, dan)
	cu, du := carol.r.UserID, dan.r.UserID

	// Carol signs her device with her self-signing key, her master key
	// with her device, and Dan's master key with her user-signing key.
	devSigned := cSSK.sign(t, carol.deviceKeys(t), cu, "ed25519:"+cSSK.b64())
	masterSigned := carol.key.sign(t, xsKey(t, cu, "master", cMaster, nil), cu, carol.keyID())
	danSigned := cUSK.sign(t, xsKey(t, du, "master", dMaster, nil), cu, "ed25519:"+cUSK.b64())
	failures, err := svc.UploadSignatures(ctx, carol.r, map[id.UserID]map[string]json.RawMessage{
		cu: {string(carol.r.DeviceID): rawJSON(t, devSigned), cMaster.b64(): rawJSON(t, masterSigned)},
		du: {dMaster.b64(): rawJSON(t, danSigned)},
	})
	if err != nil || len(failures) != 0 {
		t.Fatalf("signatures: %v %+v", err, failures)
	}
	// The same signatures again (a retry) are no failure.
	failures, err = svc.UploadSignatures(ctx, carol.r, map[id.UserID]map[string]json.RawMessage{
		cu: {string(carol.r.DeviceID): rawJSON(t, devSigned)}, du: {dMaster.b64(): rawJSON(t, danSigned)}})
	if err != nil || len(failures) != 0 {
		t.Fatalf("signatures again: %v %+v", err, failures)
	}
	// Dan sees Carol's own signatures, not her verification of him.
	asDan, err := svc.QueryKeys(ctx, dan.r, map[id.UserID][]id.DeviceID{cu: nil, du: nil})
	if err != nil {
		t.Fatal(err)
	}
	if sigsOf(t, asDan.DeviceKeys[cu][carol.r.DeviceID])[string(cu)]["ed25519:"+cSSK.b64()] == "" {
		t.Errorf("Dan does not see Carol's device signed by her self-signing key")
	}
	if sigsOf(t, asDan.MasterKeys[cu])[string(cu)][carol.keyID()] == "" {
		t.Errorf("Dan does not see Carol's master key signed by her device")
	}
	if _, ok := sigsOf(t, asDan.MasterKeys[du])[string(cu)]; ok {
		t.Errorf("Dan sees Carol's user-signing signature on his key")
	}
	if asDan.UserSigningKeys[cu] != nil || asDan.UserSigningKeys[du] == nil {
		t.Errorf("user-signing keys shown to Dan: %v", asDan.UserSigningKeys)
	}
	if asDan.SelfSigningKeys[cu] == nil {
		t.Errorf("Carol's self-signing key not shown to Dan")
	}
	// Carol sees her signature on Dan's master key.
	asCarol, err := svc.QueryKeys(ctx, carol.r, map[id.UserID][]id.DeviceID{du: nil, "@x:remote.example": nil})
	if err != nil {
		t.Fatal(err)
	}
	if sigsOf(t, asCarol.MasterKeys[du])[string(cu)]["ed25519:"+cUSK.b64()] == "" {
		t.Errorf("Carol does not see her signature on Dan's master key")
	}
	if _, ok := asCarol.Failures["remote.example"]; !ok || asCarol.UserSigningKeys[du] != nil {
		t.Errorf("remote user not in failures, or Dan's user-signing key shown: %+v", asCarol)
	}

	// What fails is reported per key.
	bad := cSSK.sign(t, carol.deviceKeys(t), cu, "ed25519:"+cSSK.b64())
	bad["signatures"].(map[string]any)[string(cu)].(map[string]any)["ed25519:"+cSSK.b64()] = base64.RawStdEncoding.EncodeToString(make([]byte, 64))
	changed := carol.deviceKeys(t)
	changed["algorithms"] = []any{"x"}
	cSSK.sign(t, changed, cu, "ed25519:"+cSSK.b64())
	byDevice := dan.key.sign(t, xsKey(t, du, "master", dMaster, nil), cu, "ed25519:"+string(carol.r.DeviceID))
	danDevice := cSSK.sign(t, dan.deviceKeys(t), cu, "ed25519:"+cSSK.b64())
	failures, err = svc.UploadSignatures(ctx, carol.r, map[id.UserID]map[string]json.RawMessage{
		cu: {
			string(carol.r.DeviceID): rawJSON(t, bad),
			"UNKNOWN":                rawJSON(t, bad),
			cSSK.b64():               rawJSON(t, xsKey(t, cu, "self_signing", cSSK, &cMaster)),
		},
		du: {dMaster.b64(): rawJSON(t, byDevice), string(dan.r.DeviceID): rawJSON(t, danDevice)},
	})
	if err != nil {
		t.Fatal(err)
	}
	want := map[id.UserID]map[string]string{
		cu: {string(carol.r.DeviceID): "M_INVALID_SIGNATURE", "UNKNOWN": "M_NOT_FOUND", cSSK.b64(): "M_NOT_FOUND"},
		du: {dMaster.b64(): "M_INVALID_SIGNATURE", string(dan.r.DeviceID): "M_INVALID_PARAM"},
	}
	for u, m := range want {
		for k, code := range m {
			if f := failures[u][k]; f == nil || f.ErrCode != code {
				t.Errorf("failure for %s %s: %+v, want %s", u, k, f, code)
			}
		}
	}
	failures, err = svc.UploadSignatures(ctx, carol.r, map[id.UserID]map[string]json.RawMessage{cu: {string(carol.r.DeviceID): rawJSON(t, changed)}})
	if err != nil || failures[cu][string(carol.r.DeviceID)] == nil || failures[cu][string(carol.r.DeviceID)].ErrCode != "M_INVALID_PARAM" {
		t.Fatalf("a signed object that is not the stored key: %v %+v", err, failures)
	}
}

func TestKeysClaimAndDeviceDeletion(t *testing.T) {
	ctx := context.Background()
	svc, _, _ := newService(t)
	keysUser(t, svc, "erin")
	d1, d2 := newKeysDevice(t, svc, "erin", ""), newKeysDevice(t, svc, "erin", "")
	for _, d := range []keysDevice{d1, d2} {
		if _, err := svc.UploadKeys(ctx, d.r, account.UploadKeysRequest{
			DeviceKeys:   rawJSON(t, d.deviceKeys(t)),
			OneTimeKeys:  map[string]json.RawMessage{"signed_curve25519:1": rawJSON(t, d.otk(t, "otk-"+string(d.r.DeviceID), false))},
			FallbackKeys: map[string]json.RawMessage{"signed_curve25519:2": rawJSON(t, d.otk(t, "fb-"+string(d.r.DeviceID), true))},
		}); err != nil {
			t.Fatal(err)
		}
	}
	u := d1.r.UserID
	req := map[id.UserID]map[id.DeviceID]id.KeyAlgorithm{
		u:                   {d1.r.DeviceID: id.KeyAlgorithmSignedCurve25519, d2.r.DeviceID: id.KeyAlgorithmSignedCurve25519, "NONE": id.KeyAlgorithmSignedCurve25519},
		"@far:away.example": {"X": id.KeyAlgorithmSignedCurve25519},
	}
	for round, want := range []string{"signed_curve25519:1", "signed_curve25519:2"} {
		resp, err := svc.ClaimKeys(ctx, d1.r, req)
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := resp.Failures["away.example"]; !ok || len(resp.OneTimeKeys[u]) != 2 {
			t.Fatalf("round %d: %+v", round, resp)
		}
		for _, d := range []keysDevice{d1, d2} {
			if _, ok := resp.OneTimeKeys[u][d.r.DeviceID][id.KeyID(want)]; !ok {
				t.Fatalf("round %d: %s got %v, want %s", round, d.r.DeviceID, resp.OneTimeKeys[u][d.r.DeviceID], want)
			}
		}
	}
	if err := svc.DeleteDevices(ctx, u, []id.DeviceID{d2.r.DeviceID}); err != nil {
		t.Fatal(err)
	}
	q, err := svc.QueryKeys(ctx, d1.r, map[id.UserID][]id.DeviceID{u: nil})
	if err != nil || len(q.DeviceKeys[u]) != 1 || q.DeviceKeys[u][d1.r.DeviceID] == nil {
		t.Fatalf("after deleting a device: %+v %v", q, err)
	}
	resp, err := svc.ClaimKeys(ctx, d1.r, req)
	if err != nil || len(resp.OneTimeKeys[u]) != 1 {
		t.Fatalf("claim after deletion: %+v %v", resp, err)
	}
}

// TestKeysOneTimeKeyCountsFollowUploadsAndClaims: the counts /sync reports
// are cached per device, and uploads and claims make them current at once.
func TestKeysOneTimeKeyCountsFollowUploadsAndClaims(t *testing.T) {
	ctx := context.Background()
	svc, _, _ := newService(t)
	keysUser(t, svc, "fay")
	d := newKeysDevice(t, svc, "fay", "")
	count := func() int {
		t.Helper()
		var n int
		for range 2 { // the second read comes from the cache
			counts, fallback, err := svc.OneTimeKeyCounts(ctx, d.r.UserID, d.r.DeviceID)
			if err != nil || fallback == nil {
				t.Fatalf("counts: %v %v", fallback, err)
			}
			n = counts[id.KeyAlgorithmSignedCurve25519]
		}
		return n
	}
	if n := count(); n != 0 {
		t.Fatalf("before any upload: %d", n)
	}
	if _, err := svc.UploadKeys(ctx, d.r, account.UploadKeysRequest{
		DeviceKeys: rawJSON(t, d.deviceKeys(t)),
		OneTimeKeys: map[string]json.RawMessage{
			"signed_curve25519:1": rawJSON(t, d.otk(t, "a", false)),
			"signed_curve25519:2": rawJSON(t, d.otk(t, "b", false)),
		},
	}); err != nil {
		t.Fatal(err)
	}
	if n := count(); n != 2 {
		t.Fatalf("after uploading 2: %d", n)
	}
	claim := map[id.UserID]map[id.DeviceID]id.KeyAlgorithm{d.r.UserID: {d.r.DeviceID: id.KeyAlgorithmSignedCurve25519}}
	if _, err := svc.ClaimKeys(ctx, d.r, claim); err != nil {
		t.Fatal(err)
	}
	if n := count(); n != 1 {
		t.Fatalf("after a claim: %d", n)
	}
	if _, err := svc.UploadKeys(ctx, d.r, account.UploadKeysRequest{
		OneTimeKeys: map[string]json.RawMessage{"signed_curve25519:3": rawJSON(t, d.otk(t, "c", false))},
	}); err != nil {
		t.Fatal(err)
	}
	if n := count(); n != 2 {
		t.Fatalf("after uploading another: %d", n)
	}
}
