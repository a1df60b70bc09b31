package api

import (
	"net/http"

	"maunium.net/go/mautrix/id"

	"github.com/weftchat/weft/room"
)

// directoryRoutes are the room directory (aliases, published rooms), the
// third-party lookup stubs and content reports.
func (s *server) directoryRoutes() []clientRoute {
	return []clientRoute{
		{method: "PUT", path: "/directory/room/{roomAlias}", handler: s.putAlias, auth: true, r0: true},
		{method: "GET", path: "/directory/room/{roomAlias}", handler: s.getAlias, r0: true},
		{method: "DELETE", path: "/directory/room/{roomAlias}", handler: s.deleteAlias, auth: true, r0: true},
		{method: "GET", path: "/rooms/{roomId}/aliases", handler: s.roomAliases, auth: true, r0: true},
		{method: "GET", path: "/directory/list/room/{roomId}", handler: s.getDirectoryVisibility, r0: true},
		{method: "PUT", path: "/directory/list/room/{roomId}", handler: s.putDirectoryVisibility, auth: true, r0: true},
		{method: "GET", path: "/publicRooms", handler: s.getPublicRooms, r0: true},
		{method: "POST", path: "/publicRooms", handler: s.postPublicRooms, auth: true, r0: true},
		{method: "GET", path: "/thirdparty/protocols", handler: s.thirdPartyProtocols, auth: true, r0: true},
		{method: "GET", path: "/thirdparty/protocol/{protocol}", handler: s.thirdPartyUnknownProtocol, auth: true, r0: true},
		{method: "GET", path: "/thirdparty/location/{protocol}", handler: s.thirdPartyUnknownProtocol, auth: true, r0: true},
		{method: "GET", path: "/thirdparty/user/{protocol}", handler: s.thirdPartyUnknownProtocol, auth: true, r0: true},
		{method: "GET", path: "/thirdparty/location", handler: s.thirdPartyNoMatches, auth: true, r0: true},
		{method: "GET", path: "/thirdparty/user", handler: s.thirdPartyNoMatches, auth: true, r0: true},
		{method: "POST", path: "/rooms/{roomId}/report/{eventId}", handler: s.reportEvent, auth: true, r0: true},
		{method: "POST", path: "/rooms/{roomId}/report", handler: s.reportRoom, auth: true},
	}
}

// PUT /_matrix/client/v3/directory/room/{roomAlias}
func (s *server) putAlias(w http.ResponseWriter, r *http.Request) {
	var body struct {
		RoomID *id.RoomID `json:"room_id"`
	}
	if err := decodeJSON(r, &body); err != nil {
		writeError(w, r, s.log, err)
		return
	}
	if body.RoomID == nil {
		writeError(w, r, s.log, matrixError("M_MISSING_PARAM", "room_id is required"))
		return
	}
	if err := s.opts.Rooms.CreateAlias(r.Context(), requester(r).UserID, pathParam(r, "roomAlias"), *body.RoomID); err != nil {
		writeError(w, r, s.log, err)
		return
	}
	writeJSON(w, http.StatusOK, struct{}{})
}

// GET /_matrix/client/v3/directory/room/{roomAlias}
func (s *server) getAlias(w http.ResponseWriter, r *http.Request) {
	roomID, servers, err := s.opts.Rooms.ResolveAlias(r.Context(), pathParam(r, "roomAlias"))
	s.respond(w, r, map[string]any{"room_id": roomID, "servers": servers}, err)
}

// DELETE /_matrix/client/v3/directory/room/{roomAlias}
func (s *server) deleteAlias(w http.ResponseWriter, r *http.Request) {
	me := requester(r)
	if err := s.opts.Rooms.DeleteAlias(r.Context(), me.UserID, me.IsAdmin, pathParam(r, "roomAlias")); err != nil {
		writeError(w, r, s.log, err)
		return
	}
	writeJSON(w, http.StatusOK, struct{}{})
}

// GET /_matrix/client/v3/rooms/{roomId}/aliases
func (s *server) roomAliases(w http.ResponseWriter, r *http.Request) {
	me := requester(r)
	aliases, err := s.opts.Rooms.LocalAliases(r.Context(), me.UserID, me.IsAdmin, pathRoom(r))
	s.respond(w, r, map[string]any{"aliases": aliases}, err)
}

// GET /_matrix/client/v3/directory/list/room/{roomId}
func (s *server) getDirectoryVisibility(w http.ResponseWriter, r *http.Request) {
	v, err := s.opts.Rooms.DirectoryVisibility(r.Context(), pathRoom(r))
	s.respond(w, r, map[string]string{"visibility": v}, err)
}

// PUT /_matrix/client/v3/directory/list/room/{roomId}
func (s *server) putDirectoryVisibility(w http.ResponseWriter, r *http.Request) {
	var body struct {
		Visibility string `json:"visibility"`
	}
	if err := decodeJSON(r, &body); err != nil {
		writeError(w, r, s.log, err)
		return
	}
	me := requester(r)
	if err := s.opts.Rooms.SetDirectoryVisibility(r.Context(), me.UserID, me.IsAdmin, pathRoom(r), body.Visibility); err != nil {
		writeError(w, r, s.log, err)
		return
	}
	writeJSON(w, http.StatusOK, struct{}{})
}

// GET /_matrix/client/v3/publicRooms: no access token needed.
func (s *server) getPublicRooms(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	p := room.PublicRoomsParams{Since: q.Get("since"), Server: q.Get("server"), ThirdPartyInstanceID: q.Get("third_party_instance_id")}
	limit, _, ok := s.queryInt(w, r, q, "limit", 0)
	if !ok {
		return
	}
	p.Limit = limit
	s.writePublicRooms(w, r, p)
}

// POST /_matrix/client/v3/publicRooms
func (s *server) postPublicRooms(w http.ResponseWriter, r *http.Request) {
	var body struct {
		Limit  int    `json:"limit"`
		Since  string `json:"since"`
		Filter *struct {
			GenericSearchTerm string    `json:"generic_search_term"`
			RoomTypes         []*string `json:"room_types"`
		} `json:"filter"`
		IncludeAllNetworks   bool   `json:"include_all_networks"`
		ThirdPartyInstanceID string `json:"third_party_instance_id"`
	}
	if err := decodeJSON(r, &body); err != nil {
		writeError(w, r, s.log, err)
		return
	}
	p := room.PublicRoomsParams{
		Limit: body.Limit, Since: body.Since, Server: r.URL.Query().Get("server"),
		ThirdPartyInstanceID: body.ThirdPartyInstanceID,
	}
	if body.Filter != nil {
		p.SearchTerm, p.RoomTypes = body.Filter.GenericSearchTerm, body.Filter.RoomTypes
	}
	s.writePublicRooms(w, r, p)
}

func (s *server) writePublicRooms(w http.ResponseWriter, r *http.Request, p room.PublicRoomsParams) {
	res, err := s.opts.Rooms.PublicRooms(r.Context(), p)
	s.respond(w, r, res, err)
}

// GET /_matrix/client/v3/thirdparty/protocols: no bridges yet, so none.
// Element asks for this before showing the room directory.
func (s *server) thirdPartyProtocols(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, struct{}{})
}

// GET /_matrix/client/v3/thirdparty/{protocol,location,user}/{protocol}:
// every protocol is unknown.
func (s *server) thirdPartyUnknownProtocol(w http.ResponseWriter, r *http.Request) {
	writeError(w, r, s.log, matrixError("M_NOT_FOUND", "Unknown protocol "+pathParam(r, "protocol")))
}

// GET /_matrix/client/v3/thirdparty/location, /thirdparty/user: reverse
// lookups find nothing without bridges.
func (s *server) thirdPartyNoMatches(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, []struct{}{})
}

// POST /_matrix/client/v3/rooms/{roomId}/report/{eventId}
func (s *server) reportEvent(w http.ResponseWriter, r *http.Request) {
	var body struct {
		Reason string `json:"reason"`
		Score  *int   `json:"score"`
	}
	if r.ContentLength != 0 {
		if err := decodeJSON(r, &body); err != nil {
			writeError(w, r, s.log, err)
			return
		}
	}
	err := s.opts.Rooms.ReportEvent(r.Context(), requester(r).UserID, pathRoom(r), id.EventID(pathParam(r, "eventId")), body.Reason, body.Score)
	s.respond(w, r, struct{}{}, err)
}

// POST /_matrix/client/v3/rooms/{roomId}/report (spec v1.13). The spec
// makes reason required; a missing one (mautrix omits an empty reason) is
// taken as blank, which the spec allows.
func (s *server) reportRoom(w http.ResponseWriter, r *http.Request) {
	var body struct {
		Reason string `json:"reason"`
	}
	if r.ContentLength != 0 {
		if err := decodeJSON(r, &body); err != nil {
			writeError(w, r, s.log, err)
			return
		}
	}
	if err := s.opts.Rooms.ReportRoom(r.Context(), requester(r).UserID, pathRoom(r), body.Reason); err != nil {
		writeError(w, r, s.log, err)
		return
	}
	writeJSON(w, http.StatusOK, struct{}{})
}
