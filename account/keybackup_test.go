package account_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"

	"github.com/weftchat/weft/account"
)

func TestBetterBackupKey(t *testing.T) {
	k := func(verified bool, first, fwd int64) account.BackupKey {
		return account.BackupKey{IsVerified: verified, FirstMessageIndex: first, ForwardedCount: fwd}
	}
	for _, tc := range []struct {
		name              string
		candidate, stored account.BackupKey
		replace           bool
	}{
		{"verified beats unverified", k(true, 0, 0), k(false, 0, 0), true},
		{"verified beats unverified despite a higher index", k(true, 9, 0), k(false, 0, 0), true},
		{"verified beats unverified despite more forwards", k(true, 0, 9), k(false, 0, 0), true},
		{"unverified never beats verified", k(false, 0, 0), k(true, 9, 9), false},
		{"lower first index wins", k(false, 1, 0), k(false, 2, 0), true},
		{"higher first index loses", k(false, 3, 0), k(false, 2, 0), false},
		{"lower first index wins despite more forwards", k(true, 1, 9), k(true, 2, 0), true},
		{"higher first index loses despite fewer forwards", k(true, 3, 0), k(true, 2, 9), false},
		{"same index: fewer forwards win", k(false, 2, 0), k(false, 2, 1), true},
		{"same index: more forwards lose", k(false, 2, 2), k(false, 2, 1), false},
		{"a tie keeps the stored key", k(true, 2, 1), k(true, 2, 1), false},
		{"an unverified tie keeps the stored key", k(false, 0, 0), k(false, 0, 0), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := account.BetterBackupKey(tc.candidate, tc.stored); got != tc.replace {
				t.Fatalf("BetterBackupKey(%+v, %+v) = %v, want %v", tc.candidate, tc.stored, got, tc.replace)
			}
		})
	}
}

func wantBackupErr(t *testing.T, err error, errcode string) mautrix.RespError {
	t.Helper()
	var re mautrix.RespError
	if !errors.As(err, &re) || re.ErrCode != errcode {
		t.Fatalf("got %v, want %s", err, errcode)
	}
	return re
}

func backupUpload(room id.RoomID, session id.SessionID, k account.BackupKey) account.BackupKeyUpload {
	if k.SessionData == nil {
		k.SessionData = json.RawMessage(`{"ciphertext":"c"}`)
	}
	return account.BackupKeyUpload{room: {session: k}}
}

func TestKeyBackupServiceErrors(t *testing.T) {
	ctx := context.Background()
	svc, _, _ := newService(t)
	alice := backupUser(t, svc, "alice")
	auth := json.RawMessage(`{"public_key":"pk"}`)
	const alg = id.KeyBackupAlgorithmMegolmBackupV1

	// No backup yet.
	wantBackupErr(t, backupErrOf(svc.KeyBackup(ctx, alice, "")), "M_NOT_FOUND")
	wantBackupErr(t, backupErrOf(svc.PutBackupKeys(ctx, alice, "1", backupUpload("!r:x", "s", account.BackupKey{}))), "M_NOT_FOUND")

	// Missing or malformed fields.
	wantBackupErr(t, backupErrOf(svc.CreateKeyBackup(ctx, alice, "", auth)), "M_BAD_JSON")
	wantBackupErr(t, backupErrOf(svc.CreateKeyBackup(ctx, alice, alg, nil)), "M_BAD_JSON")
	wantBackupErr(t, backupErrOf(svc.CreateKeyBackup(ctx, alice, alg, json.RawMessage(`"pk"`))), "M_BAD_JSON")
	wantBackupErr(t, backupErrOf(svc.CreateKeyBackup(ctx, alice, alg, json.RawMessage(`{"pk"`))), "M_BAD_JSON")

	v1, err := svc.CreateKeyBackup(ctx, alice, alg, auth)
	if err != nil || v1 != "1" {
		t.Fatalf("first version %q %v", v1, err)
	}
	v2, err := svc.CreateKeyBackup(ctx, alice, alg, auth)
	if err != nil || v2 != "2" {
		t.Fatalf("second version %q %v", v2, err)
	}

	// Only the canonical spelling names a version.
	for _, v := range []id.KeyBackupVersion{"01", "+1", "1.0", "x", "0", "-1", "99"} {
		wantBackupErr(t, backupErrOf(svc.KeyBackup(ctx, alice, v)), "M_NOT_FOUND")
		wantBackupErr(t, backupErrOf(svc.BackupKeys(ctx, alice, v, "", "")), "M_NOT_FOUND")
		wantBackupErr(t, svc.DeleteKeyBackup(ctx, alice, v), "M_NOT_FOUND")
		// Writing anywhere but the current version tells the client which
		// is current.
		re := wantBackupErr(t, backupErrOf(svc.PutBackupKeys(ctx, alice, v, backupUpload("!r:x", "s", account.BackupKey{}))), "M_WRONG_ROOM_KEYS_VERSION")
		if re.StatusCode != 403 || re.ExtraData["current_version"] != "2" {
			t.Fatalf("wrong version %q: %+v", v, re)
		}
	}
	re := wantBackupErr(t, backupErrOf(svc.PutBackupKeys(ctx, alice, v1, backupUpload("!r:x", "s", account.BackupKey{}))), "M_WRONG_ROOM_KEYS_VERSION")
	if re.ExtraData["current_version"] != "2" {
		t.Fatalf("old version: %+v", re)
	}

	// Updating: the body's version must be the path's; the algorithm the
	// stored one.
	wantBackupErr(t, svc.UpdateKeyBackup(ctx, alice, v2, v1, alg, auth), "M_INVALID_PARAM")
	wantBackupErr(t, svc.UpdateKeyBackup(ctx, alice, v2, "", "org.example.other", auth), "M_INVALID_PARAM")
	wantBackupErr(t, svc.UpdateKeyBackup(ctx, alice, "7", "", alg, auth), "M_NOT_FOUND")
	if err := svc.UpdateKeyBackup(ctx, alice, v2, v2, alg, json.RawMessage(`{"public_key":"pk2"}`)); err != nil {
		t.Fatal(err)
	}
	if got, _ := svc.KeyBackup(ctx, alice, ""); string(got.AuthData) != `{"public_key":"pk2"}` {
		t.Fatalf("auth_data after update: %s", got.AuthData)
	}

	// Bad keys.
	for name, up := range map[string]account.BackupKeyUpload{
		"room ID without !":  backupUpload("r:x", "s", account.BackupKey{}),
		"empty session ID":   backupUpload("!r:x", "", account.BackupKey{}),
		"negative index":     backupUpload("!r:x", "s", account.BackupKey{FirstMessageIndex: -1}),
		"negative forwards":  backupUpload("!r:x", "s", account.BackupKey{ForwardedCount: -1}),
		"non-object session": backupUpload("!r:x", "s", account.BackupKey{SessionData: json.RawMessage(`[]`)}),
		"invalid JSON":       backupUpload("!r:x", "s", account.BackupKey{SessionData: json.RawMessage(`{"a":`)}),
		"long room ID":       backupUpload(id.RoomID("!"+strings.Repeat("r", 255)), "s", account.BackupKey{}),
	} {
		err := backupErrOf(svc.PutBackupKeys(ctx, alice, v2, up))
		var re mautrix.RespError
		if !errors.As(err, &re) || (re.ErrCode != "M_INVALID_PARAM" && re.ErrCode != "M_BAD_JSON") {
			t.Fatalf("%s: %v", name, err)
		}
	}

	// A room without keys is empty; a session without a key is not found.
	if keys, err := svc.BackupKeys(ctx, alice, v2, "!none:x", ""); err != nil || len(keys) != 0 {
		t.Fatalf("room without keys: %v %v", keys, err)
	}
	wantBackupErr(t, backupErrOf(svc.BackupKeys(ctx, alice, v2, "!none:x", "s")), "M_NOT_FOUND")

	// Deleting twice succeeds; afterwards the version is gone and the one
	// below is current.
	for range 2 {
		if err := svc.DeleteKeyBackup(ctx, alice, v2); err != nil {
			t.Fatal(err)
		}
	}
	wantBackupErr(t, backupErrOf(svc.KeyBackup(ctx, alice, v2)), "M_NOT_FOUND")
	if cur, err := svc.KeyBackup(ctx, alice, ""); err != nil || cur.Version != v1 {
		t.Fatalf("current after deleting %s: %+v %v", v2, cur, err)
	}
}

// The etag and count follow the keys: an upload that changes nothing
// leaves both alone, a better key moves the etag but not the count.
func TestKeyBackupETagAndCount(t *testing.T) {
	ctx := context.Background()
	svc, _, _ := newService(t)
	alice := backupUser(t, svc, "alice")
	v, err := svc.CreateKeyBackup(ctx, alice, id.KeyBackupAlgorithmMegolmBackupV1, json.RawMessage(`{}`))
	if err != nil {
		t.Fatal(err)
	}
	info, _ := svc.KeyBackup(ctx, alice, v)
	etags := map[string]bool{info.ETag: true}
	if info.Count != 0 {
		t.Fatalf("new version count %d", info.Count)
	}
	step := func(name string, up account.BackupKeyUpload, count int, changed bool) {
		t.Helper()
		res, err := svc.PutBackupKeys(ctx, alice, v, up)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if res.Count != count || etags[res.ETag] == changed {
			t.Fatalf("%s: count %d etag %q, want count %d, etag changed %v (seen %v)", name, res.Count, res.ETag, count, changed, etags)
		}
		etags[res.ETag] = true
		info, _ := svc.KeyBackup(ctx, alice, v)
		if info.Count != res.Count || info.ETag != res.ETag {
			t.Fatalf("%s: version info %d %q, the upload answered %d %q", name, info.Count, info.ETag, res.Count, res.ETag)
		}
	}
	step("new key", backupUpload("!r:x", "s", account.BackupKey{FirstMessageIndex: 4}), 1, true)
	step("same key again", backupUpload("!r:x", "s", account.BackupKey{FirstMessageIndex: 4}), 1, false)
	step("worse key", backupUpload("!r:x", "s", account.BackupKey{FirstMessageIndex: 5}), 1, false)
	step("better key", backupUpload("!r:x", "s", account.BackupKey{FirstMessageIndex: 3}), 1, true)
	step("verified key", backupUpload("!r:x", "s", account.BackupKey{FirstMessageIndex: 8, IsVerified: true}), 1, true)
	step("second session", backupUpload("!r:x", "t", account.BackupKey{}), 2, true)

	keys, err := svc.BackupKeys(ctx, alice, v, "!r:x", "s")
	if err != nil || !keys["!r:x"]["s"].IsVerified || keys["!r:x"]["s"].FirstMessageIndex != 8 {
		t.Fatalf("kept %+v %v", keys, err)
	}
	res, err := svc.DeleteBackupKeys(ctx, alice, v, "!r:x", "t")
	if err != nil || res.Count != 1 || etags[res.ETag] {
		t.Fatalf("delete: %+v %v", res, err)
	}
}

// Backups are per user: another user can neither see nor touch them.
func TestKeyBackupsArePerUser(t *testing.T) {
	ctx := context.Background()
	svc, _, _ := newService(t)
	alice := backupUser(t, svc, "alice")
	bob := backupUser(t, svc, "bob")
	v, err := svc.CreateKeyBackup(ctx, alice, id.KeyBackupAlgorithmMegolmBackupV1, json.RawMessage(`{}`))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := svc.PutBackupKeys(ctx, alice, v, backupUpload("!r:x", "s", account.BackupKey{})); err != nil {
		t.Fatal(err)
	}
	wantBackupErr(t, backupErrOf(svc.KeyBackup(ctx, bob, "")), "M_NOT_FOUND")
	wantBackupErr(t, backupErrOf(svc.KeyBackup(ctx, bob, v)), "M_NOT_FOUND")
	wantBackupErr(t, backupErrOf(svc.BackupKeys(ctx, bob, v, "", "")), "M_NOT_FOUND")
	wantBackupErr(t, backupErrOf(svc.PutBackupKeys(ctx, bob, v, backupUpload("!r:x", "s", account.BackupKey{}))), "M_NOT_FOUND")
	wantBackupErr(t, backupErrOf(svc.DeleteBackupKeys(ctx, bob, v, "", "")), "M_NOT_FOUND")
	wantBackupErr(t, svc.DeleteKeyBackup(ctx, bob, v), "M_NOT_FOUND")
	if keys, err := svc.BackupKeys(ctx, alice, v, "", ""); err != nil || len(keys["!r:x"]) != 1 {
		t.Fatalf("alice's keys after bob's attempts: %v %v", keys, err)
	}
}

func backupErrOf[T any](_ T, err error) error { return err }

func backupUser(t *testing.T, svc *account.Service, localpart string) id.UserID {
	t.Helper()
	user, err := svc.CreateUserByOperator(context.Background(), localpart, "password1", false)
	if err != nil {
		t.Fatalf("creating %s: %v", localpart, err)
	}
	return user
}
