package api_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"reflect"
	"runtime"
	"strings"
	"testing"
	"time"

	"maunium.net/go/mautrix"

	"github.com/weftchat/weft/api"
)

// rawPoll is a /sync on a bare TCP connection: no client goroutines, so
// the test can count the server's.
type rawPoll struct {
	conn net.Conn
	br   *bufio.Reader
	// header is the last response's.
	header http.Header
}

func dialPoll(t *testing.T, addr string) *rawPoll {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return &rawPoll{conn: c, br: bufio.NewReader(c)}
}

func syncRequest(token, since string, timeoutMS int) string {
	return fmt.Sprintf("GET /_matrix/client/v3/sync?since=%s&timeout=%d HTTP/1.1\r\nHost: weft\r\nAuthorization: Bearer %s\r\n\r\n", since, timeoutMS, token)
}

func (p *rawPoll) send(t *testing.T, reqs ...string) {
	t.Helper()
	if _, err := io.WriteString(p.conn, strings.Join(reqs, "")); err != nil {
		t.Fatal(err)
	}
}

// read reads one response within d.
func (p *rawPoll) read(t *testing.T, d time.Duration) (int, []byte) {
	t.Helper()
	_ = p.conn.SetReadDeadline(time.Now().Add(d))
	resp, err := http.ReadResponse(p.br, nil)
	if err != nil {
		t.Fatalf("reading a response: %v", err)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	p.header = resp.Header
	return resp.StatusCode, body
}

func nextBatch(t *testing.T, body []byte) string {
	t.Helper()
	var r struct {
		NextBatch string `json:"next_batch"`
	}
	if err := json.Unmarshal(body, &r); err != nil || r.NextBatch == "" {
		t.Fatalf("no next_batch in %s (%v)", body, err)
	}
	return r.NextBatch
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestLongPollParking: idle long-polls hold no server goroutines, are
// answered on their raw connections when an event arrives, and the
// connections stay usable for further requests (keep-alive, pipelining).
func TestLongPollParking(t *testing.T) {
	srv, syncs := syncStackService(t)
	ctx := context.Background()
	alice := newClient(t, srv, "alice", true)
	bob := newClient(t, srv, "bob", true)
	created, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bob.JoinRoomByID(ctx, created.RoomID); err != nil {
		t.Fatal(err)
	}
	first, err := alice.SyncRequest(ctx, 0, "", "", false, "")
	if err != nil {
		t.Fatal(err)
	}
	since := first.NextBatch
	addr := srv.Listener.Addr().String()
	runtime.GC()
	before := runtime.NumGoroutine()

	const n = 40
	polls := make([]*rawPoll, n)
	for i := range polls {
		polls[i] = dialPoll(t, addr)
		polls[i].send(t, syncRequest(alice.AccessToken, since, 60000))
	}
	waitFor(t, "the long-polls to register", func() bool { return syncs.Notifier().Waiting() == n })
	// Waiting the ordinary way, each poll holds two goroutines (the
	// connection's and its background reader); parked, none.
	if grown := runtime.NumGoroutine() - before; grown >= n/2 {
		t.Fatalf("%d goroutines more with %d idle long-polls: they are not parked", grown, n)
	}

	sent, err := bob.SendText(ctx, created.RoomID, "wake up")
	if err != nil {
		t.Fatal(err)
	}
	var next string
	for i, p := range polls {
		status, body := p.read(t, 20*time.Second)
		if status != http.StatusOK || !strings.Contains(string(body), sent.EventID.String()) {
			t.Fatalf("poll %d: %d %s, want the event %s", i, status, body, sent.EventID)
		}
		next = nextBatch(t, body)
		// What the middleware gives every response, parked or not.
		if p.header.Get("Access-Control-Allow-Origin") != "*" || p.header.Get("X-Request-Id") == "" ||
			p.header.Get("Content-Type") != "application/json" {
			t.Fatalf("poll %d: headers %v", i, p.header)
		}
	}

	// A parked answer carries the same headers as one net/http writes
	// (an initial sync answers at once, without parking).
	parkedHeader := polls[0].header
	polls[7].send(t, syncRequest(alice.AccessToken, "", 0))
	if status, _ := polls[7].read(t, 20*time.Second); status != http.StatusOK {
		t.Fatalf("initial sync: %d", status)
	}
	for _, h := range []http.Header{parkedHeader, polls[7].header} {
		h.Del("Date")
		h.Del("X-Request-Id")
		h.Del("Content-Length")
	}
	if !reflect.DeepEqual(parkedHeader, polls[7].header) {
		t.Fatalf("parked answer's headers %v, unparked %v", parkedHeader, polls[7].header)
	}

	// Keep-alive: the connections serve further requests, including a
	// second parked poll that answers by timeout, even after an idle
	// pause longer than the server's header timeout.
	time.Sleep(time.Second)
	for i, p := range polls[:5] {
		p.send(t, syncRequest(alice.AccessToken, next, 200))
		status, body := p.read(t, 20*time.Second)
		if status != http.StatusOK || nextBatch(t, body) != next {
			t.Fatalf("poll %d again: %d %s, want an empty answer at %s", i, status, body, next)
		}
	}

	// Pipelining: a request sent behind a parked poll is served after it.
	p := polls[5]
	p.send(t, syncRequest(alice.AccessToken, next, 200), "GET /_matrix/client/versions HTTP/1.1\r\nHost: weft\r\n\r\n")
	if status, body := p.read(t, 20*time.Second); status != http.StatusOK || nextBatch(t, body) != next {
		t.Fatalf("pipelined poll: %d %s", status, body)
	}
	if status, body := p.read(t, 20*time.Second); status != http.StatusOK || !strings.Contains(string(body), `"versions"`) {
		t.Fatalf("request pipelined behind a parked poll: %d %s", status, body)
	}

	// Connection: close is honoured after a parked answer.
	p = polls[6]
	p.send(t, strings.Replace(syncRequest(alice.AccessToken, next, 100), "Host: weft\r\n", "Host: weft\r\nConnection: close\r\n", 1))
	if status, _ := p.read(t, 20*time.Second); status != http.StatusOK {
		t.Fatalf("poll with Connection: close: %d", status)
	}
	_ = p.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := p.br.ReadByte(); err != io.EOF {
		t.Fatalf("the connection stayed open after Connection: close (%v)", err)
	}
}

// TestLongPollParkedShutdown: stopping the sync service answers parked
// long-polls at once.
func TestLongPollParkedShutdown(t *testing.T) {
	srv, syncs := syncStackService(t)
	alice := newClient(t, srv, "alice", true)
	first, err := alice.SyncRequest(context.Background(), 0, "", "", false, "")
	if err != nil {
		t.Fatal(err)
	}
	p := dialPoll(t, srv.Listener.Addr().String())
	p.send(t, syncRequest(alice.AccessToken, first.NextBatch, 300000))
	waitFor(t, "the long-poll to register", func() bool { return syncs.Notifier().Waiting() == 1 })
	syncs.Stop()
	if status, body := p.read(t, 10*time.Second); status != http.StatusOK || nextBatch(t, body) == "" {
		t.Fatalf("after Stop: %d %s", status, body)
	}
	waitFor(t, "the listener to go", func() bool { return syncs.Notifier().Waiting() == 0 })

	// The client keeps its connection open without a next request: the
	// answered poll is no longer waited for, and closing the listener
	// (as shutdown does) closes the idle connection.
	ln := srv.Listener.(*api.Listener)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := ln.WaitParked(ctx); err != nil {
		t.Fatalf("WaitParked after the answer: %v", err)
	}
	if err := ln.Close(); err != nil {
		t.Fatal(err)
	}
	_ = p.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := p.br.ReadByte(); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("the idle connection was not closed with the listener: %v", err)
	}
}
