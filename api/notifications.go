package api

import (
	"net/http"

	"github.com/weftchat/weft/syncapi"
)

// notificationRoutes are GET /notifications (and its r0 alias).
func (s *server) notificationRoutes() []clientRoute {
	return []clientRoute{
		{method: "GET", path: "/notifications", handler: s.notifications, auth: true, r0: true},
	}
}

// GET /_matrix/client/v3/notifications
func (s *server) notifications(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	limit, _, ok := s.queryInt(w, r, q, "limit", 0)
	if !ok {
		return
	}
	me := requester(r)
	res, err := s.opts.Sync.Notifications(r.Context(), syncapi.NotificationsRequest{
		User: me.UserID, From: q.Get("from"), Limit: limit, Only: q.Get("only"),
		Ignored: s.ignoredUsers(r, me.UserID),
	})
	s.respond(w, r, res, err)
}
