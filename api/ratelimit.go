package api

import (
	"math"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"golang.org/x/time/rate"
	"maunium.net/go/mautrix"
)

// minSweepInterval is the least number of allow calls between two sweeps of
// idle buckets. A sweep also waits for as many calls as it left buckets, so
// its cost stays O(1) per call however many keys are live, and the map holds
// at most about twice the live keys (or live keys plus minSweepInterval).
const minSweepInterval = 1024

// rateLimiter is a set of token buckets keyed by string (a client IP, or a
// user ID), built on golang.org/x/time/rate. Every bucket holds up to burst
// tokens and refills at perSecond tokens a second; a request takes one.
//
// All times come from the injected clock, so tests need no sleeping. There
// is no background goroutine: allow itself evicts idle buckets now and then.
// A bucket is idle once it is full again, and dropping it changes nothing, as
// a new bucket starts full too. The map therefore holds only the keys seen
// within the last burst/perSecond seconds, plus those seen since the last
// sweep.
type rateLimiter struct {
	limit rate.Limit
	burst int
	now   func() time.Time

	mu         sync.Mutex
	buckets    map[string]*rate.Limiter
	calls      int // allow calls since the last sweep
	kept       int // buckets left by the last sweep
	sweepEvery int // least number of calls between sweeps
}

// newRateLimiter returns a limiter that lets each key make burst requests at
// once and perSecond requests a second after that. perSecond may be
// math.Inf(1) for no limit. now is the clock; nil means time.Now. It panics
// on a perSecond that is not positive or a burst below 1: configuration must
// be checked before it gets here.
func newRateLimiter(perSecond float64, burst int, now func() time.Time) *rateLimiter {
	if !(perSecond > 0) || burst < 1 {
		panic("api: newRateLimiter: perSecond must be > 0 and burst >= 1, got " +
			strconv.FormatFloat(perSecond, 'g', -1, 64) + " and " + strconv.Itoa(burst))
	}
	if now == nil {
		now = time.Now
	}
	limit := rate.Limit(perSecond)
	if math.IsInf(perSecond, 1) {
		limit = rate.Inf
	}
	return &rateLimiter{
		limit:      limit,
		burst:      burst,
		now:        now,
		buckets:    make(map[string]*rate.Limiter),
		sweepEvery: minSweepInterval,
	}
}

// allow takes one token for key; when none is left it returns false and how
// long until one is available (always at least 1ns). A refused request takes
// nothing, so a client that keeps retrying too early is not locked out for
// longer.
func (l *rateLimiter) allow(key string) (ok bool, retryAfter time.Duration) {
	if l.limit == rate.Inf {
		return true, 0
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	t := l.now()

	l.calls++
	if l.calls >= max(l.sweepEvery, l.kept) {
		l.sweep(t)
	}

	b := l.buckets[key]
	if b == nil {
		b = rate.NewLimiter(l.limit, l.burst)
		l.buckets[key] = b
	}
	if b.AllowN(t, 1) {
		return true, 0
	}
	// AllowN refused, so the bucket is short of one token by at least 1ns
	// of refill. l.mu is held, so nobody else can take from it meanwhile.
	need := 1 - b.TokensAt(t)
	ns := math.Ceil(need / float64(l.limit) * float64(time.Second))
	switch {
	case ns >= math.MaxInt64:
		return false, time.Duration(math.MaxInt64)
	case ns < 1:
		return false, time.Nanosecond
	}
	return false, time.Duration(ns)
}

// sweep drops every bucket that is full at t. l.mu must be held.
func (l *rateLimiter) sweep(t time.Time) {
	full := float64(l.burst)
	for k, b := range l.buckets {
		if b.TokensAt(t) >= full {
			delete(l.buckets, k)
		}
	}
	l.calls = 0
	l.kept = len(l.buckets)
}

// size is the number of buckets held (for tests and metrics).
func (l *rateLimiter) size() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.buckets)
}

// errLimitExceeded builds the spec's 429 M_LIMIT_EXCEEDED error, telling the
// client to wait retryAfter: retry_after_ms in the body (whole milliseconds,
// rounded up, at least 1) and a Retry-After header (whole seconds, rounded
// up, at least 1).
func errLimitExceeded(retryAfter time.Duration) error {
	ms := ceilDiv(retryAfter, time.Millisecond)
	secs := ceilDiv(retryAfter, time.Second)
	return mautrix.RespError{
		ErrCode:     "M_LIMIT_EXCEEDED",
		Err:         "Too many requests",
		StatusCode:  http.StatusTooManyRequests,
		ExtraData:   map[string]any{"retry_after_ms": ms},
		ExtraHeader: map[string]string{"Retry-After": strconv.FormatInt(secs, 10)},
	}
}

// ceilDiv is d/unit rounded up, and at least 1.
func ceilDiv(d, unit time.Duration) int64 {
	n := int64(d / unit)
	if d%unit > 0 {
		n++
	}
	return max(n, 1)
}

// clientIP returns the host part of the request's client address
// (r.RemoteAddr without the port), as a key for per-client rate limits. An
// IPv4-mapped IPv6 address becomes plain IPv4 and an IPv6 zone is dropped, so
// one client has one key. X-Forwarded-For and the like are not trusted.
func clientIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr // no port, e.g. a unix socket
	}
	if a, err := netip.ParseAddr(host); err == nil {
		return a.Unmap().WithZone("").String()
	}
	return host
}
