package api

import (
	"net/http"
)

// presenceBody is the GET /presence/{userId}/status answer.
type presenceBody struct {
	Presence        string  `json:"presence"`
	LastActiveAgo   *int64  `json:"last_active_ago,omitempty"`
	StatusMsg       *string `json:"status_msg,omitempty"`
	CurrentlyActive *bool   `json:"currently_active,omitempty"`
}

// GET /_matrix/client/v3/presence/{userId}/status
func (s *server) getPresence(w http.ResponseWriter, r *http.Request) {
	p, err := s.opts.Accounts.Presence(r.Context(), requester(r), pathUser(r))
	if err != nil {
		writeError(w, r, s.log, err)
		return
	}
	writeJSON(w, http.StatusOK, presenceBody{Presence: p.Presence, LastActiveAgo: p.LastActiveAgo, StatusMsg: p.StatusMsg, CurrentlyActive: p.CurrentlyActive})
}

// PUT /_matrix/client/v3/presence/{userId}/status
func (s *server) putPresence(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Presence  *string `json:"presence"`
		StatusMsg *string `json:"status_msg"`
	}
	if err := decodeJSON(r, &req); err != nil {
		writeError(w, r, s.log, err)
		return
	}
	if req.Presence == nil {
		writeError(w, r, s.log, matrixError("M_BAD_JSON", "presence is required"))
		return
	}
	err := s.opts.Accounts.SetPresence(r.Context(), requester(r), pathUser(r), *req.Presence, req.StatusMsg)
	s.respond(w, r, struct{}{}, err)
}
