package api_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/tidwall/gjson"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/weftchat/weft/storage"
	"github.com/weftchat/weft/syncapi"
)

// Unread counts in /sync, m.push_rules in /sync and GET /notifications
// through the real router on real Postgres. Push evaluation is not wired
// here: the tests write the per-user notification rows (event_push_exceptions) it would write
// directly, after the event and before any read of the counts.

// notifStack is the server with its sync service and a pool on its
// database.
type notifStack struct {
	srv   *httptest.Server
	syncs *syncapi.Service
	db    *storage.DB
	pool  *pgxpool.Pool
}

func newNotifStack(t *testing.T) *notifStack {
	t.Helper()
	st := newStack(t, stackOpts{})
	return &notifStack{srv: st.srv, syncs: st.syncs, db: st.db, pool: st.raw}
}

// notify writes the row push evaluation writes when user's rules say
// notify for eid (thread "" is the main timeline).
func (s *notifStack) notify(t *testing.T, user id.UserID, eid id.EventID, thread string, highlight bool) {
	t.Helper()
	actions := `["notify",{"set_tweak":"sound","value":"default"}]`
	if highlight {
		actions = `["notify",{"set_tweak":"sound","value":"default"},{"set_tweak":"highlight"}]`
	}
	if thread == "" {
		thread = "main"
	}
	tag, err := s.pool.Exec(context.Background(), `INSERT INTO event_push_exceptions (user_id, room_id, stream_pos, event_id, thread_id, highlight, actions, ts)
		SELECT $1, room_id, stream_pos, event_id, $3, $4, $5, origin_server_ts FROM events WHERE event_id = $2`,
		user, eid, thread, highlight, actions)
	if err != nil || tag.RowsAffected() != 1 {
		t.Fatalf("writing the push row of %s for %s: %v", user, eid, err)
	}
}

// notifGet is an authenticated GET returning the status and parsed body.
func notifGet(t *testing.T, srv *httptest.Server, token, path string, q url.Values) (int, gjson.Result) {
	t.Helper()
	status, body, err := notifGetErr(srv, token, path, q)
	if err != nil {
		t.Fatal(err)
	}
	return status, body
}

// notifGetErr is notifGet for goroutines other than the test's.
func notifGetErr(srv *httptest.Server, token, path string, q url.Values) (int, gjson.Result, error) {
	req, err := http.NewRequest("GET", srv.URL+path+"?"+q.Encode(), nil)
	if err != nil {
		return 0, gjson.Result{}, err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, gjson.Result{}, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, gjson.Result{}, err
	}
	if !gjson.ValidBytes(body) {
		return 0, gjson.Result{}, fmt.Errorf("GET %s: %d, not JSON: %s", path, resp.StatusCode, body)
	}
	return resp.StatusCode, gjson.ParseBytes(body), nil
}

// notifLongPoll runs a /sync long-poll on its own goroutine; the channel
// gets its body (or an empty result on failure, reported with t.Error).
func notifLongPoll(t *testing.T, srv *httptest.Server, cli *mautrix.Client, since, filter string, timeout int) <-chan gjson.Result {
	q := url.Values{"timeout": {fmt.Sprint(timeout)}, "since": {since}}
	if filter != "" {
		q.Set("filter", filter)
	}
	done := make(chan gjson.Result, 1)
	go func() {
		status, body, err := notifGetErr(srv, cli.AccessToken, "/_matrix/client/v3/sync", q)
		if err == nil && status != http.StatusOK {
			err = fmt.Errorf("sync: %d %s", status, body.Raw)
		}
		if err != nil {
			t.Error(err)
		}
		done <- body
	}()
	return done
}

// notifSync is GET /sync; the body and its next_batch.
func notifSync(t *testing.T, srv *httptest.Server, cli *mautrix.Client, since, filter string, timeout int) (gjson.Result, string) {
	t.Helper()
	q := url.Values{"timeout": {fmt.Sprint(timeout)}}
	if since != "" {
		q.Set("since", since)
	}
	if filter != "" {
		q.Set("filter", filter)
	}
	status, body := notifGet(t, srv, cli.AccessToken, "/_matrix/client/v3/sync", q)
	if status != http.StatusOK {
		t.Fatalf("sync: %d %s", status, body.Raw)
	}
	return body, body.Get("next_batch").Str
}

func roomPath(rid id.RoomID, rest string) string {
	return "rooms.join." + gjson.Escape(string(rid)) + rest
}

func wantCounts(t *testing.T, what string, body gjson.Result, rid id.RoomID, notifications, highlights int64) {
	t.Helper()
	u := body.Get(roomPath(rid, ".unread_notifications"))
	if !u.Exists() {
		t.Fatalf("%s: room %s has no unread_notifications: %s", what, rid, body.Get("rooms").Raw)
	}
	if n, h := u.Get("notification_count").Int(), u.Get("highlight_count").Int(); n != notifications || h != highlights {
		t.Fatalf("%s: counts %d/%d, want %d/%d", what, n, h, notifications, highlights)
	}
}

func sendText(t *testing.T, cli *mautrix.Client, rid id.RoomID, body string, content map[string]any) id.EventID {
	t.Helper()
	if content == nil {
		content = map[string]any{}
	}
	content["msgtype"] = "m.text"
	content["body"] = body
	resp, err := cli.SendMessageEvent(context.Background(), rid, event.EventMessage, content)
	if err != nil {
		t.Fatalf("sending %q: %v", body, err)
	}
	return resp.EventID
}

func TestSyncUnreadCounts(t *testing.T) {
	s := newNotifStack(t)
	ctx := context.Background()
	alice := newClient(t, s.srv, "alice", true)
	bob := newClient(t, s.srv, "bob", true)
	created, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	if err != nil {
		t.Fatal(err)
	}
	rid := created.RoomID
	other, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range []id.RoomID{rid, other.RoomID} {
		if _, err := bob.JoinRoomByID(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	m1 := sendText(t, alice, rid, "hello", nil)
	s.notify(t, bob.UserID, m1, "", false)
	m2 := sendText(t, alice, rid, "bob!", nil)
	s.notify(t, bob.UserID, m2, "", true)
	root := m1
	t1 := sendText(t, alice, rid, "in a thread", map[string]any{"m.relates_to": map[string]any{"rel_type": "m.thread", "event_id": root}})
	s.notify(t, bob.UserID, t1, string(root), false)

	// Initial sync: every joined room carries counts, all threads summed;
	// m.push_rules is the rendered defaults.
	body, since := notifSync(t, s.srv, bob, "", "", 0)
	wantCounts(t, "initial", body, rid, 3, 1)
	wantCounts(t, "initial, room without notifications", body, other.RoomID, 0, 0)
	if body.Get(roomPath(rid, ".unread_thread_notifications")).Exists() {
		t.Fatalf("thread counts without the filter asking: %s", body.Get(roomPath(rid, "")).Raw)
	}
	rules := body.Get(`account_data.events.#(type=="m.push_rules").content.global`)
	if !rules.Get(`override.#(rule_id==".m.rule.master")`).Exists() || !rules.Get(`underride.#(rule_id==".m.rule.message")`).Exists() {
		t.Fatalf("initial sync: m.push_rules is not the default ruleset: %s", body.Get("account_data").Raw)
	}

	// With unread_thread_notifications: the main timeline and each thread.
	threaded := `{"room":{"timeline":{"unread_thread_notifications":true}}}`
	tbody, _ := notifSync(t, s.srv, bob, "", threaded, 0)
	wantCounts(t, "threaded, main", tbody, rid, 2, 1)
	th := tbody.Get(roomPath(rid, ".unread_thread_notifications."+gjson.Escape(string(root))))
	if th.Get("notification_count").Int() != 1 || th.Get("highlight_count").Int() != 0 {
		t.Fatalf("thread counts: %s", tbody.Get(roomPath(rid, "")).Raw)
	}
	if n := len(tbody.Get(roomPath(other.RoomID, ".unread_thread_notifications")).Map()); n != 0 {
		t.Fatalf("a room without threads has thread counts")
	}

	// Something in the other room only: the first room is not news.
	sendText(t, alice, other.RoomID, "elsewhere", nil)
	body, since = notifSync(t, s.srv, bob, since, "", 0)
	if body.Get(roomPath(rid, "")).Exists() {
		t.Fatalf("an unchanged room in an incremental sync: %s", body.Get("rooms").Raw)
	}
	wantCounts(t, "other room, incremental", body, other.RoomID, 0, 0)
	if body.Get(`account_data.events.#(type=="m.push_rules")`).Exists() {
		t.Fatalf("m.push_rules again in an incremental sync")
	}

	// bob reads privately, with receipts filtered out of his sync: the
	// long-poll answers with the room, which has nothing to show but its
	// counts.
	noReceipts := `{"room":{"ephemeral":{"not_types":["m.receipt"]}}}`
	_, since = notifSync(t, s.srv, bob, since, noReceipts, 0)
	done := notifLongPoll(t, s.srv, bob, since, noReceipts, 10000)
	time.Sleep(100 * time.Millisecond) // let the long-poll park
	if err := bob.SendReceipt(ctx, rid, m2, event.ReceiptTypeReadPrivate, nil); err != nil {
		t.Fatal(err)
	}
	select {
	case body = <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("a private receipt did not answer the long-poll")
	}
	wantCounts(t, "after the private receipt", body, rid, 1, 0)
	if n := len(body.Get(roomPath(rid, ".timeline.events")).Array()); n != 0 {
		t.Fatalf("timeline after a receipt: %s", body.Get(roomPath(rid, "")).Raw)
	}
	since = body.Get("next_batch").Str

	// bob's own message reads everything before it.
	sendText(t, bob, rid, "all read", nil)
	body, since = notifSync(t, s.srv, bob, since, "", 0)
	wantCounts(t, "after bob's message", body, rid, 0, 0)

	// A notification for an event the filter leaves out of the timeline
	// still brings the room, with its counts.
	notice := sendText(t, alice, rid, "filtered", nil)
	s.notify(t, bob.UserID, notice, "", false)
	body, _ = notifSync(t, s.srv, bob, since, `{"room":{"timeline":{"not_types":["m.room.message"]}}}`, 0)
	wantCounts(t, "event filtered out", body, rid, 1, 0)
}

func TestNotificationsEndpoint(t *testing.T) {
	s := newNotifStack(t)
	ctx := context.Background()
	alice := newClient(t, s.srv, "alice", true)
	bob := newClient(t, s.srv, "bob", true)
	created, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	if err != nil {
		t.Fatal(err)
	}
	rid := created.RoomID
	if _, err := bob.JoinRoomByID(ctx, rid); err != nil {
		t.Fatal(err)
	}
	var evs []id.EventID
	for i := range 5 {
		eid := sendText(t, alice, rid, fmt.Sprint("message ", i), nil)
		s.notify(t, bob.UserID, eid, "", i%2 == 0)
		evs = append(evs, eid)
	}
	if err := bob.SendReceipt(ctx, rid, evs[1], event.ReceiptTypeRead, nil); err != nil {
		t.Fatal(err)
	}
	// A row for an event in a private room bob was never in: not his to see.
	secret, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat"})
	if err != nil {
		t.Fatal(err)
	}
	hidden := sendText(t, alice, secret.RoomID, "secret", nil)
	s.notify(t, bob.UserID, hidden, "", true)

	path := "/_matrix/client/v3/notifications"
	status, body := notifGet(t, s.srv, bob.AccessToken, path, nil)
	if status != http.StatusOK {
		t.Fatalf("GET /notifications: %d %s", status, body.Raw)
	}
	ns := body.Get("notifications").Array()
	if len(ns) != 5 || body.Get("next_token").Exists() {
		t.Fatalf("want the 5 visible notifications and no next_token: %s", body.Raw)
	}
	for i, n := range ns {
		want := evs[4-i]
		ev := n.Get("event")
		if id.EventID(ev.Get("event_id").Str) != want || ev.Get("content.body").Str != fmt.Sprint("message ", 4-i) ||
			ev.Get("sender").Str != string(alice.UserID) || ev.Get("type").Str != "m.room.message" || ev.Get("room_id").Exists() {
			t.Fatalf("notification %d: event %s, want %s in client format without room_id", i, ev.Raw, want)
		}
		if n.Get("room_id").Str != string(rid) || n.Get("ts").Int() != ev.Get("origin_server_ts").Int() {
			t.Fatalf("notification %d: room_id/ts: %s", i, n.Raw)
		}
		if wantRead := 4-i <= 1; n.Get("read").Bool() != wantRead || !n.Get("read").IsBool() {
			t.Fatalf("notification %d read: %s, want %v", i, n.Get("read").Raw, wantRead)
		}
		if hl := n.Get(`actions.#(set_tweak=="highlight")`).Exists(); hl != ((4-i)%2 == 0) || n.Get("actions.0").Str != "notify" {
			t.Fatalf("notification %d actions: %s", i, n.Get("actions").Raw)
		}
	}

	// Pages of two, through next_token, on the r0 alias too.
	var got []string
	from := ""
	for page := 0; ; page++ {
		q := url.Values{"limit": {"2"}}
		if from != "" {
			q.Set("from", from)
		}
		p := path
		if page%2 == 1 {
			p = "/_matrix/client/r0/notifications"
		}
		status, body := notifGet(t, s.srv, bob.AccessToken, p, q)
		if status != http.StatusOK {
			t.Fatalf("page %d: %d %s", page, status, body.Raw)
		}
		for _, n := range body.Get("notifications").Array() {
			got = append(got, n.Get("event.event_id").Str)
		}
		from = body.Get("next_token").Str
		if from == "" {
			break
		}
		if page > 5 {
			t.Fatal("pagination does not end")
		}
	}
	// The hidden event is paged over, not shown.
	if fmt.Sprint(got) != fmt.Sprint([]id.EventID{evs[4], evs[3], evs[2], evs[1], evs[0]}) {
		t.Fatalf("paged: %v", got)
	}

	_, body = notifGet(t, s.srv, bob.AccessToken, path, url.Values{"only": {"highlight"}})
	got = nil
	for _, n := range body.Get("notifications").Array() {
		got = append(got, n.Get("event.event_id").Str)
	}
	if fmt.Sprint(got) != fmt.Sprint([]id.EventID{evs[4], evs[2], evs[0]}) {
		t.Fatalf("only=highlight: %v", got)
	}

	// alice has none; errors.
	_, body = notifGet(t, s.srv, alice.AccessToken, path, nil)
	if body.Get("notifications").Raw != "[]" {
		t.Fatalf("alice's notifications: %s", body.Raw)
	}
	for _, q := range []url.Values{{"from": {"nonsense"}}, {"limit": {"-1"}}, {"limit": {"x"}}} {
		status, body := notifGet(t, s.srv, bob.AccessToken, path, q)
		if status != http.StatusBadRequest || body.Get("errcode").Str != "M_INVALID_PARAM" {
			t.Fatalf("%v: %d %s, want 400 M_INVALID_PARAM", q, status, body.Raw)
		}
	}
	if status, body := notifGet(t, s.srv, "not-a-token", path, nil); status != http.StatusUnauthorized || body.Get("errcode").Str != "M_UNKNOWN_TOKEN" {
		t.Fatalf("bad token: %d %s", status, body.Raw)
	}
}

func TestDeviceSyncing(t *testing.T) {
	s := newNotifStack(t)
	bob := newClient(t, s.srv, "bob", true)
	if s.syncs.DeviceSyncing(bob.UserID, bob.DeviceID) {
		t.Fatal("a device that never synced is syncing")
	}
	_, since := notifSync(t, s.srv, bob, "", "", 0)
	if !s.syncs.DeviceSyncing(bob.UserID, bob.DeviceID) {
		t.Fatal("a device answered just now is not syncing")
	}
	if s.syncs.DeviceSyncing(bob.UserID, "OTHER") {
		t.Fatal("another device of the user is syncing")
	}
	done := notifLongPoll(t, s.srv, bob, since, "", 2000)
	time.Sleep(100 * time.Millisecond)
	if !s.syncs.DeviceSyncing(bob.UserID, bob.DeviceID) {
		t.Fatal("a device waiting in a long-poll is not syncing")
	}
	<-done
}

func TestSyncPushRules(t *testing.T) {
	s := newNotifStack(t)
	ctx := context.Background()
	bob := newClient(t, s.srv, "bob", true)
	rulesOf := func(body gjson.Result) gjson.Result {
		return body.Get(`account_data.events.#(type=="m.push_rules").content.global`)
	}
	body, since := notifSync(t, s.srv, bob, "", "", 0)
	if master := rulesOf(body).Get(`override.#(rule_id==".m.rule.master")`); master.Get("enabled").Bool() || !master.Get("enabled").Exists() {
		t.Fatalf("default master rule: %s", rulesOf(body).Raw)
	}
	if body, _ := notifSync(t, s.srv, bob, "", `{"account_data":{"not_types":["m.push_rules"]}}`, 0); rulesOf(body).Exists() {
		t.Fatal("m.push_rules sent although the filter leaves it out")
	}
	if body, _ := notifSync(t, s.srv, bob, since, "", 0); rulesOf(body).Exists() {
		t.Fatal("m.push_rules in an incremental sync with no change")
	}

	// Stored rules: only what the user changed. /sync delivers the whole
	// rendered ruleset.
	write := func(content string) {
		t.Helper()
		err := s.db.PushRules().UpdatePushRules(ctx, bob.UserID, func(json.RawMessage) (json.RawMessage, error) {
			return json.RawMessage(content), nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	write(`{"global":{"override":[{"rule_id":".m.rule.master","default":true,"enabled":true,"actions":[]}]}}`)
	body, since = notifSync(t, s.srv, bob, since, "", 0)
	rules := rulesOf(body)
	if !rules.Get(`override.#(rule_id==".m.rule.master").enabled`).Bool() || !rules.Get(`underride.#(rule_id==".m.rule.message")`).Exists() {
		t.Fatalf("stored rules not rendered: %s", rules.Raw)
	}
	// full_state: the stored rules again, although older than the token.
	q := url.Values{"since": {since}, "full_state": {"true"}, "timeout": {"0"}}
	status, body := notifGet(t, s.srv, bob.AccessToken, "/_matrix/client/v3/sync", q)
	if status != http.StatusOK || !rulesOf(body).Get(`override.#(rule_id==".m.rule.master").enabled`).Bool() {
		t.Fatalf("full_state sync: %d %s", status, body.Get("account_data").Raw)
	}
	// Stored content that is not a ruleset: the defaults.
	write(`{"global":5}`)
	body, _ = notifSync(t, s.srv, bob, since, "", 0)
	if master := rulesOf(body).Get(`override.#(rule_id==".m.rule.master")`); !master.Exists() || master.Get("enabled").Bool() {
		t.Fatalf("broken stored rules: %s", body.Get("account_data").Raw)
	}
}
