package api

import (
	"net/http"

	"github.com/go-chi/chi/v5"
	"maunium.net/go/mautrix/id"

	"github.com/weftchat/weft/room"
)

// mountRelations registers the /_matrix/client/v1 endpoints of event
// relationships, threads and spaces.
func (s *server) mountRelations(r chi.Router) {
	if s.opts.Rooms == nil {
		return
	}
	const v1 = "/_matrix/client/v1/rooms/{roomId}"
	auth := r.With(s.requireAuth)
	auth.Get(v1+"/relations/{eventId}", s.relations)
	auth.Get(v1+"/relations/{eventId}/{relType}", s.relations)
	auth.Get(v1+"/relations/{eventId}/{relType}/{eventType}", s.relations)
	auth.Get(v1+"/threads", s.threads)
	auth.Get(v1+"/hierarchy", s.hierarchy)
}

// GET /_matrix/client/v1/rooms/{roomId}/relations/{eventId}[/{relType}[/{eventType}]]
func (s *server) relations(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	dir := q.Get("dir")
	if dir != "" && dir != "b" && dir != "f" {
		writeError(w, r, s.log, matrixError("M_INVALID_PARAM", "dir must be b or f"))
		return
	}
	limit, _, ok := s.queryInt(w, r, q, "limit", 0)
	if !ok {
		return
	}
	recurse, recurseSet, ok := s.queryBool(w, r, q, "recurse")
	if !ok {
		return
	}
	me := requester(r)
	p := room.RelationsParams{
		User: me.UserID, RoomID: pathRoom(r), EventID: id.EventID(pathParam(r, "eventId")),
		RelType: pathParam(r, "relType"), EventType: pathParam(r, "eventType"),
		From: q.Get("from"), To: q.Get("to"), Forward: dir == "f", Limit: limit,
		Ignored: s.ignoredUsers(r, me.UserID),
	}
	if recurseSet {
		p.Recurse = &recurse
	}
	res, err := s.opts.Rooms.Relations(r.Context(), p)
	s.respond(w, r, res, err)
}

// GET /_matrix/client/v1/rooms/{roomId}/threads
func (s *server) threads(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	include := q.Get("include")
	if include != "" && include != "all" && include != "participated" {
		writeError(w, r, s.log, matrixError("M_INVALID_PARAM", "include must be all or participated"))
		return
	}
	limit, _, ok := s.queryInt(w, r, q, "limit", 1)
	if !ok {
		return
	}
	me := requester(r)
	res, err := s.opts.Rooms.Threads(r.Context(), room.ThreadsParams{
		User: me.UserID, RoomID: pathRoom(r), Participated: include == "participated",
		From: q.Get("from"), Limit: limit, Ignored: s.ignoredUsers(r, me.UserID),
	})
	s.respond(w, r, res, err)
}

// GET /_matrix/client/v1/rooms/{roomId}/hierarchy
func (s *server) hierarchy(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	limit, _, ok := s.queryInt(w, r, q, "limit", 1)
	if !ok {
		return
	}
	depth, depthSet, ok := s.queryInt(w, r, q, "max_depth", 0)
	if !ok {
		return
	}
	suggested, _, ok := s.queryBool(w, r, q, "suggested_only")
	if !ok {
		return
	}
	p := room.HierarchyParams{User: requester(r).UserID, RoomID: pathRoom(r), SuggestedOnly: suggested, Limit: limit, From: q.Get("from")}
	if depthSet {
		p.MaxDepth = &depth
	}
	res, err := s.opts.Rooms.SpaceHierarchy(r.Context(), p)
	s.respond(w, r, res, err)
}
