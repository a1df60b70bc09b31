package e2e

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/crypto/backup"
	"maunium.net/go/mautrix/id"
)

// Server-side key backup driven by mautrix's client, with real backup
// encryption (crypto/backup, pure Go): one device backs up megolm session
// keys encrypted to the backup key; a device that logs in later finds the
// backup, downloads the keys and decrypts them. Along the way, the answers
// are checked against the spec's schemas.
func TestKeyBackupRoundTripWithMautrix(t *testing.T) {
	ctx := context.Background()
	srv := startAccounts(t, nil)
	first := registerUser(t, srv, "alice", "alice password")

	_, err := first.GetKeyBackupLatestVersion(ctx)
	wantHTTPErr(t, err, 404, "M_NOT_FOUND")

	key, err := backup.NewMegolmBackupKey()
	if err != nil {
		t.Fatal(err)
	}
	publicKey := id.Ed25519(base64.RawStdEncoding.EncodeToString(key.PublicKey().Bytes()))
	created, err := first.CreateKeyBackupVersion(ctx, &mautrix.ReqRoomKeysVersionCreate[backup.MegolmAuthData]{
		Algorithm: id.KeyBackupAlgorithmMegolmBackupV1,
		AuthData:  backup.MegolmAuthData{PublicKey: publicKey},
	})
	if err != nil {
		t.Fatal(err)
	}
	version := created.Version

	// Two rooms, three sessions, stored the two ways mautrix offers.
	rooms := []id.RoomID{"!one:localhost", "!two:localhost"}
	sessions := map[id.RoomID][]id.SessionID{
		rooms[0]: {"sessOne/with+base64", "sessTwo"},
		rooms[1]: {"sessThree"},
	}
	plain := map[id.SessionID]backup.MegolmSessionData{}
	encrypt := func(session id.SessionID) json.RawMessage {
		t.Helper()
		sd := backup.MegolmSessionData{
			Algorithm:  id.AlgorithmMegolmV1,
			SenderKey:  "senderCurveKey",
			SessionKey: "exported session key of " + string(session),
			SenderClaimedKeys: backup.SenderClaimedKeys{
				Ed25519: "senderEdKey",
			},
			ForwardingKeyChain: []string{},
		}
		plain[session] = sd
		enc, err := backup.EncryptSessionData(key, sd)
		if err != nil {
			t.Fatal(err)
		}
		raw, err := json.Marshal(enc)
		if err != nil {
			t.Fatal(err)
		}
		return raw
	}
	bulk := &mautrix.ReqKeyBackup{Rooms: map[id.RoomID]mautrix.ReqRoomKeyBackup{
		rooms[0]: {Sessions: map[id.SessionID]mautrix.ReqKeyBackupData{
			sessions[rooms[0]][0]: {FirstMessageIndex: 0, SessionData: encrypt(sessions[rooms[0]][0])},
			sessions[rooms[0]][1]: {FirstMessageIndex: 2, ForwardedCount: 1, SessionData: encrypt(sessions[rooms[0]][1])},
		}},
	}}
	up, err := first.PutKeysInBackup(ctx, version, bulk)
	if err != nil || up.Count != 2 || up.ETag == "" {
		t.Fatalf("bulk upload: %+v %v", up, err)
	}
	up2, err := first.PutKeysInBackupForRoomAndSession(ctx, version, rooms[1], sessions[rooms[1]][0],
		&mautrix.ReqKeyBackupData{FirstMessageIndex: 5, IsVerified: true, SessionData: encrypt(sessions[rooms[1]][0])})
	if err != nil || up2.Count != 3 || up2.ETag == up.ETag {
		t.Fatalf("single upload: %+v %v (etag before %q)", up2, err, up.ETag)
	}

	// A second device, logged in later, finds the backup and restores.
	second := loginWith(t, srv, "alice", "alice password")
	info, err := second.GetKeyBackupLatestVersion(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.Version != version || info.Algorithm != id.KeyBackupAlgorithmMegolmBackupV1 ||
		info.AuthData.PublicKey != publicKey || info.Count != 3 || info.ETag != up2.ETag {
		t.Fatalf("backup info %+v", info)
	}
	all, err := second.GetKeyBackup(ctx, version)
	if err != nil {
		t.Fatal(err)
	}
	restored := 0
	for room, want := range sessions {
		for _, session := range want {
			data, ok := all.Rooms[room].Sessions[session]
			if !ok {
				t.Fatalf("%s %s missing from the backup: %+v", room, session, all)
			}
			got, err := data.SessionData.Decrypt(key)
			if err != nil {
				t.Fatalf("decrypting %s: %v", session, err)
			}
			if got.SessionKey != plain[session].SessionKey || got.SenderKey != plain[session].SenderKey {
				t.Fatalf("%s decrypted to %+v, want %+v", session, got, plain[session])
			}
			restored++
		}
	}
	if restored != 3 || len(all.Rooms) != 2 {
		t.Fatalf("restored %d keys from %d rooms", restored, len(all.Rooms))
	}
	one, err := second.GetKeyBackupForRoomAndSession(ctx, version, rooms[1], sessions[rooms[1]][0])
	if err != nil || one.FirstMessageIndex != 5 || !one.IsVerified {
		t.Fatalf("one key: %+v %v", one, err)
	}
	room, err := second.GetKeyBackupForRoom(ctx, version, rooms[0])
	if err != nil || len(room.Sessions) != 2 || room.Sessions[sessions[rooms[0]][1]].ForwardedCount != 1 {
		t.Fatalf("room keys: %+v %v", room, err)
	}
	_, err = second.GetKeyBackupForRoomAndSession(ctx, version, rooms[1], "unknown")
	wantHTTPErr(t, err, 404, "M_NOT_FOUND")

	// The second device starts a new backup (a new backup key, as after a
	// reset): the first device's next upload to the old version is refused
	// with the current version named, so it can switch.
	newer, err := second.CreateKeyBackupVersion(ctx, &mautrix.ReqRoomKeysVersionCreate[backup.MegolmAuthData]{
		Algorithm: id.KeyBackupAlgorithmMegolmBackupV1,
		AuthData:  backup.MegolmAuthData{PublicKey: publicKey},
	})
	if err != nil || newer.Version == version {
		t.Fatalf("new version %+v %v", newer, err)
	}
	_, err = first.PutKeysInBackup(ctx, version, bulk)
	wantHTTPErr(t, err, 403, "M_WRONG_ROOM_KEYS_VERSION")
	var he mautrix.HTTPError
	errors.As(err, &he) // wantHTTPErr saw a Matrix error in it
	if got := he.RespError.ExtraData["current_version"]; got != string(newer.Version) {
		t.Fatalf("current_version %v, want %s", got, newer.Version)
	}
	if up, err := first.PutKeysInBackup(ctx, newer.Version, bulk); err != nil || up.Count != 2 {
		t.Fatalf("upload to the new version: %+v %v", up, err)
	}

	// Deleting keys, then versions.
	del, err := first.DeleteKeysInBackupForRoomAndSession(ctx, newer.Version, rooms[0], sessions[rooms[0]][1])
	if err != nil || del.Count != 1 {
		t.Fatalf("delete one key: %+v %v", del, err)
	}
	if err := second.DeleteKeyBackupVersion(ctx, newer.Version); err != nil {
		t.Fatal(err)
	}
	if err := second.DeleteKeyBackupVersion(ctx, newer.Version); err != nil {
		t.Fatalf("deleting a deleted backup again: %v", err)
	}
	_, err = second.GetKeyBackupVersion(ctx, newer.Version)
	wantHTTPErr(t, err, 404, "M_NOT_FOUND")
	if info, err := second.GetKeyBackupLatestVersion(ctx); err != nil || info.Version != version || info.Count != 3 {
		t.Fatalf("current after deleting the newer backup: %+v %v", info, err)
	}
}

// Every key backup answer, success and error, matches the spec's schema
// for its endpoint and status.
func TestKeyBackupAnswersMatchTheSpec(t *testing.T) {
	srv := startAccounts(t, nil)
	cli := registerUser(t, srv, "bob", "bob password")
	tok := cli.AccessToken
	u := func(path string) string { return srv.URL + "/_matrix/client/v3" + path }
	const spec = "key_backup.yaml"

	r := doJSON(t, "GET", u("/room_keys/version"), tok, nil)
	r.wantErr(t, 404, "M_NOT_FOUND")
	specValidateErr(t, r)

	r = doJSON(t, "POST", u("/room_keys/version"), tok, map[string]any{
		"algorithm": "m.megolm_backup.v1.curve25519-aes-sha2", "auth_data": map[string]any{"public_key": "abc"},
	})
	r.wantOK(t)
	specValidate(t, r.Body, spec, "/room_keys/version", "post", "200")
	v, _ := r.Body["version"].(string)

	r = doJSON(t, "GET", u("/room_keys/version"), tok, nil)
	r.wantOK(t)
	specValidate(t, r.Body, spec, "/room_keys/version", "get", "200")
	r = doJSON(t, "GET", u("/room_keys/version/"+v), tok, nil)
	r.wantOK(t)
	specValidate(t, r.Body, spec, "/room_keys/version/{version}", "get", "200")

	// mautrix's UpdateKeyBackupVersion sends no body, so PUT goes raw.
	r = doJSON(t, "PUT", u("/room_keys/version/"+v), tok, map[string]any{
		"algorithm": "m.megolm_backup.v1.curve25519-aes-sha2", "auth_data": map[string]any{"public_key": "def"}, "version": v,
	})
	r.wantOK(t)
	specValidate(t, r.Body, spec, "/room_keys/version/{version}", "put", "200")
	r = doJSON(t, "PUT", u("/room_keys/version/"+v), tok, map[string]any{
		"algorithm": "m.megolm_backup.v1.curve25519-aes-sha2", "auth_data": map[string]any{}, "version": v + "0",
	})
	r.wantErr(t, 400, "M_INVALID_PARAM")
	specValidateErr(t, r)

	key := map[string]any{"first_message_index": 1, "forwarded_count": 0, "is_verified": false,
		"session_data": map[string]any{"ephemeral": "e", "ciphertext": "c", "mac": "m"}}
	q := "?version=" + v
	r = doJSON(t, "PUT", u("/room_keys/keys"+q), tok, map[string]any{"rooms": map[string]any{"!r:localhost": map[string]any{"sessions": map[string]any{"s1": key}}}})
	r.wantOK(t)
	specValidate(t, r.Body, spec, "/room_keys/keys", "put", "200")
	r = doJSON(t, "PUT", u("/room_keys/keys/!r:localhost"+q), tok, map[string]any{"sessions": map[string]any{"s2": key}})
	r.wantOK(t)
	specValidate(t, r.Body, spec, "/room_keys/keys/{roomId}", "put", "200")
	r = doJSON(t, "PUT", u("/room_keys/keys/!r:localhost/s3"+q), tok, key)
	r.wantOK(t)
	specValidate(t, r.Body, spec, "/room_keys/keys/{roomId}/{sessionId}", "put", "200")
	if r.Body["count"] != float64(3) {
		t.Fatalf("count after three keys: %s", r.Raw)
	}
	r = doJSON(t, "PUT", u("/room_keys/keys?version=999"), tok, map[string]any{"rooms": map[string]any{}})
	r.wantErr(t, 403, "M_WRONG_ROOM_KEYS_VERSION")
	specValidateErr(t, r)
	if r.Body["current_version"] != v {
		t.Fatalf("current_version in %s, want %s", r.Raw, v)
	}

	r = doJSON(t, "GET", u("/room_keys/keys"+q), tok, nil)
	r.wantOK(t)
	specValidate(t, r.Body, spec, "/room_keys/keys", "get", "200")
	r = doJSON(t, "GET", u("/room_keys/keys/!r:localhost"+q), tok, nil)
	r.wantOK(t)
	specValidate(t, r.Body, spec, "/room_keys/keys/{roomId}", "get", "200")
	r = doJSON(t, "GET", u("/room_keys/keys/!r:localhost/s1"+q), tok, nil)
	r.wantOK(t)
	specValidate(t, r.Body, spec, "/room_keys/keys/{roomId}/{sessionId}", "get", "200")
	r = doJSON(t, "GET", u("/room_keys/keys/!r:localhost/none"+q), tok, nil)
	r.wantErr(t, 404, "M_NOT_FOUND")
	specValidateErr(t, r)

	for _, path := range []string{"/room_keys/keys/!r:localhost/s1", "/room_keys/keys/!r:localhost", "/room_keys/keys"} {
		r = doJSON(t, "DELETE", u(path+q), tok, nil)
		r.wantOK(t)
		specValidate(t, r.Body, spec, map[string]string{
			"/room_keys/keys/!r:localhost/s1": "/room_keys/keys/{roomId}/{sessionId}",
			"/room_keys/keys/!r:localhost":    "/room_keys/keys/{roomId}",
			"/room_keys/keys":                 "/room_keys/keys",
		}[path], "delete", "200")
	}
	r = doJSON(t, "DELETE", u("/room_keys/version/"+v), tok, nil)
	r.wantOK(t)
	specValidate(t, r.Body, spec, "/room_keys/version/{version}", "delete", "200")
	r = doJSON(t, "GET", u("/room_keys/version/"+v), tok, nil)
	r.wantErr(t, 404, "M_NOT_FOUND")
	specValidateErr(t, r)
	r = doJSON(t, "DELETE", u(fmt.Sprintf("/room_keys/version/%s9", v)), tok, nil)
	r.wantErr(t, 404, "M_NOT_FOUND")
	specValidateErr(t, r)
}
