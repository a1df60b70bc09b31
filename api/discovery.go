package api

import (
	"net/http"
)

// specVersions lists the spec versions Weft serves. Clients gate features on
// it: matrix-js-sdk and Element use authenticated media only from v1.11, and
// refuse servers without v1.1 or later. v1.11 is advertised since the media
// repository landed (authenticated media, the unauthenticated freeze).
// Known gaps inside these versions are listed in the open issues: end-to-end
// encryption (keys, to-device, device lists) and push.
var specVersions = []string{
	"r0.5.0", "r0.6.0", "r0.6.1",
	"v1.1", "v1.2", "v1.3", "v1.4", "v1.5", "v1.6", "v1.7", "v1.8", "v1.9", "v1.10", "v1.11",
}

// unstableFeatures lists the MSC flags Weft really implements.
var unstableFeatures = map[string]bool{}

// GET /_matrix/client/versions: the spec versions this server supports.
func (s *server) versions(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]any{
		"versions":          specVersions,
		"unstable_features": unstableFeatures,
	})
}

// GET /.well-known/matrix/client: where clients find the client-server API.
func (s *server) wellKnownClient(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]any{
		"m.homeserver": map[string]string{"base_url": s.opts.BaseURL},
	})
}

// GET /.well-known/matrix/server: federation delegation, when configured.
func (s *server) wellKnownServer(w http.ResponseWriter, r *http.Request) {
	if s.opts.WellKnownServer == "" {
		writeError(w, r, s.log, matrixError("M_NOT_FOUND", "No server delegation is configured"))
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"m.server": s.opts.WellKnownServer})
}

// GET /.well-known/matrix/support: the operator's contacts and help page; 404
// when neither is configured, as the spec says.
func (s *server) wellKnownSupport(w http.ResponseWriter, r *http.Request) {
	if len(s.opts.Support.Contacts) == 0 && s.opts.Support.SupportPage == "" {
		writeError(w, r, s.log, matrixError("M_NOT_FOUND", "No support information is configured"))
		return
	}
	writeJSON(w, http.StatusOK, s.opts.Support)
}

// GET /health: 200 "OK" when the database answers, 503 otherwise. Load
// balancers and the e2e harness poll it.
func (s *server) health(w http.ResponseWriter, r *http.Request) {
	if s.opts.Health != nil {
		if err := s.opts.Health.Ping(r.Context()); err != nil {
			s.log.WarnContext(r.Context(), "health check failed", "request_id", RequestID(r.Context()), "err", err)
			e := matrixError("M_UNKNOWN", "Database unavailable")
			e.StatusCode = http.StatusServiceUnavailable
			writeError(w, r, s.log, e)
			return
		}
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	_, _ = w.Write([]byte("OK"))
}
