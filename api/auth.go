package api

import (
	"context"
	"net/http"
	"strings"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"

	"github.com/weftchat/weft/account"
)

const requesterKey ctxKey = iota + 100

// requester returns the authenticated user of a request that passed requireAuth.
func requester(r *http.Request) *account.Requester {
	return r.Context().Value(requesterKey).(*account.Requester)
}

// accessToken extracts the token: the Authorization header, or the
// deprecated access_token query parameter that older clients still send.
// When both are present the header wins.
func accessToken(r *http.Request) string {
	if h := r.Header.Get("Authorization"); h != "" {
		if tok, ok := strings.CutPrefix(h, "Bearer "); ok {
			return strings.TrimSpace(tok)
		}
	}
	return r.URL.Query().Get("access_token")
}

// requireAuth resolves the access token into a requester, then applies the
// per-user write rate limit.
func (s *server) requireAuth(next http.Handler) http.Handler { return s.authenticate(next, true) }

// requireAuthReading is requireAuth for a POST that only reads (its
// parameters are too big for a query string, as /keys/query's): it does
// not count against the write limit.
func (s *server) requireAuthReading(next http.Handler) http.Handler {
	return s.authenticate(next, false)
}

func (s *server) authenticate(next http.Handler, writeLimited bool) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tok := accessToken(r)
		if tok == "" {
			writeError(w, r, s.log, mautrix.MMissingToken.WithMessage("Missing access token"))
			return
		}
		req, err := s.opts.Accounts.Authenticate(r.Context(), tok)
		if err != nil {
			writeError(w, r, s.log, err)
			return
		}
		if writeLimited && r.Method != http.MethodGet && s.limits != nil && !s.exemptFromUserLimits(req) {
			if ok, retry := s.limits.writes.allow(string(req.UserID)); !ok {
				writeError(w, r, s.log, errLimitExceeded(retry))
				return
			}
		}
		s.opts.Accounts.TouchDevice(r.Context(), req, clientIP(r))
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), requesterKey, req)))
	})
}

func (s *server) exemptFromUserLimits(req *account.Requester) bool {
	if req.IsAdmin && s.opts.RateLimits.ExemptAdmins {
		return true
	}
	_, ok := s.exemptUsers[req.UserID]
	return ok
}

// limitByIP applies an IP-keyed bucket (login, registration).
func (s *server) limitByIP(pick func(*limiters) *rateLimiter) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if s.limits != nil {
				if ok, retry := pick(s.limits).allow(clientIP(r)); !ok {
					writeError(w, r, s.log, errLimitExceeded(retry))
					return
				}
			}
			next.ServeHTTP(w, r)
		})
	}
}

// limiters are the server's rate limit buckets (nil when limits are off).
type limiters struct {
	login, register, writes *rateLimiter
}

// RateLimits configures the buckets.
type RateLimits struct {
	Enabled      bool
	Login        Bucket
	Register     Bucket
	Writes       Bucket
	ExemptAdmins bool
	ExemptUsers  []id.UserID
}

// Bucket is tokens per second and burst.
type Bucket struct {
	PerSecond float64
	Burst     int
}
