// Package api is Weft's client-server HTTP surface: the chi router, the
// middleware every request passes through, the mapping of Matrix errors to
// HTTP statuses, and one file per endpoint group. Handlers are thin: decode,
// validate, one domain call, encode.
package api

import (
	"context"
	"log/slog"
	"net/http"
	"net/netip"

	"github.com/go-chi/chi/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"maunium.net/go/mautrix/id"

	"github.com/weftchat/weft/account"
	"github.com/weftchat/weft/media"
	"github.com/weftchat/weft/push"
	"github.com/weftchat/weft/room"
	"github.com/weftchat/weft/syncapi"
)

// HealthChecker reports whether the server can serve (the database answers).
type HealthChecker interface {
	Ping(ctx context.Context) error
}

// Options is everything the router needs; cmd/weft builds it from the config.
type Options struct {
	ServerName string
	// BaseURL is the client-facing URL served in .well-known/matrix/client.
	BaseURL string
	// WellKnownServer is the m.server delegation; empty means 404.
	WellKnownServer string
	Support         Support
	MaxBodyBytes    int64
	// TrustedProxies are reverse proxies whose X-Forwarded-For is believed.
	TrustedProxies []netip.Prefix

	// Accounts is the account domain: users, devices, tokens, profiles.
	Accounts *account.Service
	// Rooms is the room domain; nil leaves the room endpoints out.
	Rooms *room.Service
	// Sync serves /sync and typing; nil leaves them out.
	Sync *syncapi.Service
	// Listener, when the HTTP server serves on it, lets idle long-polls
	// give their goroutines back while they wait (longpoll.go).
	Listener *Listener
	// Push is the push rules service.
	Push *push.Service
	// Media is the media repository; nil leaves its endpoints out.
	Media *media.Service
	// URLPreview serves preview_url; nil answers that previews are off.
	URLPreview       URLPreviewer
	RegistrationMode string
	RateLimits       RateLimits
	TURN             TURN

	Logger *slog.Logger
	Health HealthChecker
	// Metrics receives the HTTP metrics; Gatherer serves /metrics. Either
	// may be nil to disable metrics.
	Metrics  prometheus.Registerer
	Gatherer prometheus.Gatherer
}

// Support is the /.well-known/matrix/support document (spec v1.10).
type Support struct {
	Contacts    []SupportContact `json:"contacts,omitempty"`
	SupportPage string           `json:"support_page,omitempty"`
}

// SupportContact is one way to reach the operator.
type SupportContact struct {
	MatrixID     string `json:"matrix_id,omitempty"`
	EmailAddress string `json:"email_address,omitempty"`
	Role         string `json:"role"`
}

// server carries the handlers' dependencies.
type server struct {
	opts        Options
	log         *slog.Logger
	limits      *limiters // nil when rate limits are off
	exemptUsers map[id.UserID]struct{}
}

// NewRouter builds the whole HTTP handler.
func NewRouter(opts Options) http.Handler {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	s := &server{opts: opts, log: opts.Logger, exemptUsers: map[id.UserID]struct{}{}}
	if rl := opts.RateLimits; rl.Enabled {
		s.limits = &limiters{
			login:    newRateLimiter(rl.Login.PerSecond, rl.Login.Burst, nil),
			register: newRateLimiter(rl.Register.PerSecond, rl.Register.Burst, nil),
			writes:   newRateLimiter(rl.Writes.PerSecond, rl.Writes.Burst, nil),
		}
		for _, u := range rl.ExemptUsers {
			s.exemptUsers[u] = struct{}{}
		}
	}
	r := chi.NewRouter()
	r.Use(realIP(opts.TrustedProxies), requestID, accessLog(s.log))
	if opts.Metrics != nil {
		r.Use(newHTTPMetrics(opts.Metrics).middleware)
	}
	r.Use(recoverer(s.log), cors, s.limitBodies(opts.MaxBodyBytes))

	r.NotFound(func(w http.ResponseWriter, r *http.Request) {
		writeError(w, r, s.log, matrixError("M_UNRECOGNIZED", "Unrecognized request"))
	})
	r.MethodNotAllowed(func(w http.ResponseWriter, r *http.Request) {
		e := matrixError("M_UNRECOGNIZED", "Method "+r.Method+" is not allowed on this endpoint")
		e.StatusCode = http.StatusMethodNotAllowed
		writeError(w, r, s.log, e)
	})

	r.Get("/_matrix/client/versions", s.versions)
	r.Get("/.well-known/matrix/client", s.wellKnownClient)
	r.Get("/.well-known/matrix/server", s.wellKnownServer)
	r.Get("/.well-known/matrix/support", s.wellKnownSupport)
	r.Get("/health", s.health)
	if opts.Accounts != nil {
		s.mountClient(r, "/_matrix/client", s.v3Routes())
		s.mountV1(r)
		s.mountRelations(r)
		s.mountSynapseAdmin(r)
		if opts.Media != nil {
			s.mountMedia(r)
		}
	}
	if opts.Gatherer != nil {
		r.Method(http.MethodGet, "/metrics", promhttp.HandlerFor(opts.Gatherer, promhttp.HandlerOpts{}))
	}
	return r
}
