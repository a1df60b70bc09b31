package storage_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"testing"

	"maunium.net/go/mautrix/id"

	"github.com/weftchat/weft/account"
	"github.com/weftchat/weft/storage"
	"github.com/weftchat/weft/storage/pgtest"
)

// backupStore is a fresh database with users @a:x and @b:x.
func backupStore(t *testing.T) *storage.Accounts {
	t.Helper()
	ctx := context.Background()
	a := pgtest.NewDB(t).Accounts()
	for _, lp := range []string{"a", "b"} {
		if err := a.CreateUser(ctx, account.User{UserID: id.UserID("@" + lp + ":x"), Localpart: lp}, "", nil, ""); err != nil {
			t.Fatal(err)
		}
	}
	return a
}

func backupKey(room, session string, first, fwd int64, verified bool, data string) account.BackupSessionKey {
	return account.BackupSessionKey{
		RoomID: id.RoomID(room), SessionID: id.SessionID(session),
		BackupKey: account.BackupKey{FirstMessageIndex: first, ForwardedCount: fwd, IsVerified: verified, SessionData: json.RawMessage(data)},
	}
}

// lowerFirstWins replaces on a lower first_message_index only: enough to see
// that the store asks, with the stored key, and obeys.
func lowerFirstWins(stored, candidate account.BackupKey) bool {
	return candidate.FirstMessageIndex < stored.FirstMessageIndex
}

func TestKeyBackupVersionsAreNumberedPerUserAndNeverReused(t *testing.T) {
	ctx := context.Background()
	a := backupStore(t)
	for want := int64(1); want <= 2; want++ {
		v, err := a.CreateKeyBackupVersion(ctx, "@a:x", "alg", json.RawMessage(`{"n":1}`))
		if err != nil || v != want {
			t.Fatalf("version %d %v, want %d", v, err, want)
		}
	}
	if v, err := a.CreateKeyBackupVersion(ctx, "@b:x", "alg", json.RawMessage(`{}`)); err != nil || v != 1 {
		t.Fatalf("another user's first version is %d %v", v, err)
	}
	if err := a.DeleteKeyBackupVersion(ctx, "@a:x", 2); err != nil {
		t.Fatal(err)
	}
	// After deleting the highest, the one below is current again...
	cur, err := a.KeyBackupVersion(ctx, "@a:x", 0)
	if err != nil || cur.Version != 1 {
		t.Fatalf("current after delete: %+v %v", cur, err)
	}
	// ...but the deleted number is not handed out again.
	if v, err := a.CreateKeyBackupVersion(ctx, "@a:x", "alg", json.RawMessage(`{}`)); err != nil || v != 3 {
		t.Fatalf("version after a deleted 2: %d %v", v, err)
	}
	if _, err := a.KeyBackupVersion(ctx, "@a:x", 2); !errors.Is(err, account.ErrNotFound) {
		t.Fatalf("deleted version readable: %v", err)
	}
	if err := a.DeleteKeyBackupVersion(ctx, "@a:x", 2); err != nil {
		t.Fatalf("deleting a deleted version again: %v", err)
	}
	if err := a.DeleteKeyBackupVersion(ctx, "@a:x", 9); !errors.Is(err, account.ErrNotFound) {
		t.Fatalf("deleting a version never created: %v", err)
	}
	if err := a.DeleteKeyBackupVersion(ctx, "@a:x", 1); err != nil {
		t.Fatal(err)
	}
	if err := a.DeleteKeyBackupVersion(ctx, "@a:x", 3); err != nil {
		t.Fatal(err)
	}
	if _, err := a.KeyBackupVersion(ctx, "@a:x", 0); !errors.Is(err, account.ErrNotFound) {
		t.Fatalf("current with every version deleted: %v", err)
	}
}

func TestKeyBackupAuthDataIsStoredAsSent(t *testing.T) {
	ctx := context.Background()
	a := backupStore(t)
	// Key order, spacing and big numbers survive (json, not jsonb).
	raw := `{"z": 1, "a": [12345678901234567890, "x"],  "public_key":"abc"}`
	v, err := a.CreateKeyBackupVersion(ctx, "@a:x", "alg", json.RawMessage(raw))
	if err != nil {
		t.Fatal(err)
	}
	got, err := a.KeyBackupVersion(ctx, "@a:x", v)
	if err != nil || string(got.AuthData) != raw || got.Algorithm != "alg" || got.Count != 0 {
		t.Fatalf("got %+v (%s) %v", got, got.AuthData, err)
	}
	if err := a.UpdateKeyBackupAuthData(ctx, "@a:x", v, "other", json.RawMessage(`{}`)); !errors.Is(err, account.ErrNotFound) {
		t.Fatalf("update with another algorithm: %v", err)
	}
	if err := a.UpdateKeyBackupAuthData(ctx, "@a:x", v, "alg", json.RawMessage(`{"new":true}`)); err != nil {
		t.Fatal(err)
	}
	if got, _ := a.KeyBackupVersion(ctx, "@a:x", v); string(got.AuthData) != `{"new":true}` {
		t.Fatalf("auth_data after update: %s", got.AuthData)
	}
	if _, err := a.KeyBackupVersion(ctx, "@b:x", v); !errors.Is(err, account.ErrNotFound) {
		t.Fatalf("another user reads the version: %v", err)
	}
}

func TestBackupKeysOnlyGoToTheCurrentVersion(t *testing.T) {
	ctx := context.Background()
	a := backupStore(t)
	k := []account.BackupSessionKey{backupKey("!r:x", "s", 0, 0, false, `{}`)}
	if _, err := a.PutBackupKeys(ctx, "@a:x", 1, k, lowerFirstWins); !errors.Is(err, account.ErrNotFound) {
		t.Fatalf("put without any backup: %v", err)
	}
	for range 2 {
		if _, err := a.CreateKeyBackupVersion(ctx, "@a:x", "alg", json.RawMessage(`{}`)); err != nil {
			t.Fatal(err)
		}
	}
	var wrong account.BackupVersionNotCurrent
	for _, v := range []int64{0, 1, 3} {
		if _, err := a.PutBackupKeys(ctx, "@a:x", v, k, lowerFirstWins); !errors.As(err, &wrong) || wrong.Current != 2 {
			t.Fatalf("put to version %d: %v", v, err)
		}
	}
	if st, err := a.PutBackupKeys(ctx, "@a:x", 2, k, lowerFirstWins); err != nil || st.Count != 1 {
		t.Fatalf("put to the current version: %+v %v", st, err)
	}
}

func TestBackupKeysReplaceOnlyWhenTheRuleSays(t *testing.T) {
	ctx := context.Background()
	a := backupStore(t)
	v, _ := a.CreateKeyBackupVersion(ctx, "@a:x", "alg", json.RawMessage(`{}`))
	st, err := a.PutBackupKeys(ctx, "@a:x", v, []account.BackupSessionKey{
		backupKey("!r:x", "s1", 5, 0, false, `{"d":"s1 at 5"}`),
		backupKey("!r:x", "s2", 5, 0, false, `{"d":"s2 at 5"}`),
		backupKey("!q:x", "s1", 5, 0, false, `{"d":"q s1 at 5"}`),
	}, lowerFirstWins)
	if err != nil || st.Count != 3 {
		t.Fatalf("first put: %+v %v", st, err)
	}
	etag := st.ETag

	// Nothing better: nothing written, the etag stays.
	var asked []account.BackupKey
	st, err = a.PutBackupKeys(ctx, "@a:x", v, []account.BackupSessionKey{backupKey("!r:x", "s1", 7, 0, true, `{"d":"worse"}`)},
		func(stored, candidate account.BackupKey) bool {
			asked = append(asked, stored)
			return false
		})
	if err != nil || st.Count != 3 || st.ETag != etag {
		t.Fatalf("rejected put: %+v %v (etag was %d)", st, err, etag)
	}
	if len(asked) != 1 || asked[0].FirstMessageIndex != 5 || asked[0].IsVerified {
		t.Fatalf("replace was asked with %+v, want the stored s1", asked)
	}

	// One better, one worse, one new, and a slot named twice in one call
	// (the better of the two is kept).
	st, err = a.PutBackupKeys(ctx, "@a:x", v, []account.BackupSessionKey{
		backupKey("!r:x", "s1", 2, 0, false, `{"d":"s1 at 2"}`),
		backupKey("!r:x", "s2", 9, 0, false, `{"d":"s2 at 9"}`),
		backupKey("!r:x", "s3", 4, 0, false, `{"d":"s3 at 4"}`),
		backupKey("!r:x", "s3", 1, 0, false, `{"d":"s3 at 1"}`),
		backupKey("!r:x", "s3", 3, 0, false, `{"d":"s3 at 3"}`),
	}, lowerFirstWins)
	if err != nil || st.Count != 4 || st.ETag == etag {
		t.Fatalf("mixed put: %+v %v", st, err)
	}
	got, err := a.BackupKeys(ctx, "@a:x", v, "!r:x", "")
	if err != nil {
		t.Fatal(err)
	}
	want := map[id.SessionID]string{"s1": `{"d":"s1 at 2"}`, "s2": `{"d":"s2 at 5"}`, "s3": `{"d":"s3 at 1"}`}
	if len(got) != len(want) {
		t.Fatalf("room keys %+v", got)
	}
	for _, k := range got {
		if k.RoomID != "!r:x" || string(k.SessionData) != want[k.SessionID] {
			t.Fatalf("key %s: %s, want %s", k.SessionID, k.SessionData, want[k.SessionID])
		}
	}
}

func TestBackupKeysReadAndDeleteByScope(t *testing.T) {
	ctx := context.Background()
	a := backupStore(t)
	v, _ := a.CreateKeyBackupVersion(ctx, "@a:x", "alg", json.RawMessage(`{}`))
	var keys []account.BackupSessionKey
	for _, room := range []string{"!r:x", "!q:x"} {
		for _, s := range []string{"s1", "s2", "s3"} {
			keys = append(keys, backupKey(room, s, 0, 0, false, fmt.Sprintf(`{"k":%q}`, room+s)))
		}
	}
	st, err := a.PutBackupKeys(ctx, "@a:x", v, keys, lowerFirstWins)
	if err != nil || st.Count != 6 {
		t.Fatalf("%+v %v", st, err)
	}
	count := func(room id.RoomID, session id.SessionID) int {
		t.Helper()
		ks, err := a.BackupKeys(ctx, "@a:x", v, room, session)
		if err != nil {
			t.Fatal(err)
		}
		return len(ks)
	}
	if n, r, s := count("", ""), count("!r:x", ""), count("!r:x", "s2"); n != 6 || r != 3 || s != 1 {
		t.Fatalf("all %d, room %d, session %d", n, r, s)
	}
	if n := count("!nothing:x", ""); n != 0 {
		t.Fatalf("unknown room has %d keys", n)
	}
	// Another user sees none of it.
	if _, err := a.BackupKeys(ctx, "@b:x", v, "", ""); !errors.Is(err, account.ErrNotFound) {
		t.Fatalf("another user's read: %v", err)
	}

	etag := st.ETag
	st, err = a.DeleteBackupKeys(ctx, "@a:x", v, "!r:x", "s2")
	if err != nil || st.Count != 5 || st.ETag == etag {
		t.Fatalf("delete one: %+v %v", st, err)
	}
	etag = st.ETag
	st, err = a.DeleteBackupKeys(ctx, "@a:x", v, "!r:x", "s2")
	if err != nil || st.Count != 5 || st.ETag != etag {
		t.Fatalf("deleting nothing changed the state: %+v %v", st, err)
	}
	st, err = a.DeleteBackupKeys(ctx, "@a:x", v, "!r:x", "")
	if err != nil || st.Count != 3 {
		t.Fatalf("delete room: %+v %v", st, err)
	}
	st, err = a.DeleteBackupKeys(ctx, "@a:x", v, "", "")
	if err != nil || st.Count != 0 || count("", "") != 0 {
		t.Fatalf("delete all: %+v %v", st, err)
	}
	info, _ := a.KeyBackupVersion(ctx, "@a:x", v)
	if info.Count != 0 || info.ETag != st.ETag {
		t.Fatalf("version info %+v after deleting all, want count 0 etag %d", info, st.ETag)
	}

	// Deleting the version deletes its keys, and its keys can no longer be
	// read, written or deleted.
	if _, err := a.PutBackupKeys(ctx, "@a:x", v, keys[:1], lowerFirstWins); err != nil {
		t.Fatal(err)
	}
	if err := a.DeleteKeyBackupVersion(ctx, "@a:x", v); err != nil {
		t.Fatal(err)
	}
	if _, err := a.BackupKeys(ctx, "@a:x", v, "", ""); !errors.Is(err, account.ErrNotFound) {
		t.Fatalf("read of a deleted version: %v", err)
	}
	if _, err := a.DeleteBackupKeys(ctx, "@a:x", v, "", ""); !errors.Is(err, account.ErrNotFound) {
		t.Fatalf("delete in a deleted version: %v", err)
	}
}

// Many devices back up the same sessions at once, each with keys of a
// different quality: the best key of every session must win, whatever the
// order, and the count must equal the number of sessions.
func TestBackupKeysConcurrentUploadsKeepTheBest(t *testing.T) {
	ctx := context.Background()
	a := backupStore(t)
	v, _ := a.CreateKeyBackupVersion(ctx, "@a:x", "alg", json.RawMessage(`{}`))
	const writers, sessions = 8, 30
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			var keys []account.BackupSessionKey
			for s := range sessions {
				// Writer w offers index (w*7+s)%writers: every session gets
				// index 0 from exactly one writer.
				first := int64((w*7 + s) % writers)
				keys = append(keys, backupKey("!r:x", fmt.Sprintf("s%02d", s), first, 0, false, fmt.Sprintf(`{"first":%d}`, first)))
			}
			if _, err := a.PutBackupKeys(ctx, "@a:x", v, keys, lowerFirstWins); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	got, err := a.BackupKeys(ctx, "@a:x", v, "", "")
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != sessions {
		t.Fatalf("%d keys, want %d", len(got), sessions)
	}
	for _, k := range got {
		if k.FirstMessageIndex != 0 || string(k.SessionData) != `{"first":0}` {
			t.Fatalf("session %s kept index %d (%s)", k.SessionID, k.FirstMessageIndex, k.SessionData)
		}
	}
	if info, _ := a.KeyBackupVersion(ctx, "@a:x", v); info.Count != sessions {
		t.Fatalf("count %d, want %d", info.Count, sessions)
	}
}

// Concurrent creations each get their own number.
func TestKeyBackupConcurrentCreations(t *testing.T) {
	ctx := context.Background()
	a := backupStore(t)
	var mu sync.Mutex
	seen := map[int64]bool{}
	var wg sync.WaitGroup
	for range 10 {
		wg.Go(func() {
			v, err := a.CreateKeyBackupVersion(ctx, "@a:x", "alg", json.RawMessage(`{}`))
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			seen[v] = true
			mu.Unlock()
		})
	}
	wg.Wait()
	for v := int64(1); v <= 10; v++ {
		if !seen[v] {
			t.Fatalf("versions %v, want 1 to 10", seen)
		}
	}
}
