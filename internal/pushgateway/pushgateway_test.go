package pushgateway_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	mgw "maunium.net/go/mautrix/pushrules/pushgateway"

	"github.com/weftchat/weft/internal/pushgateway"
	"github.com/weftchat/weft/internal/urlpreview/ssrftest"
)

var loopback = []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}

func note() *mgw.PushNotification {
	return &mgw.PushNotification{
		EventID: "$e", RoomID: "!r:x", Priority: mgw.PushPriorityHigh,
		Counts:  &mgw.NotificationCounts{Unread: 2},
		Devices: []mgw.Device{{BaseDevice: mgw.BaseDevice{AppID: "a", PushKey: "pk", PushKeyTS: 5}}},
	}
}

// gateway is a test push gateway answering with status and body.
func gateway(t *testing.T, status int, body string) (*httptest.Server, *atomic.Int64, chan string) {
	t.Helper()
	var hits atomic.Int64
	bodies := make(chan string, 10)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		b, _ := io.ReadAll(r.Body)
		if r.Method != http.MethodPost || r.URL.Path != "/_matrix/push/v1/notify" || r.Header.Get("Content-Type") != "application/json" {
			t.Errorf("request %s %s %q", r.Method, r.URL.Path, r.Header.Get("Content-Type"))
		}
		bodies <- string(b)
		w.WriteHeader(status)
		_, _ = io.WriteString(w, body)
	}))
	t.Cleanup(srv.Close)
	return srv, &hits, bodies
}

func TestNotifySendsTheBodyAndReturnsRejected(t *testing.T) {
	srv, _, bodies := gateway(t, 200, `{"rejected":["pk"]}`)
	c := pushgateway.New(pushgateway.Config{AllowedCIDRs: loopback})
	rej, err := c.Notify(context.Background(), srv.URL+"/_matrix/push/v1/notify", note())
	if err != nil {
		t.Fatal(err)
	}
	if len(rej) != 1 || rej[0] != "pk" {
		t.Fatalf("rejected %v", rej)
	}
	want := `{"notification":{"devices":[{"app_id":"a","pushkey":"pk","pushkey_ts":5}],"counts":{"unread":2},"event_id":"$e","prio":"high","room_id":"!r:x"}}`
	if got := <-bodies; got != want {
		t.Fatalf("body\n got %s\nwant %s", got, want)
	}
}

func TestNotifyAcceptsAnyTwoHundredBody(t *testing.T) {
	srv, _, _ := gateway(t, 202, `not json`)
	c := pushgateway.New(pushgateway.Config{AllowedCIDRs: loopback})
	rej, err := c.Notify(context.Background(), srv.URL+"/_matrix/push/v1/notify", note())
	if err != nil || rej != nil {
		t.Fatalf("a 2xx without JSON: %v %v", rej, err)
	}
}

func TestNotifyErrorStatusFails(t *testing.T) {
	srv, _, _ := gateway(t, 500, `{"rejected":[]}`)
	c := pushgateway.New(pushgateway.Config{AllowedCIDRs: loopback})
	_, err := c.Notify(context.Background(), srv.URL+"/_matrix/push/v1/notify", note())
	var se *pushgateway.StatusError
	if !errors.As(err, &se) || se.StatusCode != 500 {
		t.Fatalf("500 gave %v", err)
	}
}

// Redirects are not followed: the target is never asked, and the 3xx is
// a failure.
func TestNotifyDoesNotFollowRedirects(t *testing.T) {
	target, targetHits, _ := gateway(t, 200, `{"rejected":[]}`)
	redirect := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, target.URL+"/_matrix/push/v1/notify", http.StatusTemporaryRedirect)
	}))
	defer redirect.Close()
	c := pushgateway.New(pushgateway.Config{AllowedCIDRs: loopback})
	_, err := c.Notify(context.Background(), redirect.URL+"/_matrix/push/v1/notify", note())
	var se *pushgateway.StatusError
	if !errors.As(err, &se) || se.StatusCode != http.StatusTemporaryRedirect {
		t.Fatalf("redirect gave %v", err)
	}
	if targetHits.Load() != 0 {
		t.Fatal("the redirect was followed")
	}
}

// By default no non-global address is connected to, by literal or by a
// name resolving to it; the operator's CIDRs open their range only.
func TestNotifyRefusesNonGlobalAddresses(t *testing.T) {
	trap := ssrftest.NewTrap(t, "tcp", "127.0.0.1:0")
	port := strconv.Itoa(trap.Port())
	resolver := ssrftest.DNS(t, map[string][]string{"gw.example": {"127.0.0.1"}})
	for _, rawURL := range []string{
		"http://127.0.0.1:" + port + "/_matrix/push/v1/notify",
		"http://gw.example:" + port + "/_matrix/push/v1/notify",
		"http://[::ffff:127.0.0.1]:" + port + "/_matrix/push/v1/notify",
	} {
		for _, allowed := range [][]netip.Prefix{nil, {netip.MustParsePrefix("10.0.0.0/8")}} {
			c := pushgateway.New(pushgateway.Config{Resolver: resolver, AllowedCIDRs: allowed})
			_, err := c.Notify(context.Background(), rawURL, note())
			if !pushgateway.IsRefused(err) {
				t.Errorf("%s (allowed %v): %v, want a refusal", rawURL, allowed, err)
			}
		}
	}
	if n := trap.Accepted(); n != 0 {
		t.Fatalf("%d connections reached the loopback listener", n)
	}
	trap.WantReachable(t)
}

func TestNotifyRefusesBadURLs(t *testing.T) {
	c := pushgateway.New(pushgateway.Config{AllowedCIDRs: loopback})
	for _, u := range []string{"ftp://127.0.0.1/_matrix/push/v1/notify", "http://user:pw@127.0.0.1/_matrix/push/v1/notify", "/_matrix/push/v1/notify"} {
		if _, err := c.Notify(context.Background(), u, note()); err == nil {
			t.Errorf("%s accepted", u)
		}
	}
}

func TestNotifyTimesOut(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-release
	}))
	defer srv.Close()
	defer close(release)
	c := pushgateway.New(pushgateway.Config{AllowedCIDRs: loopback, Timeout: 200 * time.Millisecond})
	start := time.Now()
	_, err := c.Notify(context.Background(), srv.URL+"/_matrix/push/v1/notify", note())
	if err == nil {
		t.Fatal("a gateway that never answers was a success")
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("gave up after %s", d)
	}
}
