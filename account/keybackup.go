package account

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"
)

// Server-side key backup (/room_keys): a user's devices store their megolm
// session keys, encrypted to a backup key the server never learns, and a
// new device fetches them. The server keeps auth_data and session_data as
// opaque JSON; all it reads is each key's metadata, to decide which of two
// uploads of one session to keep (BetterBackupKey).
//
// Versions are numbered per user, 1, 2, 3..., and a number is never reused:
// a deleted version stays as a tombstone, so deleting it again succeeds and
// its number cannot come back with different keys. The current version is
// the highest one not deleted; keys are written only to it.

// Bounds on what a client may store. A megolm session ID is 43 characters
// and a room ID at most 255 bytes (the spec's grammar); the others keep a
// single request from holding rows no client could use.
const (
	maxBackupIDLen        = 255
	maxBackupAlgorithmLen = 255
)

// BackupKey is one session's key in a backup.
type BackupKey struct {
	FirstMessageIndex int64
	ForwardedCount    int64
	IsVerified        bool
	// SessionData is the encrypted key, a JSON object stored as sent.
	SessionData json.RawMessage
}

// BackupSessionKey is a BackupKey with the room and session it is for.
type BackupSessionKey struct {
	RoomID    id.RoomID
	SessionID id.SessionID
	BackupKey
}

// KeyBackupInfo is one stored backup version.
type KeyBackupInfo struct {
	Version   int64
	Algorithm string
	AuthData  json.RawMessage
	// Count is the number of keys in the version; ETag changes whenever
	// they change (a counter per version).
	Count int64
	ETag  int64
}

// KeyBackupState is a version's key count and etag after a change.
type KeyBackupState struct {
	Count int64
	ETag  int64
}

// BackupVersionNotCurrent is returned by KeyBackupStore.PutBackupKeys when
// the version written to is not the user's current one.
type BackupVersionNotCurrent struct{ Current int64 }

func (e BackupVersionNotCurrent) Error() string {
	return fmt.Sprintf("backup version is not the current one (%d)", e.Current)
}

// KeyBackupStore keeps key backups (tables key_backup_versions,
// key_backup_keys). *storage.Accounts implements it; the service finds it
// by type assertion on its Store. Versions are numbers above 0; every
// method that writes serialises with the user's other backup writes.
type KeyBackupStore interface {
	// CreateKeyBackupVersion stores a new version, numbered one above every
	// version the user has had, deleted ones included, and returns it.
	CreateKeyBackupVersion(ctx context.Context, user id.UserID, algorithm string, authData json.RawMessage) (int64, error)
	// KeyBackupVersion is a version that is not deleted; version 0 asks for
	// the current one. ErrNotFound when there is none.
	KeyBackupVersion(ctx context.Context, user id.UserID, version int64) (*KeyBackupInfo, error)
	// UpdateKeyBackupAuthData replaces a version's auth_data if the version
	// exists, is not deleted and has algorithm (ErrNotFound otherwise).
	UpdateKeyBackupAuthData(ctx context.Context, user id.UserID, version int64, algorithm string, authData json.RawMessage) error
	// DeleteKeyBackupVersion deletes a version's keys and marks it deleted.
	// Deleting a deleted version succeeds; ErrNotFound when the user never
	// had it.
	DeleteKeyBackupVersion(ctx context.Context, user id.UserID, version int64) error
	// PutBackupKeys stores keys in version if it is the user's current
	// version (ErrNotFound when the user has none, BackupVersionNotCurrent
	// when it is another). A key for a session the version already holds
	// replaces the stored one only if replace(stored, key) says so; the
	// comparison and the write happen under the same lock, so concurrent
	// uploads cannot undo each other's better keys. The etag changes when
	// anything was written.
	PutBackupKeys(ctx context.Context, user id.UserID, version int64, keys []BackupSessionKey, replace func(stored, candidate BackupKey) bool) (KeyBackupState, error)
	// BackupKeys lists a version's keys: all of them (room ""), a room's
	// (session ""), or one session's. ErrNotFound when the version does not
	// exist or is deleted; an empty list when it holds none of them.
	BackupKeys(ctx context.Context, user id.UserID, version int64, room id.RoomID, session id.SessionID) ([]BackupSessionKey, error)
	// DeleteBackupKeys deletes keys of a version (scoped as BackupKeys).
	// ErrNotFound when the version does not exist or is deleted. The etag
	// changes when anything was deleted.
	DeleteBackupKeys(ctx context.Context, user id.UserID, version int64, room id.RoomID, session id.SessionID) (KeyBackupState, error)
}

func (s *Service) keyBackupStore() (KeyBackupStore, error) {
	ks, ok := s.store.(KeyBackupStore)
	if !ok {
		return nil, errors.New("store keeps no key backups")
	}
	return ks, nil
}

// BetterBackupKey reports whether candidate should replace stored, a key
// for the same session (the spec's rule): a verified key beats an
// unverified one; then the lower first_message_index wins (it decrypts
// more messages); then the lower forwarded_count (fewer hands it passed
// through). A tie keeps the stored key, so uploading the same key again
// changes nothing, not even the etag.
func BetterBackupKey(candidate, stored BackupKey) bool {
	if candidate.IsVerified != stored.IsVerified {
		return candidate.IsVerified
	}
	if candidate.FirstMessageIndex != stored.FirstMessageIndex {
		return candidate.FirstMessageIndex < stored.FirstMessageIndex
	}
	return candidate.ForwardedCount < stored.ForwardedCount
}

func errUnknownBackupVersion() error { return errNotFound("Unknown backup version") }

// parseBackupVersion reads a version as the server writes it: a positive
// decimal number without sign or leading zeros. Anything else names no
// version (ok false), so "01" is not an alias of "1".
func parseBackupVersion(v id.KeyBackupVersion) (int64, bool) {
	n, err := strconv.ParseInt(string(v), 10, 64)
	if err != nil || n <= 0 || strconv.FormatInt(n, 10) != string(v) {
		return 0, false
	}
	return n, true
}

func formatBackupVersion(n int64) id.KeyBackupVersion {
	return id.KeyBackupVersion(strconv.FormatInt(n, 10))
}

func backupETag(n int64) string { return strconv.FormatInt(n, 10) }

// isJSONObject reports whether raw is a JSON object (what is stored as
// auth_data or session_data must be one).
func isJSONObject(raw json.RawMessage) bool {
	t := strings.TrimLeft(string(raw), " \t\r\n")
	return strings.HasPrefix(t, "{") && json.Valid(raw)
}

func checkBackupAlgorithm(algorithm id.KeyBackupAlgorithm, authData json.RawMessage) error {
	switch {
	case algorithm == "":
		return errBadJSON("algorithm is required")
	case len(algorithm) > maxBackupAlgorithmLen:
		return errBadJSON("algorithm is too long")
	case authData == nil:
		return errBadJSON("auth_data is required")
	case !isJSONObject(authData):
		return errBadJSON("auth_data must be an object")
	}
	return nil
}

func backupVersionResp(v *KeyBackupInfo) *mautrix.RespRoomKeysVersion[json.RawMessage] {
	return &mautrix.RespRoomKeysVersion[json.RawMessage]{
		Algorithm: id.KeyBackupAlgorithm(v.Algorithm),
		AuthData:  v.AuthData,
		Count:     int(v.Count),
		ETag:      backupETag(v.ETag),
		Version:   formatBackupVersion(v.Version),
	}
}

func backupUpdateResp(st KeyBackupState) *mautrix.RespRoomKeysUpdate {
	return &mautrix.RespRoomKeysUpdate{Count: int(st.Count), ETag: backupETag(st.ETag)}
}

// CreateKeyBackup is POST /room_keys/version: a new version, which becomes
// the current one. The algorithm is not limited to the spec's one: clients
// try newer algorithms under unstable names, and the server reads neither
// it nor auth_data.
func (s *Service) CreateKeyBackup(ctx context.Context, user id.UserID, algorithm id.KeyBackupAlgorithm, authData json.RawMessage) (id.KeyBackupVersion, error) {
	if err := checkBackupAlgorithm(algorithm, authData); err != nil {
		return "", err
	}
	ks, err := s.keyBackupStore()
	if err != nil {
		return "", err
	}
	v, err := ks.CreateKeyBackupVersion(ctx, user, string(algorithm), authData)
	if err != nil {
		return "", fmt.Errorf("creating a key backup version: %w", err)
	}
	return formatBackupVersion(v), nil
}

// KeyBackup is GET /room_keys/version[/{version}]: version "" is the
// current one.
func (s *Service) KeyBackup(ctx context.Context, user id.UserID, version id.KeyBackupVersion) (*mautrix.RespRoomKeysVersion[json.RawMessage], error) {
	var n int64
	if version != "" {
		var ok bool
		if n, ok = parseBackupVersion(version); !ok {
			return nil, errUnknownBackupVersion()
		}
	}
	ks, err := s.keyBackupStore()
	if err != nil {
		return nil, err
	}
	v, err := ks.KeyBackupVersion(ctx, user, n)
	if errors.Is(err, ErrNotFound) {
		if version == "" {
			return nil, errNotFound("No current backup version")
		}
		return nil, errUnknownBackupVersion()
	}
	if err != nil {
		return nil, fmt.Errorf("loading key backup version: %w", err)
	}
	return backupVersionResp(v), nil
}

// UpdateKeyBackup is PUT /room_keys/version/{version}: only auth_data
// changes. bodyVersion is the body's optional version, which must then be
// the path's; the algorithm must be the stored one.
func (s *Service) UpdateKeyBackup(ctx context.Context, user id.UserID, version, bodyVersion id.KeyBackupVersion, algorithm id.KeyBackupAlgorithm, authData json.RawMessage) error {
	if err := checkBackupAlgorithm(algorithm, authData); err != nil {
		return err
	}
	if bodyVersion != "" && bodyVersion != version {
		return errInvalidParam("version in the body does not match the version in the path")
	}
	n, ok := parseBackupVersion(version)
	if !ok {
		return errUnknownBackupVersion()
	}
	ks, err := s.keyBackupStore()
	if err != nil {
		return err
	}
	// A version's algorithm never changes, so comparing it before the
	// update cannot race; a deletion in between makes the update find
	// nothing.
	v, err := ks.KeyBackupVersion(ctx, user, n)
	if errors.Is(err, ErrNotFound) {
		return errUnknownBackupVersion()
	}
	if err != nil {
		return fmt.Errorf("loading key backup version: %w", err)
	}
	if v.Algorithm != string(algorithm) {
		return errInvalidParam("Algorithm does not match the backup's")
	}
	err = ks.UpdateKeyBackupAuthData(ctx, user, n, string(algorithm), authData)
	if errors.Is(err, ErrNotFound) {
		return errUnknownBackupVersion()
	}
	if err != nil {
		return fmt.Errorf("updating key backup version: %w", err)
	}
	return nil
}

// DeleteKeyBackup is DELETE /room_keys/version/{version}: the version and
// all its keys. Deleting it again succeeds, as the spec asks.
func (s *Service) DeleteKeyBackup(ctx context.Context, user id.UserID, version id.KeyBackupVersion) error {
	n, ok := parseBackupVersion(version)
	if !ok {
		return errUnknownBackupVersion()
	}
	ks, err := s.keyBackupStore()
	if err != nil {
		return err
	}
	err = ks.DeleteKeyBackupVersion(ctx, user, n)
	if errors.Is(err, ErrNotFound) {
		return errUnknownBackupVersion()
	}
	if err != nil {
		return fmt.Errorf("deleting key backup version: %w", err)
	}
	return nil
}

// BackupKeyUpload is the keys of one PUT /room_keys/keys[...] request, by
// room and session.
type BackupKeyUpload map[id.RoomID]map[id.SessionID]BackupKey

// PutBackupKeys is PUT /room_keys/keys[/{roomId}[/{sessionId}]]: keys go
// only into the current version; for a session the backup holds, the
// better key (BetterBackupKey) stays.
func (s *Service) PutBackupKeys(ctx context.Context, user id.UserID, version id.KeyBackupVersion, keys BackupKeyUpload) (*mautrix.RespRoomKeysUpdate, error) {
	var list []BackupSessionKey
	for room, sessions := range keys {
		if !strings.HasPrefix(string(room), "!") || len(room) > maxBackupIDLen {
			return nil, errInvalidParam(fmt.Sprintf("%q is not a room ID", room))
		}
		for session, k := range sessions {
			switch {
			case session == "" || len(session) > maxBackupIDLen:
				return nil, errInvalidParam("session IDs must be 1 to 255 bytes long")
			case k.FirstMessageIndex < 0 || k.ForwardedCount < 0:
				return nil, errBadJSON("first_message_index and forwarded_count may not be negative")
			case !isJSONObject(k.SessionData):
				return nil, errBadJSON("session_data must be an object")
			}
			list = append(list, BackupSessionKey{RoomID: room, SessionID: session, BackupKey: k})
		}
	}
	ks, err := s.keyBackupStore()
	if err != nil {
		return nil, err
	}
	// An unparseable version is not the current one: the client learns
	// which is (or, with no backup at all, that there is none).
	n, _ := parseBackupVersion(version)
	st, err := ks.PutBackupKeys(ctx, user, n, list, func(stored, candidate BackupKey) bool {
		return BetterBackupKey(candidate, stored)
	})
	var wrong BackupVersionNotCurrent
	switch {
	case errors.As(err, &wrong):
		return nil, mautrix.MWrongRoomKeysVersion.WithMessage("Wrong backup version").
			WithExtraField("current_version", string(formatBackupVersion(wrong.Current)))
	case errors.Is(err, ErrNotFound):
		return nil, errNotFound("No current backup version")
	case err != nil:
		return nil, fmt.Errorf("storing backup keys: %w", err)
	}
	return backupUpdateResp(st), nil
}

// BackupKeys is GET /room_keys/keys[/{roomId}[/{sessionId}]]: any version
// that is not deleted may be read. A room without keys is empty; a session
// without a key is M_NOT_FOUND, as the spec answers each.
func (s *Service) BackupKeys(ctx context.Context, user id.UserID, version id.KeyBackupVersion, room id.RoomID, session id.SessionID) (BackupKeyUpload, error) {
	n, ok := parseBackupVersion(version)
	if !ok {
		return nil, errUnknownBackupVersion()
	}
	ks, err := s.keyBackupStore()
	if err != nil {
		return nil, err
	}
	list, err := ks.BackupKeys(ctx, user, n, room, session)
	if errors.Is(err, ErrNotFound) {
		return nil, errUnknownBackupVersion()
	}
	if err != nil {
		return nil, fmt.Errorf("reading backup keys: %w", err)
	}
	if session != "" && len(list) == 0 {
		return nil, errNotFound("Key not found")
	}
	out := BackupKeyUpload{}
	for _, k := range list {
		if out[k.RoomID] == nil {
			out[k.RoomID] = map[id.SessionID]BackupKey{}
		}
		out[k.RoomID][k.SessionID] = k.BackupKey
	}
	return out, nil
}

// DeleteBackupKeys is DELETE /room_keys/keys[/{roomId}[/{sessionId}]], in
// any version that is not deleted.
func (s *Service) DeleteBackupKeys(ctx context.Context, user id.UserID, version id.KeyBackupVersion, room id.RoomID, session id.SessionID) (*mautrix.RespRoomKeysUpdate, error) {
	n, ok := parseBackupVersion(version)
	if !ok {
		return nil, errUnknownBackupVersion()
	}
	ks, err := s.keyBackupStore()
	if err != nil {
		return nil, err
	}
	st, err := ks.DeleteBackupKeys(ctx, user, n, room, session)
	if errors.Is(err, ErrNotFound) {
		return nil, errUnknownBackupVersion()
	}
	if err != nil {
		return nil, fmt.Errorf("deleting backup keys: %w", err)
	}
	return backupUpdateResp(st), nil
}
