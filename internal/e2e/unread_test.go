package e2e

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"testing"

	"github.com/tidwall/gjson"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// End-to-end tests of unread counts in /sync and GET /notifications: real
// binary, events sent with mautrix, push rules evaluated by the server
// (the defaults), counts read as a client reads them. Each change is
// checked in the /sync response that carries it (the spec: the counts an
// event changes come in the same response as the event).

// unreadReader is one syncing device of the reader.
type unreadReader struct {
	t      *testing.T
	srv    *Server
	cli    *mautrix.Client
	since  string
	filter string
}

// next is one incremental /sync, waiting up to 10 s for something new.
func (r *unreadReader) next() gjson.Result {
	r.t.Helper()
	q := url.Values{"timeout": {"10000"}}
	if r.since != "" {
		q.Set("since", r.since)
	} else {
		q.Set("timeout", "0")
	}
	if r.filter != "" {
		q.Set("filter", r.filter)
	}
	resp := doJSON(r.t, "GET", clientURL(r.srv, "v3", "sync")+"?"+q.Encode(), r.cli.AccessToken, nil)
	resp.wantOK(r.t)
	specValidateSync(r.t, resp.Body)
	body := gjson.ParseBytes(resp.Raw)
	r.since = body.Get("next_batch").Str
	return body
}

func unreadRoom(body gjson.Result, rid id.RoomID) gjson.Result {
	return body.Get("rooms.join." + gjson.Escape(string(rid)))
}

// expect syncs once and checks the room's unread_notifications.
func (r *unreadReader) expect(what string, rid id.RoomID, notifications, highlights int64) gjson.Result {
	r.t.Helper()
	body := r.next()
	jr := unreadRoom(body, rid)
	if !jr.Exists() {
		r.t.Fatalf("%s: the room is not in the response: %s", what, body.Raw)
	}
	u := jr.Get("unread_notifications")
	if n, h := u.Get("notification_count").Int(), u.Get("highlight_count").Int(); !u.Exists() || n != notifications || h != highlights {
		r.t.Fatalf("%s: unread %s, want %d notifications, %d highlights", what, u.Raw, notifications, highlights)
	}
	return jr
}

// unreadSend sends an m.room.message of msgtype with body and extra fields.
func unreadSend(t *testing.T, cli *mautrix.Client, rid id.RoomID, msgtype, body string, extra map[string]any) id.EventID {
	t.Helper()
	content := map[string]any{"msgtype": msgtype, "body": body}
	for k, v := range extra {
		content[k] = v
	}
	resp, err := cli.SendMessageEvent(context.Background(), rid, event.EventMessage, content)
	if err != nil {
		t.Fatalf("%s sending %q: %v", cli.UserID, body, err)
	}
	return resp.EventID
}

func unreadReceipt(t *testing.T, cli *mautrix.Client, rid id.RoomID, eid id.EventID, typ event.ReceiptType, thread string) {
	t.Helper()
	var content any
	if thread != "" {
		content = map[string]any{"thread_id": thread}
	}
	if err := cli.SendReceipt(context.Background(), rid, eid, typ, content); err != nil {
		t.Fatalf("receipt %s on %s: %v", typ, eid, err)
	}
}

// unreadNotifications is GET /notifications with q.
func unreadNotifications(t *testing.T, srv *Server, cli *mautrix.Client, version string, q url.Values) gjson.Result {
	t.Helper()
	resp := doJSON(t, "GET", clientURL(srv, version, "notifications")+"?"+q.Encode(), cli.AccessToken, nil)
	if resp.Status != http.StatusOK {
		t.Fatalf("GET /notifications?%s: %d %s", q.Encode(), resp.Status, resp.Raw)
	}
	specValidate(t, resp.Body, "notifications.yaml", "/notifications", "get", "200")
	return gjson.ParseBytes(resp.Raw)
}

func eventIDs(list gjson.Result) []id.EventID {
	var out []id.EventID
	for _, n := range list.Array() {
		out = append(out, id.EventID(n.Get("event.event_id").Str))
	}
	return out
}

func TestUnreadCountsAndNotifications(t *testing.T) {
	srv := startAccounts(t, nil)
	alice := registerUser(t, srv, "alice", "alice-password")
	bob := registerUser(t, srv, "bob", "bob-password")
	carol := registerUser(t, srv, "carol", "carol-password")
	// Three members: .m.rule.message (notify, no highlight) applies, not
	// .m.rule.room_one_to_one. carol has the default power 0, below
	// notifications.room (50); alice created the room.
	rid := createRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	joinRoom(t, bob, rid)
	joinRoom(t, carol, rid)

	reader := &unreadReader{t: t, srv: srv, cli: bob}
	body := reader.next()
	if u := unreadRoom(body, rid).Get("unread_notifications"); u.Get("notification_count").Int() != 0 || !u.Get("highlight_count").Exists() {
		t.Fatalf("initial counts: %s", u.Raw)
	}
	if !body.Get(`account_data.events.#(type=="m.push_rules").content.global.override.#(rule_id==".m.rule.master")`).Exists() {
		t.Fatalf("no default m.push_rules in the initial sync: %s", body.Get("account_data").Raw)
	}

	// Messages, mentions, notices. Bodies never contain "bob": the legacy
	// display-name rule would highlight them.
	plain := unreadSend(t, alice, rid, "m.text", "hello there", nil)
	reader.expect("a message", rid, 1, 0)
	mention := unreadSend(t, alice, rid, "m.text", "look at this", map[string]any{"m.mentions": map[string]any{"user_ids": []string{string(bob.UserID)}}})
	reader.expect("a mention of bob", rid, 2, 1)
	weak := unreadSend(t, carol, rid, "m.text", "@room everyone", map[string]any{"m.mentions": map[string]any{"room": true}})
	reader.expect("a room mention without power", rid, 3, 1)
	strong := unreadSend(t, alice, rid, "m.text", "@room everyone", map[string]any{"m.mentions": map[string]any{"room": true}})
	reader.expect("a room mention with power", rid, 4, 2)
	notice := unreadSend(t, alice, rid, "m.notice", "a bot says", nil)
	jr := reader.expect("a notice", rid, 4, 2)
	if jr.Get(`timeline.events.#(event_id=="`+string(notice)+`")`).Raw == "" {
		t.Fatalf("the notice is not in the timeline: %s", jr.Raw)
	}

	// /notifications: newest first, highlights, pages.
	all := unreadNotifications(t, srv, bob, "v3", nil)
	want := []id.EventID{strong, weak, mention, plain}
	if got := eventIDs(all.Get("notifications")); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("notifications %v, want %v", got, want)
	}
	first := all.Get("notifications.0")
	if first.Get("room_id").Str != string(rid) || first.Get("read").Bool() || first.Get("event.room_id").Exists() ||
		first.Get("event.content.body").Str != "@room everyone" || first.Get("ts").Int() != first.Get("event.origin_server_ts").Int() ||
		!first.Get(`actions.#(set_tweak=="highlight")`).Exists() {
		t.Fatalf("first notification: %s", first.Raw)
	}
	hl := unreadNotifications(t, srv, bob, "v3", url.Values{"only": {"highlight"}})
	if got := eventIDs(hl.Get("notifications")); fmt.Sprint(got) != fmt.Sprint([]id.EventID{strong, mention}) {
		t.Fatalf("highlights %v, want %v", got, []id.EventID{strong, mention})
	}
	var paged []id.EventID
	q := url.Values{"limit": {"3"}}
	for range 3 {
		page := unreadNotifications(t, srv, bob, "r0", q)
		paged = append(paged, eventIDs(page.Get("notifications"))...)
		if !page.Get("next_token").Exists() {
			break
		}
		q.Set("from", page.Get("next_token").Str)
	}
	if fmt.Sprint(paged) != fmt.Sprint(want) {
		t.Fatalf("paged %v, want %v", paged, want)
	}

	// A public receipt on the newest event reads everything.
	unreadReceipt(t, bob, rid, notice, event.ReceiptTypeRead, "")
	reader.expect("m.read on the newest", rid, 0, 0)
	if unreadNotifications(t, srv, bob, "v3", nil).Get("notifications.#(read==false)").Exists() {
		t.Fatal("a notification is unread after the receipt")
	}

	// A private receipt reads up to its event.
	m1 := unreadSend(t, alice, rid, "m.text", "one", nil)
	m2 := unreadSend(t, alice, rid, "m.text", "two", nil)
	reader.expect("two more", rid, 2, 0)
	// A display name change is bob's own event, but a state event: it
	// reads nothing, and hides no notification.
	before := len(unreadNotifications(t, srv, bob, "v3", url.Values{"limit": {"100"}}).Get("notifications").Array())
	if err := bob.SetDisplayName(context.Background(), "Robert"); err != nil {
		t.Fatal(err)
	}
	reader.expect("a display name change", rid, 2, 0)
	if after := len(unreadNotifications(t, srv, bob, "v3", url.Values{"limit": {"100"}}).Get("notifications").Array()); after != before {
		t.Fatalf("%d notifications after a display name change, %d before", after, before)
	}
	unreadReceipt(t, bob, rid, m1, event.ReceiptTypeReadPrivate, "")
	reader.expect("m.read.private on the first", rid, 1, 0)
	unreadReceipt(t, bob, rid, m2, event.ReceiptTypeReadPrivate, "")
	reader.expect("m.read.private on the second", rid, 0, 0)

	// Threads, with a device that asks for thread counts.
	threaded := &unreadReader{t: t, srv: srv, cli: bob, filter: `{"room":{"timeline":{"unread_thread_notifications":true}}}`}
	threaded.next()
	root := unreadSend(t, alice, rid, "m.text", "a thread starts", nil)
	inThread := map[string]any{"m.relates_to": map[string]any{"rel_type": "m.thread", "event_id": root}}
	unreadSend(t, alice, rid, "m.text", "reply one", inThread)
	t2 := unreadSend(t, alice, rid, "m.text", "reply two", inThread)
	mainMsg := unreadSend(t, alice, rid, "m.text", "meanwhile", nil)
	reader.expect("without the filter: every thread", rid, 4, 0)
	threadCounts := func(what string, main, thread int64) {
		t.Helper()
		jr := threaded.expect(what, rid, main, 0)
		tc := jr.Get("unread_thread_notifications." + gjson.Escape(string(root)))
		if thread == 0 && tc.Exists() || thread != 0 && tc.Get("notification_count").Int() != thread {
			t.Fatalf("%s: thread counts %s, want %d", what, jr.Get("unread_thread_notifications").Raw, thread)
		}
	}
	threadCounts("with the filter", 2, 2)
	unreadReceipt(t, bob, rid, t2, event.ReceiptTypeRead, string(root))
	threadCounts("threaded receipt on the thread", 2, 0)
	reader.expect("the thread read, the main timeline not", rid, 2, 0)
	unreadReceipt(t, bob, rid, mainMsg, event.ReceiptTypeRead, "main")
	threadCounts("threaded receipt on main", 0, 0)
	reader.expect("all read", rid, 0, 0)

	// bob's own message reads what came before it.
	unreadSend(t, alice, rid, "m.text", "anyone?", nil)
	reader.expect("another message", rid, 1, 0)
	unreadSend(t, bob, rid, "m.text", "yes", nil)
	reader.expect("bob answered", rid, 0, 0)
	if unreadNotifications(t, srv, alice, "v3", nil).Get("notifications.#(event.sender==\"" + string(alice.UserID) + "\")").Exists() {
		t.Fatal("alice is notified of her own message")
	}
}
