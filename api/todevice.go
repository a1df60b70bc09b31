package api

import (
	"encoding/json"
	"errors"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"
)

// toDeviceRoutes are send-to-device messaging and GET /keys/changes, the
// parts of end-to-end encryption that /sync delivers. It also registers
// weft_to_device_dropped_total with the router's metrics: the sync
// service counts the messages it drops, and the router holds the
// registry.
func (s *server) toDeviceRoutes() []clientRoute {
	if s.opts.Metrics != nil {
		c := prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "weft_to_device_dropped_total",
			Help: "To-device messages dropped, oldest first, because their device had too many waiting.",
		}, func() float64 { return float64(s.opts.Sync.ToDeviceDropped()) })
		var dup prometheus.AlreadyRegisteredError
		if err := s.opts.Metrics.Register(c); err != nil && !errors.As(err, &dup) {
			s.log.Error("registering the to-device metrics", "err", err)
		}
	}
	return []clientRoute{
		{method: "PUT", path: "/sendToDevice/{eventType}/{txnId}", handler: s.sendToDevice, auth: true, r0: true},
		{method: "GET", path: "/keys/changes", handler: s.keyChanges, auth: true, r0: true},
	}
}

// PUT /_matrix/client/v3/sendToDevice/{eventType}/{txnId}
func (s *server) sendToDevice(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Messages map[id.UserID]map[id.DeviceID]json.RawMessage `json:"messages"`
	}
	if err := decodeJSON(r, &req); err != nil {
		writeError(w, r, s.log, err)
		return
	}
	if req.Messages == nil {
		writeError(w, r, s.log, mautrix.MBadJSON.WithMessage("messages is required"))
		return
	}
	me := requester(r)
	err := s.opts.Sync.SendToDevice(r.Context(), me.UserID, me.DeviceID, pathParam(r, "eventType"), pathParam(r, "txnId"), req.Messages)
	s.respond(w, r, struct{}{}, err)
}

// GET /_matrix/client/v3/keys/changes?from=&to=
func (s *server) keyChanges(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	from := q.Get("from")
	if from == "" {
		writeError(w, r, s.log, matrixError("M_MISSING_PARAM", "from is required"))
		return
	}
	resp, err := s.opts.Sync.KeyChanges(r.Context(), requester(r).UserID, from, q.Get("to"))
	s.respond(w, r, resp, err)
}
