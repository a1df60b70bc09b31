package api

import (
	"net/http"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"

	"github.com/weftchat/weft/account"
)

// GET /_matrix/client/v3/login: the login types this server accepts.
func (s *server) loginFlows(w http.ResponseWriter, r *http.Request) {
	flows := []map[string]string{{"type": "m.login.password"}}
	if s.opts.Accounts.JWTEnabled() {
		flows = append(flows, map[string]string{"type": "org.matrix.login.jwt"})
	}
	writeJSON(w, http.StatusOK, map[string]any{"flows": flows})
}

type loginRequest struct {
	Type       string `json:"type"`
	Identifier *struct {
		Type string `json:"type"`
		User string `json:"user"`
	} `json:"identifier"`
	User                     string `json:"user"` // deprecated, still sent by old clients
	Password                 string `json:"password"`
	Token                    string `json:"token"`
	DeviceID                 string `json:"device_id"`
	InitialDeviceDisplayName string `json:"initial_device_display_name"`
	RefreshToken             bool   `json:"refresh_token"`
}

// POST /_matrix/client/v3/login: password or JWT login; starts a session.
func (s *server) login(w http.ResponseWriter, r *http.Request) {
	var req loginRequest
	if err := decodeJSON(r, &req); err != nil {
		writeError(w, r, s.log, err)
		return
	}
	dev := account.DeviceParams{
		DeviceID:     id.DeviceID(req.DeviceID),
		DisplayName:  req.InitialDeviceDisplayName,
		WantsRefresh: req.RefreshToken,
		RemoteIP:     clientIP(r),
	}
	var creds *account.Credentials
	var err error
	switch req.Type {
	case "m.login.password":
		user := req.User
		if req.Identifier != nil {
			if req.Identifier.Type != "m.id.user" {
				writeError(w, r, s.log, matrixError("M_FORBIDDEN", "Only m.id.user identifiers are supported: this server has no third-party IDs"))
				return
			}
			user = req.Identifier.User
		}
		if user == "" {
			writeError(w, r, s.log, matrixError("M_MISSING_PARAM", "identifier.user is required"))
			return
		}
		creds, err = s.opts.Accounts.LoginPassword(r.Context(), user, req.Password, dev)
	case "org.matrix.login.jwt", "m.login.jwt":
		if !s.opts.Accounts.JWTEnabled() {
			writeError(w, r, s.log, mautrix.RespError{ErrCode: "M_UNKNOWN", Err: "JWT login is not enabled", StatusCode: 400})
			return
		}
		creds, err = s.opts.Accounts.LoginJWT(r.Context(), req.Token, dev)
	case "":
		err = matrixError("M_MISSING_PARAM", "type is required")
	default:
		err = mautrix.RespError{ErrCode: "M_UNKNOWN", Err: "Unknown login type " + req.Type, StatusCode: 400}
	}
	if err != nil {
		writeError(w, r, s.log, err)
		return
	}
	writeJSON(w, http.StatusOK, s.credentialsBody(creds))
}

// credentialsBody is the login/register success response.
func (s *server) credentialsBody(c *account.Credentials) map[string]any {
	body := map[string]any{
		"user_id":      c.UserID,
		"access_token": c.AccessToken,
		"device_id":    c.DeviceID,
		"home_server":  s.opts.ServerName,
		"well_known":   map[string]any{"m.homeserver": map[string]string{"base_url": s.opts.BaseURL}},
	}
	if c.RefreshToken != "" {
		body["refresh_token"] = c.RefreshToken
		body["expires_in_ms"] = c.ExpiresIn.Milliseconds()
	}
	return body
}

// POST /_matrix/client/v3/refresh: a new access token (and refresh token).
func (s *server) refresh(w http.ResponseWriter, r *http.Request) {
	var req struct {
		RefreshToken string `json:"refresh_token"`
	}
	if err := decodeJSON(r, &req); err != nil {
		writeError(w, r, s.log, err)
		return
	}
	if req.RefreshToken == "" {
		writeError(w, r, s.log, matrixError("M_MISSING_PARAM", "refresh_token is required"))
		return
	}
	creds, err := s.opts.Accounts.Refresh(r.Context(), req.RefreshToken)
	if err != nil {
		writeError(w, r, s.log, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"access_token":  creds.AccessToken,
		"refresh_token": creds.RefreshToken,
		"expires_in_ms": creds.ExpiresIn.Milliseconds(),
	})
}

// POST /_matrix/client/v3/logout: ends this device's session.
func (s *server) logout(w http.ResponseWriter, r *http.Request) {
	if err := s.opts.Accounts.Logout(r.Context(), requester(r)); err != nil {
		writeError(w, r, s.log, err)
		return
	}
	writeJSON(w, http.StatusOK, struct{}{})
}

// POST /_matrix/client/v3/logout/all: ends every session of the user.
func (s *server) logoutAll(w http.ResponseWriter, r *http.Request) {
	if err := s.opts.Accounts.LogoutAll(r.Context(), requester(r).UserID); err != nil {
		writeError(w, r, s.log, err)
		return
	}
	writeJSON(w, http.StatusOK, struct{}{})
}
