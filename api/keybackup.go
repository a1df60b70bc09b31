package api

import (
	"encoding/json"
	"net/http"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"

	"github.com/weftchat/weft/account"
)

// keyBackupRoutes are server-side key backup (/room_keys). They arrived in
// v1.1, after r0, so they have no r0 alias.
func (s *server) keyBackupRoutes() []clientRoute {
	return []clientRoute{
		{method: "POST", path: "/room_keys/version", handler: s.createKeyBackup, auth: true},
		{method: "GET", path: "/room_keys/version", handler: s.getKeyBackup, auth: true},
		{method: "GET", path: "/room_keys/version/{version}", handler: s.getKeyBackup, auth: true},
		{method: "PUT", path: "/room_keys/version/{version}", handler: s.putKeyBackup, auth: true},
		{method: "DELETE", path: "/room_keys/version/{version}", handler: s.deleteKeyBackup, auth: true},
		{method: "GET", path: "/room_keys/keys", handler: s.getBackupKeys, auth: true},
		{method: "PUT", path: "/room_keys/keys", handler: s.putBackupKeys, auth: true},
		{method: "DELETE", path: "/room_keys/keys", handler: s.deleteBackupKeys, auth: true},
		{method: "GET", path: "/room_keys/keys/{roomId}", handler: s.getBackupKeys, auth: true},
		{method: "PUT", path: "/room_keys/keys/{roomId}", handler: s.putBackupKeys, auth: true},
		{method: "DELETE", path: "/room_keys/keys/{roomId}", handler: s.deleteBackupKeys, auth: true},
		{method: "GET", path: "/room_keys/keys/{roomId}/{sessionId}", handler: s.getBackupKeys, auth: true},
		{method: "PUT", path: "/room_keys/keys/{roomId}/{sessionId}", handler: s.putBackupKeys, auth: true},
		{method: "DELETE", path: "/room_keys/keys/{roomId}/{sessionId}", handler: s.deleteBackupKeys, auth: true},
	}
}

// POST /_matrix/client/v3/room_keys/version
func (s *server) createKeyBackup(w http.ResponseWriter, r *http.Request) {
	var req mautrix.ReqRoomKeysVersionCreate[json.RawMessage]
	if err := decodeJSON(r, &req); err != nil {
		writeError(w, r, s.log, err)
		return
	}
	v, err := s.opts.Accounts.CreateKeyBackup(r.Context(), requester(r).UserID, req.Algorithm, req.AuthData)
	s.respond(w, r, mautrix.RespRoomKeysVersionCreate{Version: v}, err)
}

// GET /_matrix/client/v3/room_keys/version and
// GET /_matrix/client/v3/room_keys/version/{version}
func (s *server) getKeyBackup(w http.ResponseWriter, r *http.Request) {
	v, err := s.opts.Accounts.KeyBackup(r.Context(), requester(r).UserID, id.KeyBackupVersion(pathParam(r, "version")))
	s.respond(w, r, v, err)
}

// PUT /_matrix/client/v3/room_keys/version/{version}
func (s *server) putKeyBackup(w http.ResponseWriter, r *http.Request) {
	var req mautrix.ReqRoomKeysVersionUpdate[json.RawMessage]
	if err := decodeJSON(r, &req); err != nil {
		writeError(w, r, s.log, err)
		return
	}
	err := s.opts.Accounts.UpdateKeyBackup(r.Context(), requester(r).UserID,
		id.KeyBackupVersion(pathParam(r, "version")), req.Version, req.Algorithm, req.AuthData)
	s.respond(w, r, struct{}{}, err)
}

// DELETE /_matrix/client/v3/room_keys/version/{version}
func (s *server) deleteKeyBackup(w http.ResponseWriter, r *http.Request) {
	err := s.opts.Accounts.DeleteKeyBackup(r.Context(), requester(r).UserID, id.KeyBackupVersion(pathParam(r, "version")))
	s.respond(w, r, struct{}{}, err)
}

// backupKeyBody is KeyBackupData as a request carries it. mautrix's
// ReqKeyBackupData cannot tell a missing first_message_index from 0, and
// a key missing its metadata would win every comparison, so every field
// is required here.
type backupKeyBody struct {
	FirstMessageIndex *int64          `json:"first_message_index"`
	ForwardedCount    *int64          `json:"forwarded_count"`
	IsVerified        *bool           `json:"is_verified"`
	SessionData       json.RawMessage `json:"session_data"`
}

func (b backupKeyBody) key() (account.BackupKey, error) {
	if b.FirstMessageIndex == nil || b.ForwardedCount == nil || b.IsVerified == nil || b.SessionData == nil {
		return account.BackupKey{}, matrixError("M_BAD_JSON", "first_message_index, forwarded_count, is_verified and session_data are required")
	}
	return account.BackupKey{
		FirstMessageIndex: *b.FirstMessageIndex, ForwardedCount: *b.ForwardedCount,
		IsVerified: *b.IsVerified, SessionData: b.SessionData,
	}, nil
}

type backupRoomBody struct {
	Sessions map[id.SessionID]backupKeyBody `json:"sessions"`
}

func (b backupRoomBody) keys() (map[id.SessionID]account.BackupKey, error) {
	if b.Sessions == nil {
		return nil, matrixError("M_BAD_JSON", "sessions is required")
	}
	out := make(map[id.SessionID]account.BackupKey, len(b.Sessions))
	for sid, kb := range b.Sessions {
		k, err := kb.key()
		if err != nil {
			return nil, err
		}
		out[sid] = k
	}
	return out, nil
}

// backupVersionParam is the required version query parameter of the
// /room_keys/keys endpoints.
func backupVersionParam(r *http.Request) (id.KeyBackupVersion, error) {
	v := r.URL.Query().Get("version")
	if v == "" {
		return "", matrixError("M_MISSING_PARAM", "version is required")
	}
	return id.KeyBackupVersion(v), nil
}

// readBackupUpload decodes the body of PUT /room_keys/keys, .../{roomId}
// or .../{roomId}/{sessionId}, each a different shape.
func readBackupUpload(r *http.Request) (account.BackupKeyUpload, error) {
	room, session := pathRoom(r), id.SessionID(pathParam(r, "sessionId"))
	switch {
	case session != "":
		var body backupKeyBody
		if err := decodeJSON(r, &body); err != nil {
			return nil, err
		}
		k, err := body.key()
		if err != nil {
			return nil, err
		}
		return account.BackupKeyUpload{room: {session: k}}, nil
	case room != "":
		var body backupRoomBody
		if err := decodeJSON(r, &body); err != nil {
			return nil, err
		}
		keys, err := body.keys()
		if err != nil {
			return nil, err
		}
		return account.BackupKeyUpload{room: keys}, nil
	}
	var body struct {
		Rooms map[id.RoomID]backupRoomBody `json:"rooms"`
	}
	if err := decodeJSON(r, &body); err != nil {
		return nil, err
	}
	if body.Rooms == nil {
		return nil, matrixError("M_BAD_JSON", "rooms is required")
	}
	up := make(account.BackupKeyUpload, len(body.Rooms))
	for rid, rb := range body.Rooms {
		keys, err := rb.keys()
		if err != nil {
			return nil, err
		}
		up[rid] = keys
	}
	return up, nil
}

// PUT /_matrix/client/v3/room_keys/keys[/{roomId}[/{sessionId}]]
func (s *server) putBackupKeys(w http.ResponseWriter, r *http.Request) {
	version, err := backupVersionParam(r)
	if err != nil {
		writeError(w, r, s.log, err)
		return
	}
	up, err := readBackupUpload(r)
	if err != nil {
		writeError(w, r, s.log, err)
		return
	}
	resp, err := s.opts.Accounts.PutBackupKeys(r.Context(), requester(r).UserID, version, up)
	s.respond(w, r, resp, err)
}

func respBackupSessions(keys map[id.SessionID]account.BackupKey) mautrix.RespRoomKeyBackup[json.RawMessage] {
	out := mautrix.RespRoomKeyBackup[json.RawMessage]{Sessions: make(map[id.SessionID]mautrix.RespKeyBackupData[json.RawMessage], len(keys))}
	for sid, k := range keys {
		out.Sessions[sid] = respBackupKey(k)
	}
	return out
}

func respBackupKey(k account.BackupKey) mautrix.RespKeyBackupData[json.RawMessage] {
	return mautrix.RespKeyBackupData[json.RawMessage]{
		FirstMessageIndex: int(k.FirstMessageIndex), ForwardedCount: int(k.ForwardedCount),
		IsVerified: k.IsVerified, SessionData: k.SessionData,
	}
}

// GET /_matrix/client/v3/room_keys/keys[/{roomId}[/{sessionId}]]
func (s *server) getBackupKeys(w http.ResponseWriter, r *http.Request) {
	version, err := backupVersionParam(r)
	if err != nil {
		writeError(w, r, s.log, err)
		return
	}
	room, session := pathRoom(r), id.SessionID(pathParam(r, "sessionId"))
	keys, err := s.opts.Accounts.BackupKeys(r.Context(), requester(r).UserID, version, room, session)
	if err != nil {
		writeError(w, r, s.log, err)
		return
	}
	switch {
	case session != "":
		writeJSON(w, http.StatusOK, respBackupKey(keys[room][session]))
	case room != "":
		writeJSON(w, http.StatusOK, respBackupSessions(keys[room]))
	default:
		out := mautrix.RespRoomKeys[json.RawMessage]{Rooms: make(map[id.RoomID]mautrix.RespRoomKeyBackup[json.RawMessage], len(keys))}
		for rid, sessions := range keys {
			out.Rooms[rid] = respBackupSessions(sessions)
		}
		writeJSON(w, http.StatusOK, out)
	}
}

// DELETE /_matrix/client/v3/room_keys/keys[/{roomId}[/{sessionId}]]
func (s *server) deleteBackupKeys(w http.ResponseWriter, r *http.Request) {
	version, err := backupVersionParam(r)
	if err != nil {
		writeError(w, r, s.log, err)
		return
	}
	resp, err := s.opts.Accounts.DeleteBackupKeys(r.Context(), requester(r).UserID, version, pathRoom(r), id.SessionID(pathParam(r, "sessionId")))
	s.respond(w, r, resp, err)
}
