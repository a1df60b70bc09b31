package api

import (
	"encoding/json"
	"net/http"

	"maunium.net/go/mautrix/id"

	"github.com/weftchat/weft/account"
)

// POST /_matrix/client/v3/register: user-interactive registration.
func (s *server) register(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Username                 string          `json:"username"`
		Password                 string          `json:"password"`
		DeviceID                 string          `json:"device_id"`
		InitialDeviceDisplayName string          `json:"initial_device_display_name"`
		InhibitLogin             bool            `json:"inhibit_login"`
		RefreshToken             bool            `json:"refresh_token"`
		Auth                     json.RawMessage `json:"auth"`
	}
	if err := decodeJSON(r, &req); err != nil {
		writeError(w, r, s.log, err)
		return
	}
	kind := r.URL.Query().Get("kind")
	if kind != "" && kind != "user" && kind != "guest" {
		writeError(w, r, s.log, matrixError("M_INVALID_PARAM", "kind must be user or guest"))
		return
	}
	creds, err := s.opts.Accounts.Register(r.Context(), account.RegisterParams{
		Username: req.Username,
		Password: req.Password,
		Device: account.DeviceParams{
			DeviceID:     id.DeviceID(req.DeviceID),
			DisplayName:  req.InitialDeviceDisplayName,
			WantsRefresh: req.RefreshToken,
			RemoteIP:     clientIP(r),
		},
		InhibitLogin: req.InhibitLogin,
		Guest:        kind == "guest",
		Auth:         req.Auth,
	})
	if err != nil {
		writeError(w, r, s.log, err)
		return
	}
	if creds.AccessToken == "" {
		writeJSON(w, http.StatusOK, map[string]any{"user_id": creds.UserID, "home_server": s.opts.ServerName})
		return
	}
	writeJSON(w, http.StatusOK, s.credentialsBody(creds))
}

// GET /_matrix/client/v3/register/available: is this username free?
func (s *server) registerAvailable(w http.ResponseWriter, r *http.Request) {
	username := r.URL.Query().Get("username")
	if username == "" {
		writeError(w, r, s.log, matrixError("M_MISSING_PARAM", "username is required"))
		return
	}
	if err := s.opts.Accounts.UsernameAvailable(r.Context(), username); err != nil {
		writeError(w, r, s.log, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]bool{"available": true})
}

// GET /_matrix/client/v1/register/m.login.registration_token/validity
func (s *server) registrationTokenValidity(w http.ResponseWriter, r *http.Request) {
	token := r.URL.Query().Get("token")
	if token == "" {
		writeError(w, r, s.log, matrixError("M_MISSING_PARAM", "token is required"))
		return
	}
	if s.opts.RegistrationMode != "token" {
		writeError(w, r, s.log, matrixError("M_FORBIDDEN", "Registration tokens are not in use on this server"))
		return
	}
	ok, err := s.opts.Accounts.RegistrationTokenValid(r.Context(), token)
	s.respond(w, r, map[string]bool{"valid": ok}, err)
}

// GET /_synapse/admin/v1/register: a nonce for shared-secret registration.
func (s *server) sharedSecretNonce(w http.ResponseWriter, r *http.Request) {
	if !s.opts.Accounts.SharedSecretEnabled() {
		writeError(w, r, s.log, matrixError("M_UNRECOGNIZED", "Shared-secret registration is not enabled"))
		return
	}
	nonce, err := s.opts.Accounts.NewRegistrationNonce(r.Context())
	s.respond(w, r, map[string]string{"nonce": nonce}, err)
}

// POST /_synapse/admin/v1/register: Synapse-compatible shared-secret registration.
func (s *server) sharedSecretRegister(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Nonce       string `json:"nonce"`
		Username    string `json:"username"`
		DisplayName string `json:"displayname"`
		Password    string `json:"password"`
		Admin       bool   `json:"admin"`
		MAC         string `json:"mac"`
	}
	if err := decodeJSON(r, &req); err != nil {
		writeError(w, r, s.log, err)
		return
	}
	creds, err := s.opts.Accounts.RegisterWithSharedSecret(r.Context(), account.SharedSecretParams{
		Nonce: req.Nonce, Username: req.Username, DisplayName: req.DisplayName,
		Password: req.Password, MAC: req.MAC, Admin: req.Admin,
	})
	if err != nil {
		writeError(w, r, s.log, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"user_id": creds.UserID, "access_token": creds.AccessToken,
		"device_id": creds.DeviceID, "home_server": s.opts.ServerName,
	})
}
