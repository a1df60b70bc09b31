package e2e

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/crypto/canonicaljson"
	"maunium.net/go/mautrix/crypto/signatures"
	"maunium.net/go/mautrix/id"
)

// keysE2EDevice is a logged-in mautrix client with its own ed25519 device
// key (generated here: the server never sees a private key, and these tests
// need no Olm machine to exercise it).
type keysE2EDevice struct {
	cli  *mautrix.Client
	pub  ed25519.PublicKey
	priv ed25519.PrivateKey
}

func keysE2ENew(t testing.TB, cli *mautrix.Client) keysE2EDevice {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return keysE2EDevice{cli: cli, pub: pub, priv: priv}
}

// keysE2ELogin registers (register) or logs in localpart as a new device.
func keysE2ELogin(t testing.TB, srv *Server, localpart string, register bool) keysE2EDevice {
	t.Helper()
	cli := srv.Client()
	ctx := context.Background()
	if register {
		resp, err := cli.RegisterDummy(ctx, &mautrix.ReqRegister[any]{Username: localpart, Password: "password " + localpart})
		if err != nil {
			t.Fatalf("registering %s: %v", localpart, err)
		}
		cli.SetCredentials(resp.UserID, resp.AccessToken)
		cli.DeviceID = resp.DeviceID
	} else if _, err := cli.Login(ctx, &mautrix.ReqLogin{
		Type:       mautrix.AuthTypePassword,
		Identifier: mautrix.UserIdentifier{Type: mautrix.IdentifierTypeUser, User: localpart},
		Password:   "password " + localpart, StoreCredentials: true,
	}); err != nil {
		t.Fatalf("login as %s: %v", localpart, err)
	}
	return keysE2ENew(t, cli)
}

func (d keysE2EDevice) keyName() string { return string(d.cli.DeviceID) }

// keysE2ESign signs v (a struct or map) as user with key keyName and returns
// the signature: over v's canonical JSON without signatures and unsigned.
func keysE2ESign(t testing.TB, v any, priv ed25519.PrivateKey) string {
	t.Helper()
	raw, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(raw, &obj); err != nil {
		t.Fatal(err)
	}
	delete(obj, "signatures")
	delete(obj, "unsigned")
	msg, err := canonicaljson.Marshal(obj)
	if err != nil {
		t.Fatal(err)
	}
	return base64.RawStdEncoding.EncodeToString(ed25519.Sign(priv, msg))
}

func (d keysE2EDevice) deviceKeys(t testing.TB) *mautrix.DeviceKeys {
	dev := d.cli.DeviceID
	dk := &mautrix.DeviceKeys{
		UserID: d.cli.UserID, DeviceID: dev,
		Algorithms: []id.Algorithm{id.AlgorithmOlmV1, id.AlgorithmMegolmV1},
		Keys: mautrix.KeyMap{
			id.NewDeviceKeyID(id.KeyAlgorithmCurve25519, dev): base64.RawStdEncoding.EncodeToString(d.pub[:16]) + "curve",
			id.NewDeviceKeyID(id.KeyAlgorithmEd25519, dev):    base64.RawStdEncoding.EncodeToString(d.pub),
		},
	}
	dk.Signatures = signatures.NewSingleSignature(d.cli.UserID, id.KeyAlgorithmEd25519, d.keyName(), keysE2ESign(t, dk, d.priv))
	return dk
}

// oneTimeKeys are n signed_curve25519 keys named prefix0, prefix1...
func (d keysE2EDevice) oneTimeKeys(t testing.TB, prefix string, n int) map[id.KeyID]mautrix.OneTimeKey {
	out := map[id.KeyID]mautrix.OneTimeKey{}
	for i := range n {
		k := mautrix.OneTimeKey{Key: id.Curve25519(fmt.Sprintf("%s-%s%d", d.keyName(), prefix, i)), IsSigned: true}
		k.Signatures = signatures.NewSingleSignature(d.cli.UserID, id.KeyAlgorithmEd25519, d.keyName(), keysE2ESign(t, &k, d.priv))
		out[id.NewKeyID(id.KeyAlgorithmSignedCurve25519, fmt.Sprintf("%s%d", prefix, i))] = k
	}
	return out
}

// Upload, query and claim with mautrix's client and its own request and
// response types; what comes back verifies with mautrix's signature
// checker, so the server hands keys out exactly as signed.
func TestKeysUploadQueryClaimWithMautrix(t *testing.T) {
	srv := startAccounts(t, nil)
	ctx := context.Background()
	alice := keysE2ELogin(t, srv, "alice", true)
	alice2 := keysE2ELogin(t, srv, "alice", false)
	bob := keysE2ELogin(t, srv, "bob", true)

	for _, d := range []keysE2EDevice{alice, alice2} {
		resp, err := d.cli.UploadKeys(ctx, &mautrix.ReqUploadKeys{DeviceKeys: d.deviceKeys(t), OneTimeKeys: d.oneTimeKeys(t, "a", 5)})
		if err != nil {
			t.Fatal(err)
		}
		if resp.OneTimeKeyCounts.SignedCurve25519 != 5 {
			t.Fatalf("counts %+v", resp.OneTimeKeyCounts)
		}
	}
	// Fallback keys (mautrix's request type has no field for them).
	fb := mautrix.OneTimeKey{Key: "fallback-key", Fallback: true, IsSigned: true}
	fb.Signatures = signatures.NewSingleSignature(alice.cli.UserID, id.KeyAlgorithmEd25519, alice.keyName(), keysE2ESign(t, &fb, alice.priv))
	r := doJSON(t, "POST", clientURL(srv, "v3", "keys", "upload"), alice.cli.AccessToken, map[string]any{"fallback_keys": map[string]any{"signed_curve25519:fb": &fb}})
	r.wantOK(t)
	specValidate(t, r.Body, "keys.yaml", "/keys/upload", "post", "200")

	q, err := bob.cli.QueryKeys(ctx, &mautrix.ReqQueryKeys{DeviceKeys: mautrix.DeviceKeysRequest{alice.cli.UserID: {}, bob.cli.UserID: {}}})
	if err != nil {
		t.Fatal(err)
	}
	if len(q.DeviceKeys[alice.cli.UserID]) != 2 || len(q.DeviceKeys[bob.cli.UserID]) != 0 {
		t.Fatalf("queried devices: %+v", q.DeviceKeys)
	}
	for _, d := range []keysE2EDevice{alice, alice2} {
		got := q.DeviceKeys[alice.cli.UserID][d.cli.DeviceID]
		ok, err := signatures.VerifySignatureJSON(&got, alice.cli.UserID, d.keyName(), got.Keys.GetEd25519(d.cli.DeviceID))
		if err != nil || !ok {
			t.Fatalf("device keys of %s do not verify: %v", d.cli.DeviceID, err)
		}
	}
	r = doJSON(t, "POST", clientURL(srv, "v3", "keys", "query"), bob.cli.AccessToken, map[string]any{"device_keys": map[string]any{string(alice.cli.UserID): []any{}}})
	r.wantOK(t)
	specValidate(t, r.Body, "keys.yaml", "/keys/query", "post", "200")

	claim := &mautrix.ReqClaimKeys{OneTimeKeys: mautrix.OneTimeKeysRequest{alice.cli.UserID: {
		alice.cli.DeviceID: id.KeyAlgorithmSignedCurve25519, alice2.cli.DeviceID: id.KeyAlgorithmSignedCurve25519}}}
	seen := map[string]bool{}
	for round := range 6 {
		c, err := bob.cli.ClaimKeys(ctx, claim)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range []keysE2EDevice{alice, alice2} {
			keys := c.OneTimeKeys[alice.cli.UserID][d.cli.DeviceID]
			if round == 5 && d.cli.DeviceID == alice2.cli.DeviceID {
				if len(keys) != 0 {
					t.Fatalf("a device without keys left or fallback gave %v", keys)
				}
				continue
			}
			if len(keys) != 1 {
				t.Fatalf("round %d: %s gave %d keys", round, d.cli.DeviceID, len(keys))
			}
			for keyID, k := range keys {
				ok, err := signatures.VerifySignatureJSON(k.RawData, alice.cli.UserID, d.keyName(), id.Ed25519(base64.RawStdEncoding.EncodeToString(d.pub)))
				if err != nil || !ok {
					t.Fatalf("claimed key %s does not verify: %v", keyID, err)
				}
				if (round == 5) != k.Fallback {
					t.Fatalf("round %d: %s fallback=%v", round, keyID, k.Fallback)
				}
				name := string(d.cli.DeviceID) + "/" + string(keyID)
				if seen[name] && !k.Fallback {
					t.Fatalf("%s handed out twice", name)
				}
				seen[name] = true
			}
		}
	}
	r = doJSON(t, "POST", clientURL(srv, "v3", "keys", "claim"), bob.cli.AccessToken, map[string]any{"one_time_keys": map[string]any{string(alice.cli.UserID): map[string]any{string(alice.cli.DeviceID): "signed_curve25519"}}})
	r.wantOK(t)
	specValidate(t, r.Body, "keys.yaml", "/keys/claim", "post", "200")

	// Cross-signing with mautrix: a first upload needs no UIA; the
	// self-signing key then signs a device, which Bob sees.
	type pair struct {
		pub  ed25519.PublicKey
		priv ed25519.PrivateKey
	}
	newPair := func() pair {
		pub, priv, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return pair{pub, priv}
	}
	b64 := func(p pair) string { return base64.RawStdEncoding.EncodeToString(p.pub) }
	master, ssk, usk := newPair(), newPair(), newPair()
	u := alice.cli.UserID
	xs := func(usage id.CrossSigningUsage, p pair, by *pair) mautrix.CrossSigningKeys {
		k := mautrix.CrossSigningKeys{UserID: u, Usage: []id.CrossSigningUsage{usage}, Keys: map[id.KeyID]id.Ed25519{id.NewKeyID(id.KeyAlgorithmEd25519, b64(p)): id.Ed25519(b64(p))}}
		if by != nil {
			k.Signatures = signatures.NewSingleSignature(u, id.KeyAlgorithmEd25519, b64(*by), keysE2ESign(t, &k, by.priv))
		}
		return k
	}
	err = alice.cli.UploadCrossSigningKeys(ctx, &mautrix.UploadCrossSigningKeysReq[any]{
		Master: xs(id.XSUsageMaster, master, nil), SelfSigning: xs(id.XSUsageSelfSigning, ssk, &master), UserSigning: xs(id.XSUsageUserSigning, usk, &master),
	}, nil)
	if err != nil {
		t.Fatalf("first cross-signing upload: %v", err)
	}
	dk := alice.deviceKeys(t)
	sig := mautrix.ReqKeysSignatures{UserID: u, DeviceID: dk.DeviceID, Algorithms: dk.Algorithms, Keys: map[id.KeyID]string{}}
	for k, v := range dk.Keys {
		sig.Keys[id.KeyID(k)] = v
	}
	sig.Signatures = signatures.NewSingleSignature(u, id.KeyAlgorithmEd25519, b64(ssk), keysE2ESign(t, &sig, ssk.priv))
	sresp, err := alice.cli.UploadSignatures(ctx, &mautrix.ReqUploadSignatures{u: {string(dk.DeviceID): sig}})
	if err != nil || len(sresp.Failures) != 0 {
		t.Fatalf("signature upload: %v %+v", err, sresp)
	}
	q, err = bob.cli.QueryKeys(ctx, &mautrix.ReqQueryKeys{DeviceKeys: mautrix.DeviceKeysRequest{u: {alice.cli.DeviceID}}})
	if err != nil {
		t.Fatal(err)
	}
	got := q.DeviceKeys[u][alice.cli.DeviceID]
	if ok, err := signatures.VerifySignatureJSON(&got, u, b64(ssk), id.Ed25519(b64(ssk))); err != nil || !ok {
		t.Fatalf("Bob does not see a valid self-signing signature on Alice's device: %v %+v", err, got.Signatures)
	}
	mk, sk := q.MasterKeys[u], q.SelfSigningKeys[u]
	if mk.FirstKey() != id.Ed25519(b64(master)) || sk.FirstKey() != id.Ed25519(b64(ssk)) {
		t.Fatalf("cross-signing keys: %+v %+v", q.MasterKeys, q.SelfSigningKeys)
	}
	if _, ok := q.UserSigningKeys[u]; ok {
		t.Fatalf("Bob sees Alice's user-signing key")
	}
	// Replacing the keys asks for UIA, which mautrix completes with the password.
	master2 := newPair()
	calls := 0
	err = alice.cli.UploadCrossSigningKeys(ctx, &mautrix.UploadCrossSigningKeysReq[any]{
		Master: xs(id.XSUsageMaster, master2, nil), SelfSigning: xs(id.XSUsageSelfSigning, ssk, &master2), UserSigning: xs(id.XSUsageUserSigning, usk, &master2),
	}, func(uia *mautrix.RespUserInteractive) any {
		calls++
		return map[string]any{"type": "m.login.password", "session": uia.Session, "password": "password alice",
			"identifier": map[string]any{"type": "m.id.user", "user": "alice"}}
	})
	if err != nil || calls != 1 {
		t.Fatalf("replacing the keys with UIA: %v (%d UIA rounds)", err, calls)
	}
}

// BenchmarkKeysClaim measures POST /keys/claim through the real binary on
// the embedded PostgreSQL (durable): one key per request, from one device
// (every claimer racing for the same device's keys) or spread over 16, by
// 1 or 16 concurrent clients, and from a device with only its fallback key
// left. It reports claims/s and the p50/p99 latency of a claim.
//
//	GOTOOLCHAIN=auto go test -run '^$' -bench KeysClaim -benchtime 2000x ./internal/e2e/
func BenchmarkKeysClaim(b *testing.B) {
	srv := Start(b, Options{Env: map[string]string{
		"WEFT_DATABASE_URL": "", "WEFT_REGISTRATION_MODE": "open", "WEFT_PASSWORDS_BCRYPT_COST": "4",
		"WEFT_RATE_LIMITS_ENABLED": "false", "WEFT_LOG_LEVEL": "warn",
	}})
	ctx := context.Background()
	claimer := keysE2ELogin(b, srv, "claimer", true)
	keysE2ELogin(b, srv, "target", true)
	var devices []keysE2EDevice
	for range 16 {
		devices = append(devices, keysE2ELogin(b, srv, "target", false))
	}
	for _, d := range devices {
		fb := mautrix.OneTimeKey{Key: "fallback", Fallback: true, IsSigned: true}
		fb.Signatures = signatures.NewSingleSignature(d.cli.UserID, id.KeyAlgorithmEd25519, d.keyName(), keysE2ESign(b, &fb, d.priv))
		if _, err := d.cli.UploadKeys(ctx, &mautrix.ReqUploadKeys{DeviceKeys: d.deviceKeys(b)}); err != nil {
			b.Fatal(err)
		}
		if _, err := d.cli.MakeRequest(ctx, "POST", d.cli.BuildClientURL("v3", "keys", "upload"),
			map[string]any{"fallback_keys": map[string]any{"signed_curve25519:fb": &fb}}, nil); err != nil {
			b.Fatal(err)
		}
	}
	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	var batch atomic.Int64
	// stock uploads n one-time keys spread over the devices, outside the timer.
	stock := func(b *testing.B, spread, n int) {
		for i := range spread {
			d := devices[i]
			left := n/spread + 1
			for left > 0 {
				m := min(left, 200)
				if _, err := d.cli.UploadKeys(ctx, &mautrix.ReqUploadKeys{OneTimeKeys: d.oneTimeKeys(b, fmt.Sprintf("b%d-", batch.Add(1)), m)}); err != nil {
					b.Fatal(err)
				}
				left -= m
			}
		}
	}
	run := func(b *testing.B, spread, conc int, wantFallback bool) {
		n := b.N
		lat := make([]time.Duration, n)
		bodies := make([][]byte, spread)
		for i := range spread {
			bodies[i], _ = json.Marshal(map[string]any{"one_time_keys": map[string]any{
				string(devices[i].cli.UserID): map[string]any{string(devices[i].cli.DeviceID): "signed_curve25519"}}})
		}
		var next atomic.Int64
		var wg sync.WaitGroup
		b.ResetTimer()
		start := time.Now()
		for range conc {
			wg.Go(func() {
				for {
					i := int(next.Add(1)) - 1
					if i >= n {
						return
					}
					req, _ := http.NewRequest("POST", srv.URL+"/_matrix/client/v3/keys/claim", bytes.NewReader(bodies[i%spread]))
					req.Header.Set("Authorization", "Bearer "+claimer.cli.AccessToken)
					t0 := time.Now()
					res, err := hc.Do(req)
					if err != nil {
						b.Error(err)
						return
					}
					var out mautrix.RespClaimKeys
					err = json.NewDecoder(res.Body).Decode(&out)
					res.Body.Close()
					lat[i] = time.Since(t0)
					if res.StatusCode != 200 || err != nil {
						b.Errorf("status %d: %v", res.StatusCode, err)
						return
					}
					for _, keys := range out.OneTimeKeys {
						for _, ks := range keys {
							for _, k := range ks {
								if k.Fallback != wantFallback {
									b.Errorf("fallback=%v, want %v", k.Fallback, wantFallback)
									return
								}
							}
						}
					}
				}
			})
		}
		wg.Wait()
		elapsed := time.Since(start)
		b.StopTimer()
		sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
		b.ReportMetric(float64(n)/elapsed.Seconds(), "claims/s")
		b.ReportMetric(float64(lat[n/2].Microseconds())/1000, "p50-ms")
		b.ReportMetric(float64(lat[n*99/100].Microseconds())/1000, "p99-ms")
	}
	for _, spread := range []int{1, 16} {
		for _, conc := range []int{1, 16} {
			b.Run(fmt.Sprintf("otk/devices=%d/clients=%d", spread, conc), func(b *testing.B) {
				stock(b, spread, b.N)
				run(b, spread, conc, false)
				// Claim what is left, so the next run starts from no keys.
				for i := range spread {
					for {
						c, err := claimer.cli.ClaimKeys(ctx, &mautrix.ReqClaimKeys{OneTimeKeys: mautrix.OneTimeKeysRequest{
							devices[i].cli.UserID: {devices[i].cli.DeviceID: id.KeyAlgorithmSignedCurve25519}}})
						if err != nil {
							b.Fatal(err)
						}
						if keysFallbackOnly(c) {
							break
						}
					}
				}
			})
		}
	}
	b.Run("fallback/devices=1/clients=16", func(b *testing.B) { run(b, 1, 16, true) })
}

// keysFallbackOnly reports whether every key of a claim answer is a fallback key.
func keysFallbackOnly(c *mautrix.RespClaimKeys) bool {
	for _, keys := range c.OneTimeKeys {
		for _, ks := range keys {
			for _, k := range ks {
				if !k.Fallback {
					return false
				}
			}
		}
	}
	return true
}
