package api

import (
	"net/http"

	"maunium.net/go/mautrix"

	"github.com/weftchat/weft/push"
)

// pusherRoutes are GET /pushers and POST /pushers/set (with r0 aliases).
func (s *server) pusherRoutes() []clientRoute {
	return []clientRoute{
		{method: "GET", path: "/pushers", handler: s.getPushers, auth: true, r0: true},
		{method: "POST", path: "/pushers/set", handler: s.setPusher, auth: true, r0: true},
	}
}

// pushers is the pushers API, or an error when the push service's store
// keeps no pushers.
func (s *server) pushers() (*push.Pushers, error) {
	if ps := s.opts.Push.Pushers(); ps != nil {
		return ps, nil
	}
	return nil, matrixError("M_UNRECOGNIZED", "Pushers are not supported by this server")
}

// GET /_matrix/client/v3/pushers
func (s *server) getPushers(w http.ResponseWriter, r *http.Request) {
	ps, err := s.pushers()
	if err != nil {
		writeError(w, r, s.log, err)
		return
	}
	me := requester(r)
	list, err := ps.List(r.Context(), me.UserID, me.IsGuest)
	s.respond(w, r, mautrix.RespPushers{Pushers: list}, err)
}

// POST /_matrix/client/v3/pushers/set
func (s *server) setPusher(w http.ResponseWriter, r *http.Request) {
	ps, err := s.pushers()
	if err != nil {
		writeError(w, r, s.log, err)
		return
	}
	var req push.SetPusherRequest
	if err := decodeJSON(r, &req); err != nil {
		writeError(w, r, s.log, err)
		return
	}
	me := requester(r)
	err = ps.Set(r.Context(), me.UserID, me.DeviceID, me.IsGuest, req)
	s.respond(w, r, struct{}{}, err)
}
