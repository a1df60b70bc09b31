package api

import (
	"encoding/json"
	"net/http"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"

	"github.com/weftchat/weft/account"
)

// keyRoutes are the end-to-end encryption key endpoints (keys.go). The
// cross-signing ones arrived after r0 (spec v1.1).
func (s *server) keyRoutes() []clientRoute {
	return []clientRoute{
		{method: "POST", path: "/keys/upload", handler: s.uploadKeys, auth: true, r0: true},
		{method: "POST", path: "/keys/query", handler: s.queryKeys, auth: true, r0: true, reads: true},
		{method: "POST", path: "/keys/claim", handler: s.claimKeys, auth: true, r0: true},
		{method: "POST", path: "/keys/device_signing/upload", handler: s.uploadCrossSigningKeys, auth: true},
		{method: "POST", path: "/keys/signatures/upload", handler: s.uploadSignatures, auth: true},
	}
}

// POST /_matrix/client/v3/keys/upload
func (s *server) uploadKeys(w http.ResponseWriter, r *http.Request) {
	var req account.UploadKeysRequest
	if err := decodeJSON(r, &req); err != nil {
		writeError(w, r, s.log, err)
		return
	}
	counts, err := s.opts.Accounts.UploadKeys(r.Context(), requester(r), req)
	s.respond(w, r, map[string]any{"one_time_key_counts": counts}, err)
}

// POST /_matrix/client/v3/keys/query. timeout is accepted and unused: only
// local users are answered, at once.
func (s *server) queryKeys(w http.ResponseWriter, r *http.Request) {
	var req mautrix.ReqQueryKeys
	if err := decodeJSON(r, &req); err != nil {
		writeError(w, r, s.log, err)
		return
	}
	if req.DeviceKeys == nil {
		writeError(w, r, s.log, matrixError("M_BAD_JSON", "device_keys is required"))
		return
	}
	query := make(map[id.UserID][]id.DeviceID, len(req.DeviceKeys))
	for user, devices := range req.DeviceKeys {
		query[user] = devices
	}
	resp, err := s.opts.Accounts.QueryKeys(r.Context(), requester(r), query)
	s.respond(w, r, resp, err)
}

// POST /_matrix/client/v3/keys/claim
func (s *server) claimKeys(w http.ResponseWriter, r *http.Request) {
	var req mautrix.ReqClaimKeys
	if err := decodeJSON(r, &req); err != nil {
		writeError(w, r, s.log, err)
		return
	}
	if req.OneTimeKeys == nil {
		writeError(w, r, s.log, matrixError("M_BAD_JSON", "one_time_keys is required"))
		return
	}
	resp, err := s.opts.Accounts.ClaimKeys(r.Context(), requester(r), req.OneTimeKeys)
	s.respond(w, r, resp, err)
}

// POST /_matrix/client/v3/keys/device_signing/upload (UIA, except for a
// first upload or the same keys again)
func (s *server) uploadCrossSigningKeys(w http.ResponseWriter, r *http.Request) {
	var req struct {
		account.CrossSigningUploadRequest
		Auth json.RawMessage `json:"auth"`
	}
	if err := decodeJSON(r, &req); err != nil {
		writeError(w, r, s.log, err)
		return
	}
	err := s.opts.Accounts.UploadCrossSigningKeys(r.Context(), requester(r), req.CrossSigningUploadRequest, req.Auth)
	s.respond(w, r, struct{}{}, err)
}

// POST /_matrix/client/v3/keys/signatures/upload
func (s *server) uploadSignatures(w http.ResponseWriter, r *http.Request) {
	var req map[id.UserID]map[string]json.RawMessage
	if err := decodeJSON(r, &req); err != nil {
		writeError(w, r, s.log, err)
		return
	}
	failures, err := s.opts.Accounts.UploadSignatures(r.Context(), requester(r), req)
	s.respond(w, r, map[string]any{"failures": failures}, err)
}
