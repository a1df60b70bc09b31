package api

import (
	"net/http"
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
	resp, err := s.opts.Sync.Sync(r.Context(), syncapi.Request{
		User: me.UserID, Device: me.DeviceID, Since: q.Get("since"),
		Timeout: time.Duration(timeout) * time.Millisecond, FullState: fullState,
		SetPresence: q.Get("set_presence"), Filter: q.Get("filter"),
	})
	if err != nil && r.Context().Err() != nil {
		return // the client went away
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
