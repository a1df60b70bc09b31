package api

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"maunium.net/go/mautrix"
)

// fakeClock is a clock that only moves when told to.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{t: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
}

func (c *fakeClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func mustAllow(t *testing.T, l *rateLimiter, key string) {
	t.Helper()
	if ok, retry := l.allow(key); !ok {
		t.Fatalf("allow(%q) refused, retry after %v; want allowed", key, retry)
	}
}

func mustRefuse(t *testing.T, l *rateLimiter, key string, wantRetry time.Duration) {
	t.Helper()
	ok, retry := l.allow(key)
	if ok {
		t.Fatalf("allow(%q) allowed; want refused", key)
	}
	if retry != wantRetry {
		t.Fatalf("allow(%q) retry after %v; want %v", key, retry, wantRetry)
	}
}

func TestRateLimitBurstThenRefusal(t *testing.T) {
	clk := newFakeClock()
	l := newRateLimiter(2, 3, clk.now) // one token every 500ms
	for range 3 {
		mustAllow(t, l, "a")
	}
	mustRefuse(t, l, "a", 500*time.Millisecond)
	// A refusal takes nothing: asking again at once gives the same answer.
	mustRefuse(t, l, "a", 500*time.Millisecond)

	clk.advance(200 * time.Millisecond)
	mustRefuse(t, l, "a", 300*time.Millisecond)
}

func TestRateLimitRefill(t *testing.T) {
	clk := newFakeClock()
	l := newRateLimiter(0.1, 2, clk.now) // one token every 10s
	mustAllow(t, l, "a")
	mustAllow(t, l, "a")
	_, retry := l.allow("a")
	if retry != 10*time.Second {
		t.Fatalf("retry after %v; want 10s", retry)
	}

	// Waiting exactly the advertised time is enough, and gives one token.
	clk.advance(retry)
	mustAllow(t, l, "a")
	mustRefuse(t, l, "a", 10*time.Second)

	// A long wait refills to burst, no further.
	clk.advance(time.Hour)
	mustAllow(t, l, "a")
	mustAllow(t, l, "a")
	mustRefuse(t, l, "a", 10*time.Second)
}

// Waiting the advertised retry time must always be enough, whatever the
// rounding of an awkward rate.
func TestRateLimitRetryAfterIsEnough(t *testing.T) {
	for _, perSecond := range []float64{3, 7, 1.0 / 3, 0.7, 1000, 12345.678} {
		clk := newFakeClock()
		l := newRateLimiter(perSecond, 1, clk.now)
		for i := range 50 {
			ok, retry := l.allow("k")
			if i == 0 {
				if !ok {
					t.Fatalf("rate %v: first request refused", perSecond)
				}
				ok, retry = l.allow("k")
			}
			if ok || retry <= 0 {
				t.Fatalf("rate %v, round %d: got (%v, %v); want refused with a positive wait", perSecond, i, ok, retry)
			}
			if want := time.Duration(math.Ceil(float64(time.Second) / perSecond)); retry > want {
				t.Fatalf("rate %v, round %d: retry after %v; want at most %v", perSecond, i, retry, want)
			}
			clk.advance(retry)
			if ok, again := l.allow("k"); !ok {
				t.Fatalf("rate %v, round %d: refused after waiting %v; retry after %v more", perSecond, i, retry, again)
			}
		}
	}
}

func TestRateLimitKeysIndependent(t *testing.T) {
	clk := newFakeClock()
	l := newRateLimiter(1, 2, clk.now)
	mustAllow(t, l, "@alice:example.org")
	mustAllow(t, l, "@alice:example.org")
	mustRefuse(t, l, "@alice:example.org", time.Second)

	mustAllow(t, l, "@bob:example.org")
	mustAllow(t, l, "@bob:example.org")
	mustRefuse(t, l, "@bob:example.org", time.Second)
	mustAllow(t, l, "192.0.2.1")
}

func TestRateLimitEvictsIdleBuckets(t *testing.T) {
	clk := newFakeClock()
	l := newRateLimiter(1, 5, clk.now) // empty to full in 5s
	l.sweepEvery = 10

	// 100 keys drain their buckets, then go quiet.
	for i := range 100 {
		for range 5 {
			mustAllow(t, l, fmt.Sprintf("idle-%d", i))
		}
	}
	clk.advance(4 * time.Second)
	// Two keys stay busy; their calls trigger sweeps (a sweep waits for as
	// many calls as the buckets the last one left, so 300 calls is plenty).
	for range 5 {
		mustAllow(t, l, "busy")
	}
	for range 300 {
		l.allow("busy2")
	}
	if n := l.size(); n != 102 {
		t.Fatalf("size %d; want all 102 kept while none is full again", n)
	}

	// The idle buckets are full again; the busy ones are not.
	clk.advance(time.Second + time.Nanosecond)
	for range 300 {
		l.allow("busy2")
	}
	if n := l.size(); n != 2 {
		t.Fatalf("size %d after the idle buckets refilled; want 2", n)
	}
	mustRefuse(t, l, "busy2", time.Second-time.Nanosecond)
	mustAllow(t, l, "busy")
	mustRefuse(t, l, "busy", time.Second-time.Nanosecond)

	// Evicting a full bucket loses nothing: the key starts afresh, full.
	for range 5 {
		mustAllow(t, l, "idle-0")
	}
	mustRefuse(t, l, "idle-0", time.Second)
}

// The map stays bounded under a stream of one-shot keys (a client cycling
// addresses), without a sweep ever costing more than O(1) per call.
func TestRateLimitBoundedUnderKeyChurn(t *testing.T) {
	clk := newFakeClock()
	l := newRateLimiter(10, 1, clk.now) // full again 100ms after a request
	l.sweepEvery = 64
	peak := 0
	for i := range 20000 {
		mustAllow(t, l, fmt.Sprintf("k%d", i))
		clk.advance(time.Millisecond)
		peak = max(peak, l.size())
	}
	// About 100 keys are live at any time; allow for the sweep lag.
	if peak > 400 {
		t.Fatalf("peak size %d; want the map bounded near the live keys", peak)
	}
}

func TestRateLimitInfiniteRate(t *testing.T) {
	l := newRateLimiter(math.Inf(1), 1, nil)
	for range 1000 {
		mustAllow(t, l, "a")
	}
	if n := l.size(); n != 0 {
		t.Fatalf("size %d; an unlimited limiter needs no buckets", n)
	}
}

func TestRateLimitBadConfigPanics(t *testing.T) {
	for _, c := range []struct {
		perSecond float64
		burst     int
	}{{0, 1}, {-1, 1}, {math.NaN(), 1}, {1, 0}} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("newRateLimiter(%v, %d) did not panic", c.perSecond, c.burst)
				}
			}()
			newRateLimiter(c.perSecond, c.burst, nil)
		}()
	}
}

func TestRateLimitConcurrent(t *testing.T) {
	clk := newFakeClock()
	const burst = 50
	l := newRateLimiter(1, burst, clk.now)
	l.sweepEvery = 16

	const workers, perWorker = 16, 200
	var wg sync.WaitGroup
	var mu sync.Mutex
	allowed := map[string]int{}
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perWorker {
				key := fmt.Sprintf("k%d", (w+i)%4)
				if ok, _ := l.allow(key); ok {
					mu.Lock()
					allowed[key]++
					mu.Unlock()
				}
				if i%50 == 0 {
					l.allow(fmt.Sprintf("oneshot-%d-%d", w, i))
				}
			}
		}()
	}
	wg.Wait()
	// The clock never moved, so each key got exactly its burst.
	for k, n := range allowed {
		if n != burst {
			t.Errorf("key %s allowed %d times; want %d", k, n, burst)
		}
	}
	if len(allowed) != 4 {
		t.Errorf("got %d keys; want 4", len(allowed))
	}

	// And with the clock moving under it too.
	wg = sync.WaitGroup{}
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perWorker {
				if w == 0 && i%10 == 0 {
					clk.advance(100 * time.Millisecond)
				}
				l.allow(fmt.Sprintf("k%d", i%7))
				_ = l.size()
			}
		}()
	}
	wg.Wait()
}

func TestErrLimitExceeded(t *testing.T) {
	cases := []struct {
		retry      time.Duration
		wantMs     int64
		wantHeader string
	}{
		{1500 * time.Millisecond, 1500, "2"},
		{time.Second, 1000, "1"},
		{1500*time.Millisecond + time.Nanosecond, 1501, "2"},
		{time.Nanosecond, 1, "1"},
		{0, 1, "1"},
		{-time.Second, 1, "1"},
		{time.Hour, 3600000, "3600"},
	}
	for _, c := range cases {
		err := errLimitExceeded(c.retry)
		var re mautrix.RespError
		if !errors.As(err, &re) {
			t.Fatalf("errLimitExceeded(%v) = %T; want mautrix.RespError", c.retry, err)
		}
		if got := statusFor(re); got != http.StatusTooManyRequests {
			t.Errorf("status %d; want 429", got)
		}
		if got := re.ExtraHeader["Retry-After"]; got != c.wantHeader {
			t.Errorf("retry %v: Retry-After %q; want %q", c.retry, got, c.wantHeader)
		}

		body, jerr := json.Marshal(&re)
		if jerr != nil {
			t.Fatal(jerr)
		}
		var got map[string]json.RawMessage
		if jerr := json.Unmarshal(body, &got); jerr != nil {
			t.Fatal(jerr)
		}
		if string(got["errcode"]) != `"M_LIMIT_EXCEEDED"` {
			t.Errorf("body %s: errcode %s; want M_LIMIT_EXCEEDED", body, got["errcode"])
		}
		if string(got["error"]) != `"Too many requests"` {
			t.Errorf("body %s: error %s", body, got["error"])
		}
		// An integer, not 1.5e+03 or "1500".
		if want := fmt.Sprint(c.wantMs); string(got["retry_after_ms"]) != want {
			t.Errorf("retry %v: body %s: retry_after_ms %s; want %s", c.retry, body, got["retry_after_ms"], want)
		}
		if len(got) != 3 {
			t.Errorf("body %s: want exactly errcode, error and retry_after_ms", body)
		}
	}
}

// Through writeError, the header and the 429 reach the client.
func TestLimitExceededWritten(t *testing.T) {
	w := httptest.NewRecorder()
	r := httptest.NewRequest(http.MethodGet, "/_matrix/client/v3/sync", nil)
	writeError(w, r, nil, errLimitExceeded(2500*time.Millisecond))
	if w.Code != http.StatusTooManyRequests {
		t.Errorf("status %d; want 429", w.Code)
	}
	if got := w.Header().Get("Retry-After"); got != "3" {
		t.Errorf("Retry-After %q; want 3", got)
	}
	var body struct {
		Errcode      string `json:"errcode"`
		RetryAfterMs int64  `json:"retry_after_ms"`
	}
	if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil {
		t.Fatalf("body %q: %v", w.Body, err)
	}
	if body.Errcode != "M_LIMIT_EXCEEDED" || body.RetryAfterMs != 2500 {
		t.Errorf("body %s", w.Body)
	}
}

func TestClientIP(t *testing.T) {
	cases := []struct{ remote, want string }{
		{"192.0.2.7:54321", "192.0.2.7"},
		{"[2001:db8::1]:443", "2001:db8::1"},
		{"[2001:DB8:0:0::1]:443", "2001:db8::1"},
		{"[::ffff:192.0.2.7]:80", "192.0.2.7"},
		{"[fe80::1%eth0]:8008", "fe80::1"},
		{"192.0.2.7", "192.0.2.7"},
		{"2001:db8::1", "2001:db8::1"},
		{"@", "@"},
		{"", ""},
	}
	for _, c := range cases {
		r := httptest.NewRequest(http.MethodGet, "/", nil)
		r.RemoteAddr = c.remote
		r.Header.Set("X-Forwarded-For", "203.0.113.9")
		r.Header.Set("X-Real-Ip", "203.0.113.9")
		if got := clientIP(r); got != c.want {
			t.Errorf("clientIP(RemoteAddr %q) = %q; want %q", c.remote, got, c.want)
		}
	}
}
