package api

import (
	"net/http"

	"github.com/go-chi/chi/v5"
)

// clientRoute is one client-server endpoint.
type clientRoute struct {
	method, path string
	handler      http.HandlerFunc
	auth         bool // needs an access token
	// reads marks a POST that only reads: not counted as a write by the
	// per-user rate limit.
	reads bool
	// r0 marks endpoints that existed in the r0 API: they are also served
	// under /_matrix/client/r0 for clients still using those paths.
	r0 bool
	// ipLimit, when set, is the IP bucket applied before anything else.
	ipLimit func(*limiters) *rateLimiter
}

// mountClient registers routes under each API prefix they belong to, from
// one table, so r0 is an alias and never a copy.
func (s *server) mountClient(r chi.Router, prefix string, routes []clientRoute) {
	for _, rt := range routes {
		h := http.Handler(rt.handler)
		if rt.auth && rt.reads {
			h = s.requireAuthReading(h)
		} else if rt.auth {
			h = s.requireAuth(h)
		}
		if rt.ipLimit != nil {
			h = s.limitByIP(rt.ipLimit)(h)
		}
		r.Method(rt.method, prefix+"/v3"+rt.path, h)
		if rt.r0 {
			r.Method(rt.method, prefix+"/r0"+rt.path, h)
		}
	}
}

func loginLimit(l *limiters) *rateLimiter    { return l.login }
func registerLimit(l *limiters) *rateLimiter { return l.register }

// v3Routes are the /_matrix/client/v3 (and r0) endpoints.
func (s *server) v3Routes() []clientRoute {
	routes := []clientRoute{
		{method: "GET", path: "/login", handler: s.loginFlows, r0: true},
		{method: "POST", path: "/login", handler: s.login, r0: true, ipLimit: loginLimit},
		{method: "POST", path: "/refresh", handler: s.refresh, ipLimit: loginLimit},
		{method: "POST", path: "/logout", handler: s.logout, auth: true, r0: true},
		{method: "POST", path: "/logout/all", handler: s.logoutAll, auth: true, r0: true},
		{method: "POST", path: "/register", handler: s.register, r0: true, ipLimit: registerLimit},
		{method: "GET", path: "/register/available", handler: s.registerAvailable, r0: true, ipLimit: registerLimit},
		{method: "GET", path: "/account/whoami", handler: s.whoami, auth: true, r0: true},
		{method: "POST", path: "/account/password", handler: s.changePassword, auth: true, r0: true},
		{method: "POST", path: "/account/deactivate", handler: s.deactivate, auth: true, r0: true},
		{method: "GET", path: "/account/3pid", handler: s.threePIDs, auth: true, r0: true},
		{method: "GET", path: "/devices", handler: s.listDevices, auth: true, r0: true},
		{method: "GET", path: "/devices/{deviceId}", handler: s.getDevice, auth: true, r0: true},
		{method: "PUT", path: "/devices/{deviceId}", handler: s.putDevice, auth: true, r0: true},
		{method: "DELETE", path: "/devices/{deviceId}", handler: s.deleteDevice, auth: true, r0: true},
		{method: "POST", path: "/delete_devices", handler: s.deleteDevices, auth: true, r0: true},
		{method: "GET", path: "/profile/{userId}", handler: s.getProfile, r0: true},
		{method: "GET", path: "/profile/{userId}/displayname", handler: s.getDisplayName, r0: true},
		{method: "PUT", path: "/profile/{userId}/displayname", handler: s.putDisplayName, auth: true, r0: true},
		{method: "GET", path: "/profile/{userId}/avatar_url", handler: s.getAvatarURL, r0: true},
		{method: "PUT", path: "/profile/{userId}/avatar_url", handler: s.putAvatarURL, auth: true, r0: true},
		{method: "GET", path: "/user/{userId}/account_data/{type}", handler: s.getAccountData, auth: true, r0: true},
		{method: "PUT", path: "/user/{userId}/account_data/{type}", handler: s.putAccountData, auth: true, r0: true},
		{method: "GET", path: "/user/{userId}/rooms/{roomId}/account_data/{type}", handler: s.getAccountData, auth: true, r0: true},
		{method: "PUT", path: "/user/{userId}/rooms/{roomId}/account_data/{type}", handler: s.putAccountData, auth: true, r0: true},
		{method: "POST", path: "/user/{userId}/filter", handler: s.createFilter, auth: true, r0: true},
		{method: "GET", path: "/user/{userId}/filter/{filterId}", handler: s.getFilter, auth: true, r0: true},
		{method: "GET", path: "/capabilities", handler: s.capabilities, auth: true, r0: true},
		{method: "POST", path: "/user_directory/search", handler: s.searchUsers, auth: true, r0: true},
		{method: "GET", path: "/voip/turnServer", handler: s.turnServer, auth: true, r0: true},
	}
	if s.opts.Push != nil {
		routes = append(routes, s.pushRuleRoutes()...)
		routes = append(routes, s.pusherRoutes()...)
	}
	routes = append(routes, s.keyRoutes()...)
	routes = append(routes, s.keyBackupRoutes()...)
	if s.opts.Rooms != nil {
		routes = append(routes, s.roomRoutes()...)
		routes = append(routes, s.directoryRoutes()...)
	}
	if s.opts.Sync != nil {
		routes = append(routes, s.syncRoutes()...)
		routes = append(routes, s.toDeviceRoutes()...)
		routes = append(routes, s.notificationRoutes()...)
	}
	return routes
}

// mountV1 registers the /_matrix/client/v1 endpoints.
func (s *server) mountV1(r chi.Router) {
	if s.opts.Rooms != nil {
		r.With(s.requireAuth).Get("/_matrix/client/v1/rooms/{roomId}/timestamp_to_event", s.timestampToEvent)
	}
	r.With(s.limitByIP(registerLimit)).Get("/_matrix/client/v1/register/m.login.registration_token/validity", s.registrationTokenValidity)
}

// mountSynapseAdmin registers the Synapse-compatible admin endpoints that
// operators' scripts rely on.
func (s *server) mountSynapseAdmin(r chi.Router) {
	r.With(s.limitByIP(registerLimit)).Get("/_synapse/admin/v1/register", s.sharedSecretNonce)
	r.With(s.limitByIP(registerLimit)).Post("/_synapse/admin/v1/register", s.sharedSecretRegister)
}

// roomRoutes are the room endpoints.
func (s *server) roomRoutes() []clientRoute {
	return []clientRoute{
		{method: "POST", path: "/createRoom", handler: s.createRoom, auth: true, r0: true},
		{method: "PUT", path: "/rooms/{roomId}/send/{eventType}/{txnId}", handler: s.sendEvent, auth: true, r0: true},
		{method: "PUT", path: "/rooms/{roomId}/state/{eventType}", handler: s.putState, auth: true, r0: true},
		{method: "PUT", path: "/rooms/{roomId}/state/{eventType}/{stateKey}", handler: s.putState, auth: true, r0: true},
		{method: "GET", path: "/rooms/{roomId}/state/{eventType}", handler: s.getState, auth: true, r0: true},
		{method: "GET", path: "/rooms/{roomId}/state/{eventType}/{stateKey}", handler: s.getState, auth: true, r0: true},
		// An empty state key is often sent as a trailing slash.
		{method: "PUT", path: "/rooms/{roomId}/state/{eventType}/", handler: s.putState, auth: true, r0: true},
		{method: "GET", path: "/rooms/{roomId}/state/{eventType}/", handler: s.getState, auth: true, r0: true},
		{method: "GET", path: "/rooms/{roomId}/state", handler: s.getAllState, auth: true, r0: true},
		{method: "POST", path: "/rooms/{roomId}/join", handler: s.membershipHandler("join"), auth: true, r0: true},
		{method: "POST", path: "/join/{roomIdOrAlias}", handler: s.membershipHandler("join"), auth: true, r0: true},
		{method: "POST", path: "/knock/{roomIdOrAlias}", handler: s.membershipHandler("knock"), auth: true},
		{method: "POST", path: "/rooms/{roomId}/leave", handler: s.membershipHandler("leave"), auth: true, r0: true},
		{method: "POST", path: "/rooms/{roomId}/invite", handler: s.membershipHandler("invite"), auth: true, r0: true},
		{method: "POST", path: "/rooms/{roomId}/kick", handler: s.membershipHandler("kick"), auth: true, r0: true},
		{method: "POST", path: "/rooms/{roomId}/ban", handler: s.membershipHandler("ban"), auth: true, r0: true},
		{method: "POST", path: "/rooms/{roomId}/unban", handler: s.membershipHandler("unban"), auth: true, r0: true},
		{method: "GET", path: "/rooms/{roomId}/messages", handler: s.messages, auth: true, r0: true},
		{method: "GET", path: "/rooms/{roomId}/event/{eventId}", handler: s.getEvent, auth: true, r0: true},
		{method: "GET", path: "/rooms/{roomId}/members", handler: s.members, auth: true, r0: true},
		{method: "GET", path: "/rooms/{roomId}/joined_members", handler: s.joinedMembers, auth: true, r0: true},
		{method: "GET", path: "/joined_rooms", handler: s.joinedRooms, auth: true, r0: true},
		{method: "PUT", path: "/rooms/{roomId}/redact/{eventId}/{txnId}", handler: s.redact, auth: true, r0: true},
		{method: "GET", path: "/rooms/{roomId}/context/{eventId}", handler: s.roomContext, auth: true, r0: true},
		{method: "POST", path: "/rooms/{roomId}/forget", handler: s.forget, auth: true, r0: true},
		{method: "POST", path: "/rooms/{roomId}/upgrade", handler: s.upgradeRoom, auth: true, r0: true},
	}
}
