package storage_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"
	"maunium.net/go/mautrix/id"

	"github.com/weftchat/weft/account"
	"github.com/weftchat/weft/storage"
	"github.com/weftchat/weft/storage/pgtest"
	"github.com/weftchat/weft/syncapi"
)

// keysStore is a migrated database with the key store, a raw connection to
// look at tables, and what the stream listener heard.
type keysStore struct {
	db   *storage.DB
	acc  *storage.Accounts
	conn *pgx.Conn
	mu   sync.Mutex
	// heard lists the users of every KindDeviceLists commit.
	heard [][]id.UserID
}

func newKeysStore(t *testing.T) *keysStore {
	t.Helper()
	url := pgtest.NewDatabase(t)
	db, err := storage.Open(context.Background(), url, storage.Options{MaxConns: 20})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(db.Close)
	conn, err := pgx.Connect(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	ks := &keysStore{db: db, acc: db.Accounts(), conn: conn}
	db.SetStreamListener(func(_ int64, kinds syncapi.Kind, _ []id.RoomID, users []id.UserID) {
		if kinds&syncapi.KindDeviceLists != 0 {
			ks.mu.Lock()
			ks.heard = append(ks.heard, slices.Clone(users))
			ks.mu.Unlock()
		}
	})
	return ks
}

// user creates a user with the given devices.
func (ks *keysStore) user(t *testing.T, user id.UserID, devices ...id.DeviceID) {
	t.Helper()
	ctx := context.Background()
	lp, _, _ := user.Parse()
	if err := ks.acc.CreateUser(ctx, account.User{UserID: user, Localpart: lp}, "", nil, ""); err != nil {
		t.Fatal(err)
	}
	for i, d := range devices {
		sess := account.NewSession{DeviceID: d, AccessTokenHash: []byte(fmt.Sprintf("%s-%s-%d", user, d, i))}
		if err := ks.acc.CreateSession(ctx, user, sess); err != nil {
			t.Fatal(err)
		}
	}
}

// changes counts the device_list_changes rows of user.
func (ks *keysStore) changes(t *testing.T, user id.UserID) int {
	t.Helper()
	var n int
	if err := ks.conn.QueryRow(context.Background(), `SELECT count(*) FROM device_list_changes WHERE user_id = $1`, user).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func (ks *keysStore) count(t *testing.T, table string, user id.UserID) int {
	t.Helper()
	var n int
	if err := ks.conn.QueryRow(context.Background(), `SELECT count(*) FROM `+table+` WHERE user_id = $1`, user).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// Storage does not check signatures (the domain does): these objects are
// only canonical JSON that differ where tests need them to.
func devKeys(user id.UserID, device id.DeviceID, ed string) *account.DeviceKeysUpload {
	keys := fmt.Sprintf(`{"ed25519:%s":"%s"}`, device, ed)
	return &account.DeviceKeysUpload{
		JSON:     json.RawMessage(fmt.Sprintf(`{"device_id":"%s","keys":%s,"user_id":"%s"}`, device, keys, user)),
		Identity: keys,
	}
}

func otk(name, key string) account.OneTimeKeyUpload {
	return account.OneTimeKeyUpload{KeyID: id.KeyID("signed_curve25519:" + name), Algorithm: id.KeyAlgorithmSignedCurve25519,
		JSON: json.RawMessage(fmt.Sprintf(`{"key":"%s"}`, key))}
}

func otks(prefix string, n int) []account.OneTimeKeyUpload {
	var out []account.OneTimeKeyUpload
	for i := range n {
		out = append(out, otk(fmt.Sprintf("%s%03d", prefix, i), fmt.Sprintf("k-%s%03d", prefix, i)))
	}
	return out
}

func TestKeysUploadCountsAndDeviceListChanges(t *testing.T) {
	ctx := context.Background()
	ks := newKeysStore(t)
	alice := id.UserID("@alice:k.example")
	ks.user(t, alice, "DEV1")
	counts, err := ks.acc.UploadKeys(ctx, alice, "DEV1", account.KeyUpload{
		Device:   devKeys(alice, "DEV1", "ed1"),
		OneTime:  otks("a", 3),
		Fallback: []account.OneTimeKeyUpload{otk("fb1", "fallback-1")},
	})
	if err != nil {
		t.Fatal(err)
	}
	if counts[id.KeyAlgorithmSignedCurve25519] != 3 || len(counts) != 1 {
		t.Fatalf("counts %v", counts)
	}
	c, fb, err := ks.acc.OneTimeKeyCounts(ctx, alice, "DEV1")
	if err != nil || c[id.KeyAlgorithmSignedCurve25519] != 3 || !slices.Equal(fb, []id.KeyAlgorithm{id.KeyAlgorithmSignedCurve25519}) {
		t.Fatalf("OneTimeKeyCounts %v %v %v", c, fb, err)
	}
	if n := ks.changes(t, alice); n != 1 {
		t.Fatalf("first device keys recorded %d changes", n)
	}
	ks.mu.Lock()
	heard := slices.Clone(ks.heard)
	ks.mu.Unlock()
	if len(heard) != 1 || !slices.Equal(heard[0], []id.UserID{alice}) {
		t.Fatalf("listener heard %v", heard)
	}

	// The same keys again (and keys-only uploads) change nothing others see.
	if _, err := ks.acc.UploadKeys(ctx, alice, "DEV1", account.KeyUpload{Device: devKeys(alice, "DEV1", "ed1"), OneTime: otks("b", 2)}); err != nil {
		t.Fatal(err)
	}
	if n := ks.changes(t, alice); n != 1 {
		t.Fatalf("identical device keys recorded a change (%d)", n)
	}
	// Other content with the same identity is stored and is a change.
	same := devKeys(alice, "DEV1", "ed1")
	same.JSON = json.RawMessage(fmt.Sprintf(`{"algorithms":["x"],"device_id":"DEV1","keys":%s,"user_id":"%s"}`, same.Identity, alice))
	if _, err := ks.acc.UploadKeys(ctx, alice, "DEV1", account.KeyUpload{Device: same}); err != nil {
		t.Fatal(err)
	}
	if n := ks.changes(t, alice); n != 2 {
		t.Fatalf("changed device keys: %d changes", n)
	}
	got, err := ks.acc.DeviceKeys(ctx, map[id.UserID][]id.DeviceID{alice: nil})
	if err != nil || len(got) != 1 || string(got[0].JSON) != string(same.JSON) {
		t.Fatalf("stored %+v %v", got, err)
	}
	// Another identity is refused, and nothing of that upload is kept.
	_, err = ks.acc.UploadKeys(ctx, alice, "DEV1", account.KeyUpload{Device: devKeys(alice, "DEV1", "ed-other"), OneTime: otks("c", 4)})
	if !errors.Is(err, account.ErrDeviceKeysChanged) {
		t.Fatalf("new identity: %v", err)
	}
	if c, _, _ := ks.acc.OneTimeKeyCounts(ctx, alice, "DEV1"); c[id.KeyAlgorithmSignedCurve25519] != 5 {
		t.Fatalf("refused upload kept keys: %v", c)
	}
	// A device that does not exist.
	if _, err := ks.acc.UploadKeys(ctx, alice, "GONE", account.KeyUpload{OneTime: otks("d", 1)}); !errors.Is(err, account.ErrNotFound) {
		t.Fatalf("unknown device: %v", err)
	}
}

func TestKeysOneTimeKeyIDsAreNotReused(t *testing.T) {
	ctx := context.Background()
	ks := newKeysStore(t)
	bob := id.UserID("@bob:k.example")
	ks.user(t, bob, "B1")
	if _, err := ks.acc.UploadKeys(ctx, bob, "B1", account.KeyUpload{OneTime: []account.OneTimeKeyUpload{otk("AAAA", "one")}}); err != nil {
		t.Fatal(err)
	}
	// A retry with the same key is fine.
	if counts, err := ks.acc.UploadKeys(ctx, bob, "B1", account.KeyUpload{OneTime: []account.OneTimeKeyUpload{otk("AAAA", "one"), otk("AAAB", "two")}}); err != nil || counts[id.KeyAlgorithmSignedCurve25519] != 2 {
		t.Fatalf("retry: %v %v", counts, err)
	}
	// Another key under a used ID is refused, with the rest of its upload.
	_, err := ks.acc.UploadKeys(ctx, bob, "B1", account.KeyUpload{OneTime: []account.OneTimeKeyUpload{otk("AAAC", "three"), otk("AAAA", "not one")}})
	if !errors.Is(err, account.ErrOneTimeKeyReused) {
		t.Fatalf("reused ID: %v", err)
	}
	if n := ks.count(t, "one_time_keys", bob); n != 2 {
		t.Fatalf("%d keys stored", n)
	}
}

func TestKeysClaimOrderAndFallback(t *testing.T) {
	ctx := context.Background()
	ks := newKeysStore(t)
	carol := id.UserID("@carol:k.example")
	ks.user(t, carol, "C1")
	// Two uploads: claims follow upload order.
	if _, err := ks.acc.UploadKeys(ctx, carol, "C1", account.KeyUpload{OneTime: []account.OneTimeKeyUpload{otk("zz", "first")}}); err != nil {
		t.Fatal(err)
	}
	if _, err := ks.acc.UploadKeys(ctx, carol, "C1", account.KeyUpload{
		OneTime:  []account.OneTimeKeyUpload{otk("aa", "second")},
		Fallback: []account.OneTimeKeyUpload{otk("fb", "fallback")},
	}); err != nil {
		t.Fatal(err)
	}
	claim := func() []account.ClaimedKey {
		t.Helper()
		got, err := ks.acc.ClaimKeys(ctx, []account.KeyClaim{
			{UserID: carol, DeviceID: "C1", Algorithm: id.KeyAlgorithmSignedCurve25519},
			{UserID: carol, DeviceID: "NOPE", Algorithm: id.KeyAlgorithmSignedCurve25519},
			{UserID: carol, DeviceID: "C1x", Algorithm: "other"},
		})
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	for _, want := range []string{"signed_curve25519:zz", "signed_curve25519:aa"} {
		got := claim()
		if len(got) != 1 || string(got[0].KeyID) != want || got[0].Fallback {
			t.Fatalf("claimed %+v, want %s", got, want)
		}
	}
	if _, fb, _ := ks.acc.OneTimeKeyCounts(ctx, carol, "C1"); len(fb) != 1 {
		t.Fatalf("fallback used before any claim of it: %v", fb)
	}
	// No one-time key left: the fallback key, again and again.
	for range 3 {
		got := claim()
		if len(got) != 1 || got[0].KeyID != "signed_curve25519:fb" || !got[0].Fallback || string(got[0].JSON) != `{"key":"fallback"}` {
			t.Fatalf("claimed %+v, want the fallback key", got)
		}
	}
	counts, fb, err := ks.acc.OneTimeKeyCounts(ctx, carol, "C1")
	if err != nil || len(counts) != 0 || len(fb) != 0 {
		t.Fatalf("after fallback use: %v %v %v", counts, fb, err)
	}
	// Uploading the same fallback key again keeps it used; a new one is unused.
	if _, err := ks.acc.UploadKeys(ctx, carol, "C1", account.KeyUpload{Fallback: []account.OneTimeKeyUpload{otk("fb", "fallback")}}); err != nil {
		t.Fatal(err)
	}
	if _, fb, _ := ks.acc.OneTimeKeyCounts(ctx, carol, "C1"); len(fb) != 0 {
		t.Fatalf("re-uploading the used fallback key made it unused: %v", fb)
	}
	if _, err := ks.acc.UploadKeys(ctx, carol, "C1", account.KeyUpload{Fallback: []account.OneTimeKeyUpload{otk("fb2", "fallback 2")}}); err != nil {
		t.Fatal(err)
	}
	if _, fb, _ := ks.acc.OneTimeKeyCounts(ctx, carol, "C1"); len(fb) != 1 {
		t.Fatalf("a new fallback key is not unused: %v", fb)
	}
	if got := claim(); len(got) != 1 || got[0].KeyID != "signed_curve25519:fb2" {
		t.Fatalf("claimed %+v, want the new fallback key", got)
	}
	if n := ks.count(t, "fallback_keys", carol); n != 1 {
		t.Fatalf("%d fallback keys stored, want one per algorithm", n)
	}
}

// Many claims race over several devices at once, each claiming from every
// device in one call: no one-time key is handed out twice, none is lost,
// and those that find none left get the fallback key.
func TestKeysConcurrentClaimsHandEachKeyOutOnce(t *testing.T) {
	ctx := context.Background()
	ks := newKeysStore(t)
	dave := id.UserID("@dave:k.example")
	devices := []id.DeviceID{"D1", "D2", "D3"}
	ks.user(t, dave, devices...)
	const perDevice = 10
	for _, d := range devices {
		if _, err := ks.acc.UploadKeys(ctx, dave, d, account.KeyUpload{
			OneTime:  otks(string(d), perDevice),
			Fallback: []account.OneTimeKeyUpload{otk("fb", "fallback-"+string(d))},
		}); err != nil {
			t.Fatal(err)
		}
	}
	const claimers = 16
	results := make([][]account.ClaimedKey, claimers)
	var wg sync.WaitGroup
	for i := range claimers {
		wg.Go(func() {
			var claims []account.KeyClaim
			for _, d := range devices {
				claims = append(claims, account.KeyClaim{UserID: dave, DeviceID: d, Algorithm: id.KeyAlgorithmSignedCurve25519})
			}
			got, err := ks.acc.ClaimKeys(ctx, claims)
			if err != nil {
				t.Error(err)
			}
			results[i] = got
		})
	}
	wg.Wait()
	seen := map[string]int{}
	fallbacks := 0
	for _, got := range results {
		if len(got) != len(devices) {
			t.Fatalf("a claim got %d keys for %d devices", len(got), len(devices))
		}
		for _, k := range got {
			if k.Fallback {
				fallbacks++
				continue
			}
			seen[string(k.DeviceID)+"/"+string(k.KeyID)]++
		}
	}
	for k, n := range seen {
		if n != 1 {
			t.Errorf("key %s handed out %d times", k, n)
		}
	}
	if len(seen) != perDevice*len(devices) || fallbacks != (claimers-perDevice)*len(devices) {
		t.Fatalf("%d one-time keys and %d fallback keys handed out", len(seen), fallbacks)
	}
	if n := ks.count(t, "one_time_keys", dave); n != 0 {
		t.Fatalf("%d one-time keys left", n)
	}
}

func TestKeysDeletingDevicesDeletesTheirKeys(t *testing.T) {
	ctx := context.Background()
	ks := newKeysStore(t)
	erin := id.UserID("@erin:k.example")
	ks.user(t, erin, "E1", "E2", "E3", "E4")
	for _, d := range []id.DeviceID{"E1", "E2", "E4"} {
		if _, err := ks.acc.UploadKeys(ctx, erin, d, account.KeyUpload{Device: devKeys(erin, d, "ed-"+string(d)), OneTime: otks("x", 2),
			Fallback: []account.OneTimeKeyUpload{otk("fb", "f")}}); err != nil {
			t.Fatal(err)
		}
	}
	before := ks.changes(t, erin)
	// E3 has no keys: deleting it changes nothing others see.
	if err := ks.acc.DeleteDevicesWithKeys(ctx, erin, []id.DeviceID{"E3"}); err != nil {
		t.Fatal(err)
	}
	if n := ks.changes(t, erin); n != before {
		t.Fatalf("deleting a device without keys recorded a change")
	}
	if err := ks.acc.DeleteDevicesWithKeys(ctx, erin, []id.DeviceID{"E1", "UNKNOWN"}); err != nil {
		t.Fatal(err)
	}
	if n := ks.changes(t, erin); n != before+1 {
		t.Fatalf("deleting a device with keys: %d changes, want %d", n, before+1)
	}
	if _, err := ks.acc.Device(ctx, erin, "E1"); !errors.Is(err, account.ErrNotFound) {
		t.Fatalf("device still there: %v", err)
	}
	got, err := ks.acc.DeviceKeys(ctx, map[id.UserID][]id.DeviceID{erin: nil})
	if err != nil || len(got) != 2 || got[0].DeviceID != "E2" || got[1].DeviceID != "E4" {
		t.Fatalf("device keys left: %+v %v", got, err)
	}
	if n := ks.count(t, "one_time_keys", erin); n != 4 {
		t.Fatalf("%d one-time keys left, want E2's and E4's", n)
	}
	// Deleting devices by another path (log out everywhere) still takes the
	// keys with them (foreign keys), whoever forgets to.
	if err := ks.acc.DeleteAllDevices(ctx, erin); err != nil {
		t.Fatal(err)
	}
	for _, table := range []string{"device_keys", "one_time_keys", "fallback_keys"} {
		if n := ks.count(t, table, erin); n != 0 {
			t.Errorf("%d rows left in %s", n, table)
		}
	}
}

func xsKey(user id.UserID, usage id.CrossSigningUsage, pub string) account.CrossSigningKey {
	return account.CrossSigningKey{Usage: usage, PublicKey: pub,
		JSON: json.RawMessage(fmt.Sprintf(`{"keys":{"ed25519:%s":"%s"},"usage":["%s"],"user_id":"%s"}`, pub, pub, usage, user))}
}

func TestKeysCrossSigningAndSignatures(t *testing.T) {
	ctx := context.Background()
	ks := newKeysStore(t)
	frank, gina := id.UserID("@frank:k.example"), id.UserID("@gina:k.example")
	ks.user(t, frank, "F1")
	ks.user(t, gina, "G1")
	if _, err := ks.acc.UploadKeys(ctx, frank, "F1", account.KeyUpload{Device: devKeys(frank, "F1", "edF1")}); err != nil {
		t.Fatal(err)
	}
	// The master key must be the expected one ("" for none).
	err := ks.acc.UploadCrossSigningKeys(ctx, frank, account.CrossSigningUpdate{Keys: []account.CrossSigningKey{xsKey(frank, "master", "M1")}, ExpectMaster: "M0"})
	if !errors.Is(err, account.ErrCrossSigningChanged) {
		t.Fatalf("wrong expectation: %v", err)
	}
	before := ks.changes(t, frank)
	if err := ks.acc.UploadCrossSigningKeys(ctx, frank, account.CrossSigningUpdate{Keys: []account.CrossSigningKey{
		xsKey(frank, "master", "M1"), xsKey(frank, "self_signing", "S1"), xsKey(frank, "user_signing", "U1")}}); err != nil {
		t.Fatal(err)
	}
	if n := ks.changes(t, frank); n != before+1 {
		t.Fatalf("cross-signing upload: %d changes", n-before)
	}
	if err := ks.acc.UploadCrossSigningKeys(ctx, gina, account.CrossSigningUpdate{Keys: []account.CrossSigningKey{xsKey(gina, "master", "GM")}}); err != nil {
		t.Fatal(err)
	}
	xs, err := ks.acc.CrossSigningKeys(ctx, []id.UserID{frank, gina})
	if err != nil || len(xs) != 4 {
		t.Fatalf("cross-signing keys %+v %v", xs, err)
	}
	deviceJSON := devKeys(frank, "F1", "edF1").JSON
	sigs := []account.KeySignature{
		{TargetUser: frank, TargetDevice: "F1", Expect: deviceJSON, Signer: frank, SignerKeyID: "ed25519:S1", Signature: "sig-dev"},
		{TargetUser: frank, Expect: xsKey(frank, "master", "M1").JSON, Signer: frank, SignerKeyID: "ed25519:F1", Signature: "sig-master"},
		{TargetUser: gina, Expect: xsKey(gina, "master", "GM").JSON, Signer: frank, SignerKeyID: "ed25519:U1", Signature: "sig-gina"},
		{TargetUser: gina, Expect: xsKey(gina, "master", "OLD").JSON, Signer: frank, SignerKeyID: "ed25519:U1", Signature: "stale"},
	}
	frankBefore, ginaBefore := ks.changes(t, frank), ks.changes(t, gina)
	added, err := ks.acc.AddSignatures(ctx, sigs)
	if err != nil || !slices.Equal(added, []bool{true, true, true, false}) {
		t.Fatalf("added %v %v", added, err)
	}
	if ks.changes(t, frank) != frankBefore+1 || ks.changes(t, gina) != ginaBefore+1 {
		t.Fatalf("signatures did not record one change per target user")
	}
	dk, _ := ks.acc.DeviceKeys(ctx, map[id.UserID][]id.DeviceID{frank: {"F1"}})
	if len(dk) != 1 || dk[0].Extra[frank]["ed25519:S1"] != "sig-dev" {
		t.Fatalf("device signature not stored: %+v", dk)
	}
	xs, _ = ks.acc.CrossSigningKeys(ctx, []id.UserID{gina})
	if len(xs) != 1 || xs[0].Extra[frank]["ed25519:U1"] != "sig-gina" {
		t.Fatalf("gina's master: %+v", xs)
	}
	// Re-uploading the same master keeps its signatures; a new self-signing
	// key drops its predecessor's signatures on devices.
	if err := ks.acc.UploadCrossSigningKeys(ctx, frank, account.CrossSigningUpdate{ExpectMaster: "M1", Keys: []account.CrossSigningKey{
		xsKey(frank, "master", "M1"), xsKey(frank, "self_signing", "S2")}}); err != nil {
		t.Fatal(err)
	}
	dk, _ = ks.acc.DeviceKeys(ctx, map[id.UserID][]id.DeviceID{frank: {"F1"}})
	if len(dk[0].Extra[frank]) != 0 {
		t.Fatalf("old self-signing key's signature kept: %+v", dk[0].Extra)
	}
	xs, _ = ks.acc.CrossSigningKeys(ctx, []id.UserID{frank})
	byUsage := map[id.CrossSigningUsage]account.StoredCrossSigningKey{}
	for _, k := range xs {
		byUsage[k.Usage] = k
	}
	if byUsage["master"].Extra[frank]["ed25519:F1"] != "sig-master" || byUsage["self_signing"].PublicKey != "S2" || byUsage["user_signing"].PublicKey != "U1" {
		t.Fatalf("after the self-signing key change: %+v", byUsage)
	}
	// A new master with Delete: the stored keys it did not replace go, and
	// the new master starts without signatures.
	if err := ks.acc.UploadCrossSigningKeys(ctx, frank, account.CrossSigningUpdate{ExpectMaster: "M1",
		Keys: []account.CrossSigningKey{xsKey(frank, "master", "M2")}, Delete: []id.CrossSigningUsage{"self_signing", "user_signing"}}); err != nil {
		t.Fatal(err)
	}
	xs, _ = ks.acc.CrossSigningKeys(ctx, []id.UserID{frank})
	if len(xs) != 1 || xs[0].PublicKey != "M2" || len(xs[0].Extra) != 0 {
		t.Fatalf("after the master change: %+v", xs)
	}
}

// Signatures added to device keys cover everything but the signatures:
// they survive a re-upload that only changes the device's own signature,
// not one that changes anything else.
func TestKeysAddedSignaturesFollowTheSignedContent(t *testing.T) {
	ctx := context.Background()
	ks := newKeysStore(t)
	hal := id.UserID("@hal:k.example")
	ks.user(t, hal, "H1")
	withSig := func(sig, algs string) *account.DeviceKeysUpload {
		dk := devKeys(hal, "H1", "edH1")
		dk.JSON = json.RawMessage(fmt.Sprintf(`{"algorithms":[%q],"device_id":"H1","keys":%s,"signatures":{"%s":{"ed25519:H1":%q}},"user_id":"%s"}`,
			algs, dk.Identity, hal, sig, hal))
		return dk
	}
	extraOf := func() account.Signatures {
		t.Helper()
		got, err := ks.acc.DeviceKeys(ctx, map[id.UserID][]id.DeviceID{hal: {"H1"}})
		if err != nil || len(got) != 1 {
			t.Fatalf("device keys %+v %v", got, err)
		}
		return got[0].Extra
	}
	first := withSig("sig1", "a")
	if _, err := ks.acc.UploadKeys(ctx, hal, "H1", account.KeyUpload{Device: first}); err != nil {
		t.Fatal(err)
	}
	added, err := ks.acc.AddSignatures(ctx, []account.KeySignature{{TargetUser: hal, TargetDevice: "H1", Expect: first.JSON,
		Signer: hal, SignerKeyID: "ed25519:SSK", Signature: "ssk-sig"}})
	if err != nil || !added[0] {
		t.Fatalf("added %v %v", added, err)
	}
	if _, err := ks.acc.UploadKeys(ctx, hal, "H1", account.KeyUpload{Device: withSig("sig2", "a")}); err != nil {
		t.Fatal(err)
	}
	if extraOf()[hal]["ed25519:SSK"] != "ssk-sig" {
		t.Fatalf("a new self-signature dropped the added one: %v", extraOf())
	}
	if _, err := ks.acc.UploadKeys(ctx, hal, "H1", account.KeyUpload{Device: withSig("sig3", "b")}); err != nil {
		t.Fatal(err)
	}
	if len(extraOf()) != 0 {
		t.Fatalf("changed content kept a signature over the old one: %v", extraOf())
	}
}
