package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/weftchat/weft/storage/pgtest"
)

// crashSender is one client sending messages with its own txn IDs: every
// txn ID it tried, and the event ID of those acknowledged.
type crashSender struct {
	sent  []string
	acked map[string]string
}

// crashSend PUTs one message whose body is its txn ID. A transport error
// (the server is gone) is returned as err; any HTTP answer as status and
// the event ID of a 200.
func crashSend(cli *http.Client, srv *Server, token, roomID, txn string) (eventID string, status int, err error) {
	u := srv.URL + "/_matrix/client/v3/rooms/" + url.PathEscape(roomID) + "/send/m.room.message/" + url.PathEscape(txn)
	body, _ := json.Marshal(map[string]string{"msgtype": "m.text", "body": txn})
	req, err := http.NewRequest(http.MethodPut, u, bytes.NewReader(body))
	if err != nil {
		return "", 0, err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := cli.Do(req)
	if err != nil {
		return "", 0, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", 0, err
	}
	var out struct {
		EventID string `json:"event_id"`
	}
	if resp.StatusCode == http.StatusOK {
		if err := json.Unmarshal(raw, &out); err != nil || out.EventID == "" {
			return "", resp.StatusCode, fmt.Errorf("200 without an event_id: %q", raw)
		}
	}
	return out.EventID, resp.StatusCode, nil
}

// crashMessages pages /messages forward over the whole room and returns,
// for each message body, the event IDs carrying it (in order).
func crashMessages(t *testing.T, srv *Server, token, roomID string) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	seen := map[string]bool{}
	from := ""
	for page := 0; ; page++ {
		if page > 1000 {
			t.Fatal("/messages did not end after 1000 pages")
		}
		q := url.Values{"dir": {"f"}, "limit": {"100"}}
		if from != "" {
			q.Set("from", from)
		}
		r := doJSON(t, "GET", srv.URL+"/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/messages?"+q.Encode(), token, nil)
		r.wantOK(t)
		var res struct {
			Chunk []struct {
				EventID string `json:"event_id"`
				Type    string `json:"type"`
				Content struct {
					Body string `json:"body"`
				} `json:"content"`
			} `json:"chunk"`
			End string `json:"end"`
		}
		if err := json.Unmarshal(r.Raw, &res); err != nil {
			t.Fatal(err)
		}
		for _, e := range res.Chunk {
			if seen[e.EventID] {
				t.Errorf("/messages returned %s twice", e.EventID)
			}
			seen[e.EventID] = true
			if e.Type == "m.room.message" {
				out[e.Content.Body] = append(out[e.Content.Body], e.EventID)
			}
		}
		if res.End == "" || res.End == from {
			return out
		}
		from = res.End
	}
}

// TestCrashKeepsSendsExactlyOnce kills the server (SIGKILL, no shutdown)
// while 8 clients send, restarts it on the same database and checks the
// promise of PUT /send: an acknowledged event survives, exactly once, and
// retrying any txn ID (acknowledged or cut off by the crash) returns the
// same event rather than a duplicate.
func TestCrashKeepsSendsExactlyOnce(t *testing.T) {
	const senders = 8
	const killAfter = 200 // acknowledged sends before the kill
	dbURL := pgtest.NewDatabase(t)
	dataDir := TempDir(t) // the same signing key after the restart
	env := accountsEnv(map[string]string{"WEFT_DATABASE_URL": dbURL})
	srv := Start(t, Options{Env: env, DataDir: dataDir})
	alice := registerUser(t, srv, "alice", "crash-test-password-1")
	token := alice.AccessToken
	r := doJSON(t, "POST", srv.URL+"/_matrix/client/v3/createRoom", token, map[string]any{"preset": "private_chat", "name": "crash"})
	r.wantOK(t)
	roomID, _ := r.Body["room_id"].(string)
	if roomID == "" {
		t.Fatalf("createRoom: %s", r.Raw)
	}

	cli := &http.Client{Timeout: time.Minute}
	logs := make([]crashSender, senders)
	var acked atomic.Int64
	var wg sync.WaitGroup
	for g := range senders {
		logs[g].acked = map[string]string{}
		wg.Go(func() {
			for i := 0; ; i++ {
				txn := fmt.Sprintf("crash-%d-%d", g, i)
				// Recorded before the request: it may reach the server
				// and commit even if the answer never comes back.
				logs[g].sent = append(logs[g].sent, txn)
				eid, status, err := crashSend(cli, srv, token, roomID, txn)
				if err != nil {
					return // the server is gone
				}
				if status != http.StatusOK {
					t.Errorf("send %s before the crash: HTTP %d", txn, status)
					return
				}
				logs[g].acked[txn] = eid
				acked.Add(1)
			}
		})
	}
	// Kill mid-run, with every sender's next request in flight or about to be.
	deadline := time.Now().Add(2 * time.Minute)
	for acked.Load() < killAfter && time.Now().Before(deadline) && !t.Failed() {
		time.Sleep(time.Millisecond)
	}
	srv.Signal(syscall.SIGKILL)
	srv.Wait(30 * time.Second)
	if !srv.Exited() {
		t.Fatal("weft did not die on SIGKILL")
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	if n := acked.Load(); n < killAfter {
		t.Fatalf("only %d sends acknowledged before the kill", n)
	}
	sent := 0
	for g, l := range logs {
		sent += len(l.sent)
		// Each sender stops at its first failed request, so exactly its
		// last txn ID is unacknowledged.
		if len(l.sent) != len(l.acked)+1 {
			t.Fatalf("sender %d: %d sent, %d acknowledged", g, len(l.sent), len(l.acked))
		}
	}

	srv2 := Start(t, Options{Env: env, DataDir: dataDir})
	before := crashMessages(t, srv2, token, roomID)
	for _, l := range logs {
		for txn, eid := range l.acked {
			if got := before[txn]; len(got) != 1 || got[0] != eid {
				t.Errorf("acknowledged %s (%s): after the crash /messages has %v", txn, eid, got)
			}
		}
	}
	committedUnacked := 0
	for _, l := range logs {
		last := l.sent[len(l.sent)-1]
		if len(before[last]) > 0 {
			committedUnacked++
		}
	}
	t.Logf("%d sent, %d acknowledged, %d committed without an answer", sent, acked.Load(), committedUnacked)

	// Retry every txn ID, concurrently per sender as a client would after
	// reconnecting.
	for g := range senders {
		wg.Go(func() {
			for _, txn := range logs[g].sent {
				eid, status, err := crashSend(cli, srv2, token, roomID, txn)
				if err != nil || status != http.StatusOK {
					t.Errorf("retrying %s: HTTP %d, %v", txn, status, err)
					continue
				}
				if want, ok := logs[g].acked[txn]; ok && eid != want {
					t.Errorf("retrying acknowledged %s gave %s, first answer was %s", txn, eid, want)
				}
				if prev := before[txn]; len(prev) == 1 && eid != prev[0] {
					t.Errorf("retrying %s (committed as %s before the crash) gave %s", txn, prev[0], eid)
				}
			}
		})
	}
	wg.Wait()

	after := crashMessages(t, srv2, token, roomID)
	total := 0
	for _, ids := range after {
		total += len(ids)
	}
	if total != sent {
		t.Errorf("%d messages in the room, want %d (one per distinct txn ID)", total, sent)
	}
	for _, l := range logs {
		for _, txn := range l.sent {
			if len(after[txn]) != 1 {
				t.Errorf("txn %s: %d messages, want 1: %v", txn, len(after[txn]), after[txn])
			}
		}
	}
}
