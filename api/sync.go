package api

import (
	"context"
	"net/http"
	"strings"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"

	"github.com/weftchat/weft/syncapi"
)

// syncRoutes are /sync and the endpoints of what it delivers besides room
// events: typing, receipts, read markers, presence.
func (s *server) syncRoutes() []clientRoute {
	return []clientRoute{
		{method: "GET", path: "/sync", handler: s.sync, auth: true, r0: true},
		{method: "PUT", path: "/rooms/{roomId}/typing/{userId}", handler: s.typing, auth: true, r0: true},
		{method: "POST", path: "/rooms/{roomId}/receipt/{receiptType}/{eventId}", handler: s.sendReceipt, auth: true, r0: true},
		{method: "POST", path: "/rooms/{roomId}/read_markers", handler: s.setReadMarkers, auth: true, r0: true},
		{method: "GET", path: "/presence/{userId}/status", handler: s.getPresence, auth: true, r0: true},
		{method: "PUT", path: "/presence/{userId}/status", handler: s.putPresence, auth: true, r0: true},
	}
}

// GET /_matrix/client/v3/sync
func (s *server) sync(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	timeout, _, ok := s.queryInt(w, r, q, "timeout", 0)
	if !ok {
		return
	}
	fullState, _, ok := s.queryBool(w, r, q, "full_state")
	if !ok {
		return
	}
	me := requester(r)
	req := syncapi.Request{
		// Copies: a parked request keeps these, and the query's
		// substrings would keep the whole request line.
		User: me.UserID, Device: me.DeviceID, Since: strings.Clone(q.Get("since")),
		Timeout: time.Duration(timeout) * time.Millisecond, FullState: fullState,
		SetPresence: q.Get("set_presence"), Filter: strings.Clone(q.Get("filter")),
	}
	if !s.canPark(r) {
		resp, err := s.opts.Sync.Sync(r.Context(), req)
		if err != nil && r.Context().Err() != nil {
			return // the client went away
		}
		s.respond(w, r, resp, err)
		return
	}
	// A parked long-poll outlives r's context, which keeps the router's
	// state and ends when this handler returns.
	ctx := context.WithValue(context.Background(), requestIDKey, RequestID(r.Context()))
	resp, p, err := s.opts.Sync.Start(ctx, req)
	if p == nil {
		s.respond(w, r, resp, err)
		return
	}
	if s.park(w, r, p) {
		return
	}
	resp, err = p.Wait(r.Context())
	if err != nil && r.Context().Err() != nil {
		return
	}
	s.respond(w, r, resp, err)
}

// PUT /_matrix/client/v3/rooms/{roomId}/typing/{userId}
func (s *server) typing(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Typing  *bool `json:"typing"`
		Timeout int64 `json:"timeout"`
	}
	if err := decodeJSON(r, &req); err != nil {
		writeError(w, r, s.log, err)
		return
	}
	if req.Typing == nil {
		writeError(w, r, s.log, mautrix.MBadJSON.WithMessage("typing is required"))
		return
	}
	err := s.opts.Sync.SetTyping(r.Context(), requester(r).UserID, id.UserID(pathParam(r, "userId")), pathRoom(r),
		*req.Typing, time.Duration(req.Timeout)*time.Millisecond)
	s.respond(w, r, struct{}{}, err)
}
