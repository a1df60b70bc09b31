package api

import (
	"encoding/json"
	"io"
	"net/http"
	"net/url"

	"github.com/go-chi/chi/v5"
	"maunium.net/go/mautrix/id"
)

func pathUser(r *http.Request) id.UserID { return id.UserID(pathParam(r, "userId")) }

// pathParam is a path parameter, percent-decoded. chi matches on the raw
// path whenever the client escaped it differently from Go's default (as
// encodeURIComponent does with "@alice%3Aexample.org"), and then hands out
// parameters still escaped.
func pathParam(r *http.Request, key string) string {
	v := chi.URLParam(r, key)
	if u, err := url.PathUnescape(v); err == nil {
		return u
	}
	return v
}

// GET /_matrix/client/v3/profile/{userId}
func (s *server) getProfile(w http.ResponseWriter, r *http.Request) {
	p, err := s.opts.Accounts.Profile(r.Context(), pathUser(r))
	if err != nil {
		writeError(w, r, s.log, err)
		return
	}
	body := map[string]string{}
	if p.DisplayName != "" {
		body["displayname"] = p.DisplayName
	}
	if p.AvatarURL != "" {
		body["avatar_url"] = p.AvatarURL
	}
	writeJSON(w, http.StatusOK, body)
}

// GET /_matrix/client/v3/profile/{userId}/displayname
func (s *server) getDisplayName(w http.ResponseWriter, r *http.Request) {
	s.profileField(w, r, "displayname")
}

// GET /_matrix/client/v3/profile/{userId}/avatar_url
func (s *server) getAvatarURL(w http.ResponseWriter, r *http.Request) {
	s.profileField(w, r, "avatar_url")
}

func (s *server) profileField(w http.ResponseWriter, r *http.Request, field string) {
	p, err := s.opts.Accounts.Profile(r.Context(), pathUser(r))
	if err != nil {
		writeError(w, r, s.log, err)
		return
	}
	v := p.DisplayName
	if field == "avatar_url" {
		v = p.AvatarURL
	}
	if v == "" {
		writeError(w, r, s.log, matrixError("M_NOT_FOUND", "This user has no "+field))
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{field: v})
}

// PUT /_matrix/client/v3/profile/{userId}/displayname
func (s *server) putDisplayName(w http.ResponseWriter, r *http.Request) {
	var req struct {
		DisplayName *string `json:"displayname"`
	}
	if err := decodeJSON(r, &req); err != nil {
		writeError(w, r, s.log, err)
		return
	}
	if req.DisplayName == nil {
		writeError(w, r, s.log, matrixError("M_MISSING_PARAM", "displayname is required"))
		return
	}
	if err := s.opts.Accounts.SetDisplayName(r.Context(), requester(r), pathUser(r), *req.DisplayName); err != nil {
		writeError(w, r, s.log, err)
		return
	}
	writeJSON(w, http.StatusOK, struct{}{})
}

// PUT /_matrix/client/v3/profile/{userId}/avatar_url
func (s *server) putAvatarURL(w http.ResponseWriter, r *http.Request) {
	var req struct {
		AvatarURL *string `json:"avatar_url"`
	}
	if err := decodeJSON(r, &req); err != nil {
		writeError(w, r, s.log, err)
		return
	}
	if req.AvatarURL == nil {
		writeError(w, r, s.log, matrixError("M_MISSING_PARAM", "avatar_url is required"))
		return
	}
	if err := s.opts.Accounts.SetAvatarURL(r.Context(), requester(r), pathUser(r), *req.AvatarURL); err != nil {
		writeError(w, r, s.log, err)
		return
	}
	writeJSON(w, http.StatusOK, struct{}{})
}

// GET /_matrix/client/v3/user/{userId}[/rooms/{roomId}]/account_data/{type}
func (s *server) getAccountData(w http.ResponseWriter, r *http.Request) {
	c, err := s.opts.Accounts.AccountData(r.Context(), requester(r), pathUser(r), id.RoomID(pathParam(r, "roomId")), pathParam(r, "type"))
	if err != nil {
		writeError(w, r, s.log, err)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(c)
}

// PUT /_matrix/client/v3/user/{userId}[/rooms/{roomId}]/account_data/{type}
func (s *server) putAccountData(w http.ResponseWriter, r *http.Request) {
	var content map[string]json.RawMessage
	if err := decodeJSON(r, &content); err != nil {
		writeError(w, r, s.log, err)
		return
	}
	raw, err := json.Marshal(content)
	if err != nil {
		writeError(w, r, s.log, err)
		return
	}
	if err := s.opts.Accounts.SetAccountData(r.Context(), requester(r), pathUser(r), id.RoomID(pathParam(r, "roomId")), pathParam(r, "type"), raw); err != nil {
		writeError(w, r, s.log, err)
		return
	}
	writeJSON(w, http.StatusOK, struct{}{})
}

// POST /_matrix/client/v3/user/{userId}/filter
func (s *server) createFilter(w http.ResponseWriter, r *http.Request) {
	raw, err := io.ReadAll(r.Body)
	if err != nil {
		writeError(w, r, s.log, bodyReadError(err))
		return
	}
	fid, err := s.opts.Accounts.CreateFilter(r.Context(), requester(r), pathUser(r), raw)
	s.respond(w, r, map[string]string{"filter_id": fid}, err)
}

// GET /_matrix/client/v3/user/{userId}/filter/{filterId}
func (s *server) getFilter(w http.ResponseWriter, r *http.Request) {
	f, err := s.opts.Accounts.Filter(r.Context(), requester(r), pathUser(r), pathParam(r, "filterId"))
	if err != nil {
		writeError(w, r, s.log, err)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(f)
}

// POST /_matrix/client/v3/user_directory/search
func (s *server) searchUsers(w http.ResponseWriter, r *http.Request) {
	var req struct {
		SearchTerm *string `json:"search_term"`
		Limit      int     `json:"limit"`
	}
	if err := decodeJSON(r, &req); err != nil {
		writeError(w, r, s.log, err)
		return
	}
	if req.SearchTerm == nil {
		writeError(w, r, s.log, matrixError("M_MISSING_PARAM", "search_term is required"))
		return
	}
	res, limited, err := s.opts.Accounts.SearchDirectory(r.Context(), requester(r), *req.SearchTerm, req.Limit)
	if err != nil {
		writeError(w, r, s.log, err)
		return
	}
	results := make([]map[string]string, 0, len(res))
	for _, e := range res {
		m := map[string]string{"user_id": string(e.UserID)}
		if e.DisplayName != "" {
			m["display_name"] = e.DisplayName
		}
		if e.AvatarURL != "" {
			m["avatar_url"] = e.AvatarURL
		}
		results = append(results, m)
	}
	writeJSON(w, http.StatusOK, map[string]any{"results": results, "limited": limited})
}
