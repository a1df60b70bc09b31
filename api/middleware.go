package api

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"log/slog"
	"net/http"
	"runtime/debug"
	"strconv"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/go-chi/chi/v5/middleware"
	"github.com/prometheus/client_golang/prometheus"
)

type ctxKey int

const requestIDKey ctxKey = iota

// RequestID returns the id given to the request being served ("" outside one).
func RequestID(ctx context.Context) string {
	s, _ := ctx.Value(requestIDKey).(string)
	return s
}

// requestID gives each request a random id, echoed in X-Request-Id so an
// operator can find a user's failing request in the logs.
func requestID(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var b [8]byte
		_, _ = rand.Read(b[:])
		rid := hex.EncodeToString(b[:])
		w.Header().Set("X-Request-Id", rid)
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), requestIDKey, rid)))
	})
}

// setCORS sets the spec's CORS headers, which every response carries.
func setCORS(h http.Header) {
	for k, v := range corsHeaders {
		h[k] = v
	}
}

// corsHeaders are the spec's CORS headers. Shared: never modify.
var corsHeaders = http.Header{
	"Access-Control-Allow-Origin":   {"*"},
	"Access-Control-Allow-Methods":  {"GET, HEAD, POST, PUT, DELETE, OPTIONS"},
	"Access-Control-Allow-Headers":  {"X-Requested-With, Content-Type, Authorization"},
	"Access-Control-Expose-Headers": {"X-Request-Id"},
}

// cors adds the spec's CORS headers to every response and answers every
// OPTIONS request itself, before routing and without authentication: the
// spec forbids running endpoint logic for OPTIONS.
func cors(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		setCORS(h)
		if r.Method == http.MethodOptions {
			h.Set("Access-Control-Max-Age", "86400")
			w.WriteHeader(http.StatusOK)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// accessLog writes one structured line per request. It logs the path without
// the query string: the deprecated access_token parameter must never reach a log.
func accessLog(log *slog.Logger) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			start := time.Now()
			ww := middleware.NewWrapResponseWriter(w, r.ProtoMajor)
			d := &detached{}
			r = r.WithContext(context.WithValue(r.Context(), detachKey, d))
			next.ServeHTTP(ww, r)
			// Capture values, not r: a parked request keeps this closure.
			rid, method, path, route, remote := RequestID(r.Context()), r.Method, r.URL.Path, routePattern(r), r.RemoteAddr
			write := func(status int, bytes int64) {
				if status == 0 {
					status = http.StatusOK
				}
				level := slog.LevelInfo
				if status >= 500 {
					level = slog.LevelWarn
				}
				if !log.Enabled(context.Background(), level) {
					return // and build no attributes
				}
				log.Log(context.Background(), level, "request",
					"request_id", rid,
					"method", method,
					"path", path,
					"route", route,
					"status", status,
					"bytes", bytes,
					"duration_ms", float64(time.Since(start).Microseconds())/1000,
					"remote", remote,
				)
			}
			if !d.finish(write) {
				write(ww.Status(), int64(ww.BytesWritten()))
			}
		})
	}
}

// recoverer turns a panic into a 500 M_UNKNOWN, logged once with the request
// id and stack. http.ErrAbortHandler is re-raised: it means "drop the
// connection", which net/http does quietly.
func recoverer(log *slog.Logger) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			defer func() {
				rec := recover()
				if rec == nil {
					return
				}
				if rec == http.ErrAbortHandler {
					panic(rec)
				}
				log.ErrorContext(r.Context(), "panic while serving request",
					"request_id", RequestID(r.Context()), "method", r.Method, "path", r.URL.Path,
					"panic", rec, "stack", string(debug.Stack()))
				e := matrixError("M_UNKNOWN", "Internal server error")
				writeJSON(w, http.StatusInternalServerError, &e)
			}()
			next.ServeHTTP(w, r)
		})
	}
}

// limitBody caps every request body at max bytes. A declared Content-Length
// over the cap is refused before reading; a body that grows past it while
// being read fails in decodeJSON with M_TOO_LARGE.
func limitBody(max int64) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.ContentLength > max {
				e := matrixError("M_TOO_LARGE", "Request body is larger than "+strconv.FormatInt(max, 10)+" bytes")
				writeJSON(w, http.StatusRequestEntityTooLarge, &e)
				return
			}
			r.Body = http.MaxBytesReader(w, r.Body, max)
			next.ServeHTTP(w, r)
		})
	}
}

// routePattern is the chi route that matched ("" before routing or for 404s).
func routePattern(r *http.Request) string {
	if rc := chi.RouteContext(r.Context()); rc != nil {
		return rc.RoutePattern()
	}
	return ""
}

// httpMetrics counts requests and their latency by route pattern, never by
// raw path, so user and room IDs do not explode the label space.
type httpMetrics struct {
	requests *prometheus.CounterVec
	latency  *prometheus.HistogramVec
}

func newHTTPMetrics(reg prometheus.Registerer) *httpMetrics {
	m := &httpMetrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "weft_http_requests_total",
			Help: "HTTP requests served, by method, route pattern and status code.",
		}, []string{"method", "route", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "weft_http_request_duration_seconds",
			Help:    "Time to serve HTTP requests, by method and route pattern.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}, []string{"method", "route"}),
	}
	reg.MustRegister(m.requests, m.latency)
	return m
}

func (m *httpMetrics) middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		ww := middleware.NewWrapResponseWriter(w, r.ProtoMajor)
		next.ServeHTTP(ww, r)
		route := routePattern(r)
		if route == "" {
			route = "unmatched"
		}
		method := r.Method
		observe := func(status int, _ int64) {
			if status == 0 {
				status = http.StatusOK
			}
			m.requests.WithLabelValues(method, route, strconv.Itoa(status)).Inc()
			m.latency.WithLabelValues(method, route).Observe(time.Since(start).Seconds())
		}
		if !detachOf(r).finish(observe) {
			observe(ww.Status(), 0)
		}
	})
}
