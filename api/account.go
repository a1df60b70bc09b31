package api

import (
	"encoding/json"
	"net/http"
	"time"

	"maunium.net/go/mautrix/id"

	"github.com/weftchat/weft/account"
)

// GET /_matrix/client/v3/account/whoami
func (s *server) whoami(w http.ResponseWriter, r *http.Request) {
	req := requester(r)
	writeJSON(w, http.StatusOK, map[string]any{"user_id": req.UserID, "device_id": req.DeviceID, "is_guest": req.IsGuest})
}

// POST /_matrix/client/v3/account/password (UIA): sets a new password and,
// unless logout_devices is false, logs out every other device.
func (s *server) changePassword(w http.ResponseWriter, r *http.Request) {
	var req struct {
		NewPassword   string          `json:"new_password"`
		LogoutDevices *bool           `json:"logout_devices"`
		Auth          json.RawMessage `json:"auth"`
	}
	if err := decodeJSON(r, &req); err != nil {
		writeError(w, r, s.log, err)
		return
	}
	me := requester(r)
	if req.NewPassword == "" {
		writeError(w, r, s.log, matrixError("M_MISSING_PARAM", "new_password is required"))
		return
	}
	if err := s.opts.Accounts.AuthorizeUser(r.Context(), "password", me.UserID, req.Auth); err != nil {
		writeError(w, r, s.log, err)
		return
	}
	logout := req.LogoutDevices == nil || *req.LogoutDevices
	if err := s.opts.Accounts.ChangePassword(r.Context(), me.UserID, req.NewPassword, logout, me.DeviceID); err != nil {
		writeError(w, r, s.log, err)
		return
	}
	writeJSON(w, http.StatusOK, struct{}{})
}

// POST /_matrix/client/v3/account/deactivate (UIA)
func (s *server) deactivate(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Auth json.RawMessage `json:"auth"`
	}
	if err := decodeJSON(r, &req); err != nil {
		writeError(w, r, s.log, err)
		return
	}
	me := requester(r)
	if err := s.opts.Accounts.AuthorizeUser(r.Context(), "deactivate", me.UserID, req.Auth); err != nil {
		writeError(w, r, s.log, err)
		return
	}
	if err := s.opts.Accounts.Deactivate(r.Context(), me.UserID); err != nil {
		writeError(w, r, s.log, err)
		return
	}
	// No identity server was ever bound, so nothing could be unbound.
	writeJSON(w, http.StatusOK, map[string]string{"id_server_unbind_result": "no-support"})
}

// GET /_matrix/client/v3/account/3pid: Weft stores no third-party IDs.
func (s *server) threePIDs(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]any{"threepids": []any{}})
}

func deviceBody(d account.Device) map[string]any {
	body := map[string]any{"device_id": d.DeviceID}
	if d.DisplayName != "" {
		body["display_name"] = d.DisplayName
	}
	if !d.LastSeenAt.IsZero() {
		body["last_seen_ts"] = d.LastSeenAt.UnixMilli()
	}
	if d.LastSeenIP != "" {
		body["last_seen_ip"] = d.LastSeenIP
	}
	return body
}

// GET /_matrix/client/v3/devices
func (s *server) listDevices(w http.ResponseWriter, r *http.Request) {
	ds, err := s.opts.Accounts.Devices(r.Context(), requester(r).UserID)
	if err != nil {
		writeError(w, r, s.log, err)
		return
	}
	out := make([]map[string]any, 0, len(ds))
	for _, d := range ds {
		out = append(out, deviceBody(d))
	}
	writeJSON(w, http.StatusOK, map[string]any{"devices": out})
}

// GET /_matrix/client/v3/devices/{deviceId}
func (s *server) getDevice(w http.ResponseWriter, r *http.Request) {
	d, err := s.opts.Accounts.Device(r.Context(), requester(r).UserID, id.DeviceID(pathParam(r, "deviceId")))
	if err != nil {
		writeError(w, r, s.log, err)
		return
	}
	writeJSON(w, http.StatusOK, deviceBody(*d))
}

// PUT /_matrix/client/v3/devices/{deviceId}: rename.
func (s *server) putDevice(w http.ResponseWriter, r *http.Request) {
	var req struct {
		DisplayName *string `json:"display_name"`
	}
	if err := decodeJSON(r, &req); err != nil {
		writeError(w, r, s.log, err)
		return
	}
	me := requester(r)
	dev := id.DeviceID(pathParam(r, "deviceId"))
	var err error
	if req.DisplayName != nil {
		err = s.opts.Accounts.RenameDevice(r.Context(), me.UserID, dev, *req.DisplayName)
	} else {
		_, err = s.opts.Accounts.Device(r.Context(), me.UserID, dev)
	}
	s.respond(w, r, struct{}{}, err)
}

// DELETE /_matrix/client/v3/devices/{deviceId} (UIA)
func (s *server) deleteDevice(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Auth json.RawMessage `json:"auth"`
	}
	// The body is optional on DELETE: a first attempt may send none.
	if r.ContentLength != 0 {
		if err := decodeJSON(r, &req); err != nil {
			writeError(w, r, s.log, err)
			return
		}
	}
	me := requester(r)
	dev := id.DeviceID(pathParam(r, "deviceId"))
	if _, err := s.opts.Accounts.Device(r.Context(), me.UserID, dev); err != nil {
		writeError(w, r, s.log, err)
		return
	}
	if err := s.opts.Accounts.DeleteDevicesWithAuth(r.Context(), me.UserID, []id.DeviceID{dev}, req.Auth); err != nil {
		writeError(w, r, s.log, err)
		return
	}
	writeJSON(w, http.StatusOK, struct{}{})
}

// POST /_matrix/client/v3/delete_devices (UIA)
func (s *server) deleteDevices(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Devices []id.DeviceID   `json:"devices"`
		Auth    json.RawMessage `json:"auth"`
	}
	if err := decodeJSON(r, &req); err != nil {
		writeError(w, r, s.log, err)
		return
	}
	if req.Devices == nil {
		writeError(w, r, s.log, matrixError("M_MISSING_PARAM", "devices is required"))
		return
	}
	if err := s.opts.Accounts.DeleteDevicesWithAuth(r.Context(), requester(r).UserID, req.Devices, req.Auth); err != nil {
		writeError(w, r, s.log, err)
		return
	}
	writeJSON(w, http.StatusOK, struct{}{})
}

// GET /_matrix/client/v3/capabilities
func (s *server) capabilities(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]any{"capabilities": map[string]any{
		"m.change_password": map[string]bool{"enabled": true},
		"m.set_displayname": map[string]bool{"enabled": true},
		"m.set_avatar_url":  map[string]bool{"enabled": true},
		"m.3pid_changes":    map[string]bool{"enabled": false},
		"m.get_login_token": map[string]bool{"enabled": false},
		"m.room_versions": map[string]any{
			"default":   "12",
			"available": map[string]string{"10": "stable", "11": "stable", "12": "stable"},
		},
	}})
}

// GET /_matrix/client/v3/voip/turnServer: TURN URIs with time-limited
// credentials (coturn's shared-secret scheme), or {} when none is configured.
func (s *server) turnServer(w http.ResponseWriter, r *http.Request) {
	if len(s.opts.TURN.URIs) == 0 {
		writeJSON(w, http.StatusOK, struct{}{})
		return
	}
	user, pass, ttl := account.TURNCredentials(s.opts.TURN.SharedSecret, string(requester(r).UserID), s.opts.TURN.Lifetime, time.Now())
	writeJSON(w, http.StatusOK, map[string]any{"username": user, "password": pass, "ttl": ttl, "uris": s.opts.TURN.URIs})
}

// TURN is the VoIP relay configuration.
type TURN struct {
	URIs         []string
	SharedSecret string
	Lifetime     time.Duration
}
