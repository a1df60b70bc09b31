package e2e

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/weftchat/weft/storage/pgtest"
)

// Push notifications end to end: the real binary delivering to a fake push
// gateway on loopback (allowed by push.gateway_allowed_cidrs).

// pushGateway is a fake push gateway: it records every request and answers
// with the status and body set last.
type pushGateway struct {
	t   *testing.T
	srv *httptest.Server

	mu       sync.Mutex
	status   int
	answer   string
	requests []pushGatewayRequest
	got      chan struct{}
}

type pushGatewayRequest struct {
	body   string
	status int // what the gateway answered
}

func newPushGateway(t *testing.T) *pushGateway {
	g := &pushGateway{t: t, status: 200, answer: `{"rejected":[]}`, got: make(chan struct{}, 1000)}
	g.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if r.Method != http.MethodPost || r.URL.Path != "/_matrix/push/v1/notify" || r.Header.Get("Content-Type") != "application/json" {
			t.Errorf("push gateway got %s %s (%s)", r.Method, r.URL.Path, r.Header.Get("Content-Type"))
		}
		g.mu.Lock()
		status, answer := g.status, g.answer
		g.requests = append(g.requests, pushGatewayRequest{body: string(body), status: status})
		g.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_, _ = io.WriteString(w, answer)
		g.got <- struct{}{}
	}))
	t.Cleanup(g.srv.Close)
	return g
}

func (g *pushGateway) url() string { return g.srv.URL + "/_matrix/push/v1/notify" }

func (g *pushGateway) respond(status int, answer string) {
	g.mu.Lock()
	g.status, g.answer = status, answer
	g.mu.Unlock()
}

func (g *pushGateway) all() []pushGatewayRequest {
	g.mu.Lock()
	defer g.mu.Unlock()
	return slices.Clone(g.requests)
}

// waitFor waits until the gateway has had n requests in all.
func (g *pushGateway) waitFor(n int) []pushGatewayRequest {
	g.t.Helper()
	deadline := time.After(20 * time.Second)
	for {
		if reqs := g.all(); len(reqs) >= n {
			return reqs
		}
		select {
		case <-g.got:
		case <-deadline:
			g.t.Fatalf("the push gateway got %d requests, want %d: %v", len(g.all()), n, g.all())
		}
	}
}

// pushEventID is the event_id of a notification body.
func pushEventID(t *testing.T, body string) string {
	t.Helper()
	var req struct {
		Notification struct {
			EventID string `json:"event_id"`
		} `json:"notification"`
	}
	if err := json.Unmarshal([]byte(body), &req); err != nil {
		t.Fatalf("notification %s: %v", body, err)
	}
	return req.Notification.EventID
}

// pushEnv is a server environment for push tests: the loopback gateway
// allowed, and retries at least once a second.
func pushEnv(extra map[string]string) map[string]string {
	env := accountsEnv(map[string]string{
		"WEFT_PUSH_GATEWAY_ALLOWED_CIDRS": "127.0.0.1/32",
		"WEFT_PUSH_MAX_BACKOFF":           "1s",
	})
	for k, v := range extra {
		env[k] = v
	}
	return env
}

// pushDM is a private room of bob's with alice in it (two members: the
// server-default rule .m.rule.room_one_to_one applies).
func pushDM(t *testing.T, alice, bob *mautrix.Client) id.RoomID {
	t.Helper()
	rid := createRoom(t, bob, &mautrix.ReqCreateRoom{
		Preset: "private_chat", Name: "Ops", RoomAliasName: "ops", Invite: []id.UserID{alice.UserID},
	})
	joinRoom(t, alice, rid)
	return rid
}

// setPusher registers a pusher for cli's device.
func setPusher(t *testing.T, srv *Server, cli *mautrix.Client, pushKey string, data map[string]any) {
	t.Helper()
	r := doJSON(t, "POST", clientURL(srv, "v3", "pushers", "set"), cli.AccessToken, map[string]any{
		"kind": "http", "app_id": "com.example.app", "pushkey": pushKey, "app_display_name": "Example",
		"device_display_name": "Phone", "lang": "en", "data": data,
	})
	r.wantOK(t)
}

func sendText(t *testing.T, cli *mautrix.Client, rid id.RoomID, body string) id.EventID {
	t.Helper()
	resp, err := cli.SendMessageEvent(context.Background(), rid, event.EventMessage, map[string]any{"msgtype": "m.text", "body": body})
	if err != nil {
		t.Fatalf("sending %q: %v", body, err)
	}
	return resp.EventID
}

var pushKeyTSField = regexp.MustCompile(`"pushkey_ts":(\d+)`)

// withoutPushKeyTS checks pushkey_ts (seconds) is within [from, to] and
// replaces it with 0, so the rest of the body can be compared exactly.
func withoutPushKeyTS(t *testing.T, body string, from, to time.Time) string {
	t.Helper()
	m := pushKeyTSField.FindStringSubmatch(body)
	if m == nil {
		t.Fatalf("no pushkey_ts in %s", body)
	}
	ts, _ := strconv.ParseInt(m[1], 10, 64)
	if ts < from.Unix() || ts > to.Unix() {
		t.Fatalf("pushkey_ts %d not within %d..%d (unix seconds of the pusher's set)", ts, from.Unix(), to.Unix())
	}
	return pushKeyTSField.ReplaceAllString(body, `"pushkey_ts":0`)
}

// The notification bodies, exactly; the event_id_only format; a rejected
// pushkey removes its pusher.
func TestPushGatewayNotifications(t *testing.T) {
	gw := newPushGateway(t)
	srv := Start(t, Options{Env: pushEnv(nil)})
	alice := registerUser(t, srv, "alice", "alice password")
	bob := registerUser(t, srv, "bob", "bob password")
	rid := pushDM(t, alice, bob)

	before := time.Now()
	setPusher(t, srv, alice, "PK", map[string]any{"url": gw.url(), "custom": map[string]any{"n": 1}})
	after := time.Now()
	r := doJSON(t, "GET", clientURL(srv, "v3", "pushers"), alice.AccessToken, nil)
	r.wantOK(t)
	specValidate(t, r.Body, "pusher.yaml", "/pushers", "get", "200")
	wantList := `{"pushers":[{"app_display_name":"Example","app_id":"com.example.app","data":{"custom":{"n":1},"url":"` + gw.url() + `"},` +
		`"device_display_name":"Phone","kind":"http","lang":"en","pushkey":"PK"}]}`
	if string(r.Raw) != wantList {
		t.Fatalf("GET /pushers\n got %s\nwant %s", r.Raw, wantList)
	}

	hello := sendText(t, bob, rid, "hello")
	got := withoutPushKeyTS(t, gw.waitFor(1)[0].body, before.Truncate(time.Second), after)
	want := `{"notification":{"devices":[{"app_id":"com.example.app","pushkey":"PK","pushkey_ts":0,"data":{"custom":{"n":1}},"tweaks":{"sound":"default"}}],` +
		`"counts":{"unread":1},"event_id":"` + string(hello) + `","prio":"high","room_alias":"#ops:localhost","room_id":"` + string(rid) + `",` +
		`"room_name":"Ops","sender":"@bob:localhost","sender_display_name":"bob","type":"m.room.message",` +
		`"content":{"body":"hello","msgtype":"m.text"}}}`
	if got != want {
		t.Fatalf("notification\n got %s\nwant %s", got, want)
	}

	// The same pusher set again with format event_id_only.
	before = time.Now()
	setPusher(t, srv, alice, "PK", map[string]any{"url": gw.url(), "format": "event_id_only"})
	after = time.Now()
	again := sendText(t, bob, rid, "again")
	got = withoutPushKeyTS(t, gw.waitFor(2)[1].body, before.Truncate(time.Second), after)
	want = `{"notification":{"devices":[{"app_id":"com.example.app","pushkey":"PK","pushkey_ts":0,"data":{"format":"event_id_only"},"tweaks":{"sound":"default"}}],` +
		`"counts":{"unread":2},"event_id":"` + string(again) + `","prio":"high","room_id":"` + string(rid) + `"}}`
	if got != want {
		t.Fatalf("event_id_only notification\n got %s\nwant %s", got, want)
	}

	// The gateway rejects the pushkey: the pusher goes.
	gw.respond(200, `{"rejected":["PK"]}`)
	sendText(t, bob, rid, "rejected")
	gw.waitFor(3)
	deadline := time.Now().Add(10 * time.Second)
	for {
		r := doJSON(t, "GET", clientURL(srv, "v3", "pushers"), alice.AccessToken, nil)
		r.wantOK(t)
		if string(r.Raw) == `{"pushers":[]}` {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the rejected pusher is still listed: %s", r.Raw)
		}
		time.Sleep(20 * time.Millisecond)
	}
	sendText(t, bob, rid, "after the rejection")
	time.Sleep(500 * time.Millisecond)
	if n := len(gw.all()); n != 3 {
		t.Fatalf("%d pushes after the pusher was rejected, want 3", n)
	}
}

// Notifications queued while the gateway fails survive a restart and are
// delivered in order once it answers; what was delivered is not again.
func TestPushGatewayQueueSurvivesRestart(t *testing.T) {
	gw := newPushGateway(t)
	dbURL, dataDir := pgtest.NewDatabase(t), TempDir(t)
	env := pushEnv(map[string]string{"WEFT_DATABASE_URL": dbURL})
	srv := Start(t, Options{Env: env, DataDir: dataDir})
	alice := registerUser(t, srv, "alice", "alice password")
	bob := registerUser(t, srv, "bob", "bob password")
	rid := pushDM(t, alice, bob)
	setPusher(t, srv, alice, "PK", map[string]any{"url": gw.url(), "format": "event_id_only"})

	delivered := sendText(t, bob, rid, "delivered before the outage")
	gw.waitFor(1)
	gw.respond(500, `{"errcode":"M_UNKNOWN"}`)
	queued := []id.EventID{sendText(t, bob, rid, "one"), sendText(t, bob, rid, "two"), sendText(t, bob, rid, "three")}
	gw.waitFor(2) // the first attempt at "one" failed
	srv.Stop()
	if code := srv.Wait(time.Second); code != 0 {
		t.Fatalf("weft exited with %d:\n%s", code, srv.Output())
	}

	srv = Start(t, Options{Env: env, DataDir: dataDir})
	gw.respond(200, `{"rejected":[]}`)
	failed := 0
	var got []string
	deadline := time.Now().Add(30 * time.Second)
	for len(got) < 4 {
		if time.Now().After(deadline) {
			t.Fatalf("delivered %v, want the queued %v after %s", got, queued, delivered)
		}
		select {
		case <-gw.got:
		case <-time.After(time.Second):
		}
		got, failed = nil, 0
		for _, r := range gw.all() {
			if r.status == 200 {
				got = append(got, pushEventID(t, r.body))
			} else {
				failed++
			}
		}
	}
	want := []string{string(delivered), string(queued[0]), string(queued[1]), string(queued[2])}
	if !slices.Equal(got, want) {
		t.Fatalf("delivered %v, want %v", got, want)
	}
	// Every failed attempt was at the first queued notification: nothing
	// was sent past it while it failed.
	for _, r := range gw.all() {
		if r.status != 200 && pushEventID(t, r.body) != string(queued[0]) {
			t.Fatalf("an attempt at %s while %s was failing", pushEventID(t, r.body), queued[0])
		}
	}
	time.Sleep(500 * time.Millisecond)
	if n := len(gw.all()); n != len(want)+failed {
		t.Fatalf("%d requests after catching up, want %d", n, len(want)+failed)
	}
}

// A device with a sync long-poll open gets no pushes; the user's other,
// idle device does.
func TestPushGatewaySkipsSyncingDevices(t *testing.T) {
	gw := newPushGateway(t)
	srv := Start(t, Options{Env: pushEnv(nil)})
	phone := registerUser(t, srv, "alice", "alice password")
	tablet := loginWith(t, srv, "alice", "alice password")
	bob := registerUser(t, srv, "bob", "bob password")
	rid := pushDM(t, phone, bob)
	// Pushers of one user are delivered in pushkey order: the phone's
	// (A...) is decided before the tablet's (B...) is sent.
	setPusher(t, srv, phone, "A-PHONE", map[string]any{"url": gw.url(), "format": "event_id_only"})
	setPusher(t, srv, tablet, "B-TABLET", map[string]any{"url": gw.url(), "format": "event_id_only"})

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	initial, err := phone.SyncRequest(ctx, 0, "", "", false, event.PresenceOnline)
	if err != nil {
		t.Fatal(err)
	}
	polled := make(chan error, 1)
	go func() {
		_, err := phone.SyncRequest(ctx, 30000, initial.NextBatch, "", false, event.PresenceOnline)
		polled <- err
	}()
	time.Sleep(200 * time.Millisecond) // the long-poll is waiting

	msg := sendText(t, bob, rid, "while the phone looks")
	reqs := gw.waitFor(1)
	if len(reqs) != 1 || !strings.Contains(reqs[0].body, `"pushkey":"B-TABLET"`) || pushEventID(t, reqs[0].body) != string(msg) {
		t.Fatalf("pushes %v, want one to the tablet", reqs)
	}
	if err := <-polled; err != nil {
		t.Fatalf("the phone's long-poll: %v", err)
	}
	time.Sleep(300 * time.Millisecond)
	if n := len(gw.all()); n != 1 {
		t.Fatalf("%d pushes, want 1: %v", n, gw.all())
	}
	// A kept-alive connection that carried a parked long-poll holds the
	// server's shutdown for its whole grace period: let it go.
	phone.Client.CloseIdleConnections()
}
