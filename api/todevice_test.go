package api_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/crypto/canonicaljson"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/weftchat/weft/storage"
	"github.com/weftchat/weft/syncapi"
)

// tdStack is the whole server in this process for to-device messages and
// device lists: real router, real Postgres, real notifier, a metrics
// registry, and a one-time key count hook the test controls.
type tdStack struct {
	srv   *httptest.Server
	db    *storage.DB
	raw   *pgxpool.Pool // to look at tables
	dbURL string
	key   ed25519.PrivateKey
	syncs *syncapi.Service
	// counts, when set, answers the KeyCounts hook.
	counts atomic.Pointer[func(id.UserID, id.DeviceID) (map[id.KeyAlgorithm]int, []id.KeyAlgorithm)]
}

type tdOpts struct {
	backlog int
	// restartOf, when set, is a stack whose database this one serves, as
	// a server restarted over it would: a new notifier, new caches.
	restartOf *tdStack
}

func newTDStack(t testing.TB, o tdOpts) *tdStack {
	t.Helper()
	st := &tdStack{}
	so := stackOpts{park: true, toDeviceBacklog: o.backlog}
	so.keyCounts = func(_ context.Context, user id.UserID, device id.DeviceID) (map[id.KeyAlgorithm]int, []id.KeyAlgorithm, error) {
		if f := st.counts.Load(); f != nil {
			c, fb := (*f)(user, device)
			return c, fb, nil
		}
		return nil, nil, nil
	}
	if o.restartOf != nil {
		so.restartOf = &stack{dbURL: o.restartOf.dbURL, key: o.restartOf.key}
	}
	full := newStack(t, so)
	st.srv, st.db, st.raw, st.dbURL, st.key, st.syncs = full.srv, full.db, full.raw, full.dbURL, full.key, full.syncs
	return st
}

// user registers localpart (its first device) and logs in extra devices.
func (st *tdStack) user(t testing.TB, localpart string, devices int) []*mautrix.Client {
	t.Helper()
	clis := []*mautrix.Client{tdClient(t, st.srv, localpart, true)}
	for range devices - 1 {
		clis = append(clis, tdClient(t, st.srv, localpart, false))
	}
	return clis
}

// tdClient is newClient for tests and benchmarks.
func tdClient(t testing.TB, srv *httptest.Server, user string, register bool) *mautrix.Client {
	t.Helper()
	cli, err := mautrix.NewClient(srv.URL, "", "")
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if register {
		resp, err := cli.RegisterDummy(ctx, &mautrix.ReqRegister[any]{Username: user, Password: "password " + user})
		if err != nil {
			t.Fatalf("register %s: %v", user, err)
		}
		cli.SetCredentials(resp.UserID, resp.AccessToken)
		cli.DeviceID = resp.DeviceID
		return cli
	}
	_, err = cli.Login(ctx, &mautrix.ReqLogin{
		Type:       mautrix.AuthTypePassword,
		Identifier: mautrix.UserIdentifier{Type: mautrix.IdentifierTypeUser, User: user},
		Password:   "password " + user, StoreCredentials: true,
	})
	if err != nil {
		t.Fatalf("login %s: %v", user, err)
	}
	return cli
}

type tdResp struct {
	status int
	body   []byte
}

func (r tdResp) ok(t testing.TB) map[string]any {
	t.Helper()
	if r.status != http.StatusOK {
		t.Fatalf("status %d, want 200: %s", r.status, r.body)
	}
	var m map[string]any
	if err := json.Unmarshal(r.body, &m); err != nil {
		t.Fatalf("body %q: %v", r.body, err)
	}
	return m
}

func (r tdResp) fails(t testing.TB, status int, errcode string) {
	t.Helper()
	var e struct{ Errcode string }
	_ = json.Unmarshal(r.body, &e)
	if r.status != status || e.Errcode != errcode {
		t.Fatalf("got %d %s (%s), want %d %s", r.status, e.Errcode, r.body, status, errcode)
	}
}

// do sends a raw request: body is JSON-encoded unless it is a string.
func (st *tdStack) do(t testing.TB, method, path, token string, body any) tdResp {
	t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	default:
		raw, err := json.Marshal(b)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(raw)
	}
	req, err := http.NewRequest(method, st.srv.URL+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return tdResp{status: resp.StatusCode, body: raw}
}

func (st *tdStack) send(t testing.TB, cli *mautrix.Client, typ, txn string, messages map[id.UserID]map[id.DeviceID]any) {
	t.Helper()
	st.do(t, "PUT", "/_matrix/client/v3/sendToDevice/"+url.PathEscape(typ)+"/"+url.PathEscape(txn), cli.AccessToken,
		map[string]any{"messages": messages}).ok(t)
}

// sync is GET /sync, raw; since "" is an initial sync.
func (st *tdStack) sync(t testing.TB, cli *mautrix.Client, since string, timeout int) map[string]any {
	t.Helper()
	q := url.Values{"timeout": {fmt.Sprint(timeout)}}
	if since != "" {
		q.Set("since", since)
	}
	return st.do(t, "GET", "/_matrix/client/v3/sync?"+q.Encode(), cli.AccessToken, nil).ok(t)
}

// toDevice lists a sync response's to-device events.
func toDevice(body map[string]any) []map[string]any {
	td, _ := body["to_device"].(map[string]any)
	evs, _ := td["events"].([]any)
	out := make([]map[string]any, 0, len(evs))
	for _, e := range evs {
		out = append(out, e.(map[string]any))
	}
	return out
}

// bodies is the "n" field of each to-device event's content.
func tdNumbers(evs []map[string]any) []int {
	out := make([]int, 0, len(evs))
	for _, e := range evs {
		n, _ := e["content"].(map[string]any)["n"].(float64)
		out = append(out, int(n))
	}
	return out
}

func TestSendToDeviceDelivery(t *testing.T) {
	st := newTDStack(t, tdOpts{})
	alice := st.user(t, "alice", 2)
	bob := st.user(t, "bob", 1)[0]
	a1, a2 := alice[0], alice[1]
	t1 := st.sync(t, a1, "", 0)["next_batch"].(string)
	t2 := st.sync(t, a2, "", 0)["next_batch"].(string)

	// Exactly the addressed device.
	st.send(t, bob, "m.room_key_request", "t1", map[id.UserID]map[id.DeviceID]any{
		a1.UserID: {a1.DeviceID: map[string]any{"n": 1, "x": "only a1"}},
	})
	r1 := st.sync(t, a1, t1, 0)
	got := toDevice(r1)
	want := map[string]any{"sender": string(bob.UserID), "type": "m.room_key_request", "content": map[string]any{"n": float64(1), "x": "only a1"}}
	if len(got) != 1 || fmt.Sprint(got[0]) != fmt.Sprint(want) {
		t.Fatalf("a1 got %v, want [%v]", got, want)
	}
	if r2 := st.sync(t, a2, t2, 0); len(toDevice(r2)) != 0 {
		t.Fatalf("a2 got a message addressed to a1: %v", toDevice(r2))
	}
	t1 = r1["next_batch"].(string)

	// "*": every device; an explicit device ID wins over "*" for that
	// device; unknown devices and users, and remote users, get nothing
	// and fail nothing. Through the r0 path.
	st.do(t, "PUT", "/_matrix/client/r0/sendToDevice/m.test/t2", bob.AccessToken, map[string]any{"messages": map[string]any{
		string(a1.UserID):            map[string]any{"*": map[string]any{"n": 2}, string(a2.DeviceID): map[string]any{"n": 3}},
		string(bob.UserID):           map[string]any{"NOSUCHDEVICE": map[string]any{"n": 4}},
		"@nobody:" + syncTestServer:  map[string]any{"*": map[string]any{"n": 5}},
		"@remote:elsewhere.example":  map[string]any{"*": map[string]any{"n": 6}},
		"@remote2:elsewhere.example": map[string]any{"DEV": map[string]any{"n": 7}},
	}}).ok(t)
	r1 = st.sync(t, a1, t1, 0)
	if n := tdNumbers(toDevice(r1)); !slices.Equal(n, []int{2}) {
		t.Fatalf("a1 got %v, want [2]", n)
	}
	r2 := st.sync(t, a2, t2, 0)
	if n := tdNumbers(toDevice(r2)); !slices.Equal(n, []int{3}) {
		t.Fatalf("a2 got %v, want [3] (its own message, then nothing from *)", n)
	}
	if b := st.sync(t, bob, "", 0); len(toDevice(b)) != 0 {
		t.Fatalf("bob got %v", toDevice(b))
	}

	// Refusals.
	path := "/_matrix/client/v3/sendToDevice/m.test/bad"
	st.do(t, "PUT", path, "", map[string]any{"messages": map[string]any{}}).fails(t, 401, "M_MISSING_TOKEN")
	st.do(t, "PUT", path, bob.AccessToken, map[string]any{}).fails(t, 400, "M_BAD_JSON")
	st.do(t, "PUT", path, bob.AccessToken, `{"messages": `).fails(t, 400, "M_NOT_JSON")
	st.do(t, "PUT", path, bob.AccessToken, map[string]any{"messages": map[string]any{string(a1.UserID): map[string]any{"*": "not an object"}}}).fails(t, 400, "M_BAD_JSON")
	st.do(t, "PUT", path, bob.AccessToken, map[string]any{"messages": map[string]any{"not-a-user": map[string]any{"*": map[string]any{}}}}).fails(t, 400, "M_INVALID_PARAM")
	st.do(t, "PUT", path, bob.AccessToken, map[string]any{"messages": map[string]any{string(a1.UserID): map[string]any{"": map[string]any{}}}}).fails(t, 400, "M_INVALID_PARAM")
	if r := st.sync(t, a1, r1["next_batch"].(string), 0); len(toDevice(r)) != 0 {
		t.Fatalf("a refused request delivered %v", toDevice(r))
	}
}

// TestSendToDeviceIdempotent: a retry with the same transaction ID from
// the same device sends nothing again, also when the retries race; the
// same ID from another device is another request.
func TestSendToDeviceIdempotent(t *testing.T) {
	st := newTDStack(t, tdOpts{})
	alice := st.user(t, "alice", 1)[0]
	bob := st.user(t, "bob", 2)
	since := st.sync(t, alice, "", 0)["next_batch"].(string)
	msg := func(n int) map[id.UserID]map[id.DeviceID]any {
		return map[id.UserID]map[id.DeviceID]any{alice.UserID: {"*": map[string]any{"n": n}}}
	}
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() { st.send(t, bob[0], "m.test", "same", msg(1)) })
	}
	wg.Wait()
	st.send(t, bob[0], "m.test", "same", msg(2))  // a retry with other content is still a retry
	st.send(t, bob[1], "m.test", "same", msg(3))  // another device
	st.send(t, bob[0], "m.other", "same", msg(4)) // the ID is per device, not per event type
	got := tdNumbers(toDevice(st.sync(t, alice, since, 0)))
	if !slices.Equal(got, []int{1, 3}) {
		t.Fatalf("alice got %v, want [1 3]", got)
	}
}

// TestToDeviceSurvivesLostResponse: a message is deleted only once the
// device syncs with a token past it.
func TestToDeviceSurvivesLostResponse(t *testing.T) {
	st := newTDStack(t, tdOpts{})
	alice := st.user(t, "alice", 1)[0]
	bob := st.user(t, "bob", 1)[0]
	t0 := st.sync(t, alice, "", 0)["next_batch"].(string)
	st.send(t, bob, "m.test", "1", map[id.UserID]map[id.DeviceID]any{alice.UserID: {alice.DeviceID: map[string]any{"n": 1}}})
	lost := st.sync(t, alice, t0, 0) // the client never sees this response
	if n := tdNumbers(toDevice(lost)); !slices.Equal(n, []int{1}) {
		t.Fatalf("first delivery %v", n)
	}
	again := st.sync(t, alice, t0, 0)
	if n := tdNumbers(toDevice(again)); !slices.Equal(n, []int{1}) {
		t.Fatalf("after a lost response, the same token got %v, want [1] again", n)
	}
	t1 := again["next_batch"].(string)
	if n := tdNumbers(toDevice(st.sync(t, alice, t1, 0))); len(n) != 0 {
		t.Fatalf("the next token got %v again", n)
	}
	if n := tdNumbers(toDevice(st.sync(t, alice, t0, 0))); len(n) != 0 {
		t.Fatalf("after a sync past it, the message came back: %v", n)
	}
	// A later message after the acknowledgement is delivered (the
	// acknowledgement shortcut must not skip it) and acknowledged.
	st.send(t, bob, "m.test", "2", map[id.UserID]map[id.DeviceID]any{alice.UserID: {alice.DeviceID: map[string]any{"n": 2}}})
	r := st.sync(t, alice, t1, 0)
	if n := tdNumbers(toDevice(r)); !slices.Equal(n, []int{2}) {
		t.Fatalf("second message: %v", n)
	}
	st.sync(t, alice, r["next_batch"].(string), 0)
	if n := st.waiting(t, alice); n != 0 {
		t.Fatalf("%d messages still stored after the device synced past them", n)
	}
}

// waiting counts the device's stored messages.
func (st *tdStack) waiting(t testing.TB, cli *mautrix.Client) int {
	t.Helper()
	var n int
	err := st.raw.QueryRow(context.Background(), `SELECT count(*) FROM to_device_messages WHERE user_id = $1 AND device_id = $2`,
		cli.UserID, cli.DeviceID).Scan(&n)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestToDevicePaging: at most 100 messages per response, in order, none
// lost or repeated; the response is cut at the last message it carries,
// so a room event sent among them arrives in exactly the response whose
// window holds it.
func TestToDevicePaging(t *testing.T) {
	st := newTDStack(t, tdOpts{})
	alice := st.user(t, "alice", 1)[0]
	bob := st.user(t, "bob", 1)[0]
	ctx := context.Background()
	roomID := createTDRoom(t, alice, false)
	joinTD(t, bob, roomID)
	since := st.sync(t, alice, "", 0)["next_batch"].(string)
	sendN := func(from, to int) {
		for i := from; i < to; i++ {
			st.send(t, bob, "m.test", fmt.Sprint("p", i), map[id.UserID]map[id.DeviceID]any{alice.UserID: {alice.DeviceID: map[string]any{"n": i}}})
		}
	}
	sendN(0, 120)
	msg, err := bob.SendText(ctx, roomID, "among the messages")
	if err != nil {
		t.Fatal(err)
	}
	sendN(120, 250)

	var got []int
	var sizes []int
	seenEvent := 0
	for range 10 {
		r := st.sync(t, alice, since, 0)
		n := tdNumbers(toDevice(r))
		if len(n) == 0 {
			break
		}
		got = append(got, n...)
		sizes = append(sizes, len(n))
		if tl := tdDig(r, "rooms", "join", string(roomID), "timeline", "events"); tl != nil {
			for _, e := range tl.([]any) {
				if e.(map[string]any)["event_id"] == string(msg.EventID) {
					seenEvent++
					if got[len(got)-1] < 120 {
						t.Errorf("the room event came with messages up to %d, before the messages sent ahead of it", got[len(got)-1])
					}
					if n[0] >= 120 {
						t.Errorf("the room event came after messages from %d on: the response holding message 119 skipped it", n[0])
					}
				}
			}
		}
		since = r["next_batch"].(string)
	}
	if !slices.Equal(sizes, []int{100, 100, 50}) {
		t.Fatalf("responses of %v messages, want [100 100 50]", sizes)
	}
	for i, n := range got {
		if n != i {
			t.Fatalf("message %d is %d: out of order or repeated: %v", i, n, got)
		}
	}
	if seenEvent != 1 {
		t.Fatalf("the room event arrived %d times, want once", seenEvent)
	}
}

// TestToDeviceBacklogDropsOldest: a device's waiting messages are
// bounded; the oldest go first, and the metric counts them.
func TestToDeviceBacklogDropsOldest(t *testing.T) {
	st := newTDStack(t, tdOpts{backlog: 5})
	alice := st.user(t, "alice", 2)
	bob := st.user(t, "bob", 1)[0]
	for i := range 8 {
		// a1 is addressed 8 times, a2 only by the last 3: only a1 overflows.
		target := map[id.DeviceID]any{alice[0].DeviceID: map[string]any{"n": i}}
		if i >= 5 {
			target = map[id.DeviceID]any{"*": map[string]any{"n": i}}
		}
		st.send(t, bob, "m.test", fmt.Sprint("b", i), map[id.UserID]map[id.DeviceID]any{alice[0].UserID: target})
	}
	if got := tdNumbers(toDevice(st.sync(t, alice[0], "", 0))); !slices.Equal(got, []int{3, 4, 5, 6, 7}) {
		t.Fatalf("a1 got %v, want the newest five", got)
	}
	if got := tdNumbers(toDevice(st.sync(t, alice[1], "", 0))); !slices.Equal(got, []int{5, 6, 7}) {
		t.Fatalf("a2 got %v", got)
	}
	metrics := string(st.do(t, "GET", "/metrics", "", nil).body)
	if !strings.Contains(metrics, "\nweft_to_device_dropped_total 3\n") {
		t.Fatalf("metrics do not count 3 dropped messages:\n%s", grepLines(metrics, "to_device"))
	}
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestToDeviceWakesLongPoll: a message wakes the target's long-poll; an
// idle long-poll is not answered early because of key counts.
func TestToDeviceWakesLongPoll(t *testing.T) {
	st := newTDStack(t, tdOpts{})
	f := func(id.UserID, id.DeviceID) (map[id.KeyAlgorithm]int, []id.KeyAlgorithm) {
		return map[id.KeyAlgorithm]int{id.KeyAlgorithmSignedCurve25519: 7}, []id.KeyAlgorithm{id.KeyAlgorithmSignedCurve25519}
	}
	st.counts.Store(&f)
	alice := st.user(t, "alice", 1)[0]
	bob := st.user(t, "bob", 1)[0]
	first := st.sync(t, alice, "", 0)
	if _, ok := first["device_lists"]; ok {
		t.Fatalf("an initial sync has device_lists: %v", first["device_lists"])
	}
	since := first["next_batch"].(string)

	start := time.Now()
	idle := st.sync(t, alice, since, 1000)
	if el := time.Since(start); el < 900*time.Millisecond {
		t.Fatalf("an idle long-poll answered after %v: key counts are not news", el)
	}
	for _, r := range []map[string]any{first, idle} {
		if fmt.Sprint(r["device_one_time_keys_count"]) != "map[signed_curve25519:7]" ||
			fmt.Sprint(r["device_unused_fallback_key_types"]) != "[signed_curve25519]" {
			t.Fatalf("key counts %v %v", r["device_one_time_keys_count"], r["device_unused_fallback_key_types"])
		}
	}
	if idle["next_batch"] != since {
		t.Fatalf("an idle long-poll moved the token from %s to %s", since, idle["next_batch"])
	}

	done := make(chan map[string]any, 1)
	start = time.Now()
	go func() { done <- st.sync(t, alice, since, 20_000) }()
	time.Sleep(200 * time.Millisecond) // let it park
	st.send(t, bob, "m.test", "wake", map[id.UserID]map[id.DeviceID]any{alice.UserID: {alice.DeviceID: map[string]any{"n": 1}}})
	select {
	case r := <-done:
		if n := tdNumbers(toDevice(r)); !slices.Equal(n, []int{1}) {
			t.Fatalf("woken long-poll got %v", n)
		}
		if _, ok := r["device_one_time_keys_count"]; !ok {
			t.Fatal("a woken long-poll's answer has no key counts")
		}
	case <-time.After(15 * time.Second):
		t.Fatalf("the long-poll was not woken by a to-device message (waited %v)", time.Since(start))
	}

	// Without counts from the hook: signed_curve25519 is 0, and the
	// fallback key types an empty list, never null.
	none := func(id.UserID, id.DeviceID) (map[id.KeyAlgorithm]int, []id.KeyAlgorithm) { return nil, nil }
	st.counts.Store(&none)
	raw := st.do(t, "GET", "/_matrix/client/v3/sync", alice.AccessToken, nil)
	if !bytes.Contains(raw.body, []byte(`"device_unused_fallback_key_types":[]`)) ||
		!bytes.Contains(raw.body, []byte(`"device_one_time_keys_count":{"signed_curve25519":0}`)) {
		t.Fatalf("counts without keys: %s", grepLines(strings.ReplaceAll(string(raw.body), ",", ",\n"), "device"))
	}
}

func createTDRoom(t testing.TB, cli *mautrix.Client, encrypted bool) id.RoomID {
	t.Helper()
	req := &mautrix.ReqCreateRoom{Preset: "public_chat"}
	if encrypted {
		req.InitialState = []*event.Event{{Type: event.StateEncryption, StateKey: tdPtr(""),
			Content: event.Content{Parsed: &event.EncryptionEventContent{Algorithm: id.AlgorithmMegolmV1}}}}
	}
	resp, err := cli.CreateRoom(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	return resp.RoomID
}

func tdPtr[T any](v T) *T { return &v }

// tdDig walks nested JSON objects.
func tdDig(v any, keys ...string) any {
	for _, k := range keys {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = m[k]
	}
	return v
}

func joinTD(t testing.TB, cli *mautrix.Client, roomID id.RoomID) {
	t.Helper()
	if _, err := cli.JoinRoomByID(context.Background(), roomID); err != nil {
		t.Fatal(err)
	}
}

func leaveTD(t testing.TB, cli *mautrix.Client, roomID id.RoomID) {
	t.Helper()
	if _, err := cli.LeaveRoom(context.Background(), roomID); err != nil {
		t.Fatal(err)
	}
}

// uploadDeviceKeys uploads new signed identity keys for cli's device:
// a change of its user's device list.
func (st *tdStack) uploadDeviceKeys(t testing.TB, cli *mautrix.Client) {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	curve := make([]byte, 32)
	_, _ = rand.Read(curve)
	b64 := base64.RawStdEncoding.EncodeToString
	dev := string(cli.DeviceID)
	obj := map[string]any{
		"user_id": cli.UserID, "device_id": cli.DeviceID,
		"algorithms": []string{"m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"},
		"keys":       map[string]string{"curve25519:" + dev: b64(curve), "ed25519:" + dev: b64(pub)},
	}
	raw, err := json.Marshal(obj)
	if err != nil {
		t.Fatal(err)
	}
	sig := ed25519.Sign(priv, canonicaljson.CanonicalJSONAssumeValid(raw))
	obj["signatures"] = map[string]any{string(cli.UserID): map[string]string{"ed25519:" + dev: b64(sig)}}
	st.do(t, "POST", "/_matrix/client/v3/keys/upload", cli.AccessToken, map[string]any{"device_keys": obj}).ok(t)
}

// deviceLists is a sync response's device_lists as sorted lists.
func deviceLists(body map[string]any) (changed, left []string) {
	dl, _ := body["device_lists"].(map[string]any)
	for _, k := range []string{"changed", "left"} {
		list, _ := dl[k].([]any)
		var out []string
		for _, u := range list {
			out = append(out, u.(string))
		}
		slices.Sort(out)
		if k == "changed" {
			changed = out
		} else {
			left = out
		}
	}
	return changed, left
}

// deviceListStep syncs alice from since and checks device_lists, and
// that GET /keys/changes over the same window agrees.
func (st *tdStack) deviceListStep(t *testing.T, what string, cli *mautrix.Client, since string, changed, left []id.UserID) string {
	t.Helper()
	r := st.sync(t, cli, since, 0)
	gotC, gotL := deviceLists(r)
	wantC, wantL := usersStrings(changed), usersStrings(left)
	if !slices.Equal(gotC, wantC) || !slices.Equal(gotL, wantL) {
		t.Errorf("%s: device_lists changed %v left %v, want changed %v left %v", what, gotC, gotL, wantC, wantL)
	}
	if len(wantC) == 0 && len(wantL) == 0 {
		if _, ok := r["device_lists"]; ok {
			t.Errorf("%s: device_lists present with nothing in it: %v", what, r["device_lists"])
		}
	}
	next := r["next_batch"].(string)
	kc := st.do(t, "GET", "/_matrix/client/v3/keys/changes?"+url.Values{"from": {since}, "to": {next}}.Encode(), cli.AccessToken, nil).ok(t)
	kcC, kcL := deviceLists(map[string]any{"device_lists": kc})
	if !slices.Equal(kcC, wantC) || !slices.Equal(kcL, wantL) {
		t.Errorf("%s: /keys/changes changed %v left %v, want changed %v left %v (raw %v)", what, kcC, kcL, wantC, wantL, kc)
	}
	if _, ok := kc["changed"].([]any); !ok {
		t.Errorf("%s: /keys/changes without a changed list: %v", what, kc)
	}
	return next
}

func usersStrings(us []id.UserID) []string {
	var out []string
	for _, u := range us {
		out = append(out, string(u))
	}
	slices.Sort(out)
	return out
}

// TestDeviceLists: device_lists.changed and left through joins, leaves,
// key uploads, a room becoming encrypted and device deletion, only for
// users sharing an encrypted room; /keys/changes agrees.
func TestDeviceLists(t *testing.T) {
	st := newTDStack(t, tdOpts{})
	ctx := context.Background()
	alice := st.user(t, "alice", 1)[0]
	bob := st.user(t, "bob", 1)[0]
	carol := st.user(t, "carol", 1)[0]
	enc := createTDRoom(t, alice, true)
	plain := createTDRoom(t, alice, false)
	tok := st.sync(t, alice, "", 0)["next_batch"].(string)
	bobTok := st.sync(t, bob, "", 0)["next_batch"].(string)

	joinTD(t, bob, enc)
	joinTD(t, carol, plain)
	tok = st.deviceListStep(t, "bob joins the encrypted room, carol the plain one", alice, tok, []id.UserID{bob.UserID}, nil)
	bobTok = st.deviceListStep(t, "bob joined an encrypted room", bob, bobTok, []id.UserID{alice.UserID}, nil)

	st.uploadDeviceKeys(t, bob)
	st.uploadDeviceKeys(t, carol)
	st.uploadDeviceKeys(t, alice)
	tok = st.deviceListStep(t, "keys uploaded", alice, tok, []id.UserID{alice.UserID, bob.UserID}, nil)

	bob2 := tdClient(t, st.srv, "bob", false)
	st.uploadDeviceKeys(t, bob2)
	tok = st.deviceListStep(t, "bob's new device", alice, tok, []id.UserID{bob.UserID}, nil)
	if err := bob.DeleteDevice(ctx, bob2.DeviceID, &mautrix.ReqDeleteDevice[any]{Auth: map[string]any{
		"type": "m.login.password", "identifier": map[string]any{"type": "m.id.user", "user": "bob"}, "password": "password bob",
	}}); err != nil {
		t.Fatal(err)
	}
	tok = st.deviceListStep(t, "bob deleted a device", alice, tok, []id.UserID{bob.UserID}, nil)

	// A profile change is a join after a join: not a new member.
	if _, err := bob.SendStateEvent(ctx, enc, event.StateMember, string(bob.UserID), map[string]any{"membership": "join", "displayname": "Bob"}); err != nil {
		t.Fatal(err)
	}
	tok = st.deviceListStep(t, "bob's profile change", alice, tok, nil, nil)

	// The plain room becomes encrypted: its members are new to alice.
	if _, err := alice.SendStateEvent(ctx, plain, event.StateEncryption, "", map[string]any{"algorithm": "m.megolm.v1.aes-sha2"}); err != nil {
		t.Fatal(err)
	}
	tok = st.deviceListStep(t, "the plain room became encrypted", alice, tok, []id.UserID{carol.UserID}, nil)

	leaveTD(t, carol, plain)
	tok = st.deviceListStep(t, "carol left her only shared encrypted room", alice, tok, nil, []id.UserID{carol.UserID})

	// Bob moves from one shared encrypted room to another: joined one,
	// still shares one, so not left.
	joinTD(t, bob, plain)
	leaveTD(t, bob, enc)
	tok = st.deviceListStep(t, "bob moved rooms", alice, tok, []id.UserID{bob.UserID}, nil)

	// Alice leaves the last room she shares with bob.
	leaveTD(t, alice, plain)
	tok = st.deviceListStep(t, "alice left", alice, tok, nil, []id.UserID{bob.UserID})
	st.uploadDeviceKeys(t, tdClient(t, st.srv, "bob", false))
	st.deviceListStep(t, "keys of a user sharing nothing", alice, tok, nil, nil)
}

// TestDeviceListsLongPoll: a key upload wakes the long-polls of those
// sharing an encrypted room with the uploader; one sharing only an
// unencrypted room wakes, finds nothing, and keeps waiting.
func TestDeviceListsLongPoll(t *testing.T) {
	st := newTDStack(t, tdOpts{})
	alice := st.user(t, "alice", 1)[0]
	bob := st.user(t, "bob", 1)[0]
	dave := st.user(t, "dave", 1)[0]
	enc := createTDRoom(t, alice, true)
	joinTD(t, bob, enc)
	plain := createTDRoom(t, dave, false)
	joinTD(t, bob, plain)
	aTok := st.sync(t, alice, "", 0)["next_batch"].(string)
	dTok := st.sync(t, dave, "", 0)["next_batch"].(string)

	aDone := make(chan map[string]any, 1)
	dDone := make(chan map[string]any, 1)
	dStart := time.Now()
	go func() { aDone <- st.sync(t, alice, aTok, 20_000) }()
	go func() { dDone <- st.sync(t, dave, dTok, 1500) }()
	time.Sleep(200 * time.Millisecond)
	st.uploadDeviceKeys(t, bob)
	select {
	case r := <-aDone:
		if c, _ := deviceLists(r); !slices.Equal(c, []string{string(bob.UserID)}) {
			t.Fatalf("alice's long-poll answered with changed %v", c)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("alice's long-poll was not woken by bob's key upload")
	}
	r := <-dDone
	if el := time.Since(dStart); el < 1400*time.Millisecond {
		t.Fatalf("dave's long-poll answered after %v with %v: bob shares no encrypted room with him", el, r)
	}
	if _, ok := r["device_lists"]; ok {
		t.Fatalf("dave got device_lists %v", r["device_lists"])
	}
}

func TestKeyChangesParams(t *testing.T) {
	st := newTDStack(t, tdOpts{})
	alice := st.user(t, "alice", 1)[0]
	tok := st.sync(t, alice, "", 0)["next_batch"].(string)
	st.do(t, "GET", "/_matrix/client/v3/keys/changes", alice.AccessToken, nil).fails(t, 400, "M_MISSING_PARAM")
	st.do(t, "GET", "/_matrix/client/v3/keys/changes?from=garbage", alice.AccessToken, nil).fails(t, 400, "M_INVALID_PARAM")
	st.do(t, "GET", "/_matrix/client/v3/keys/changes?from=s99999999_0", alice.AccessToken, nil).fails(t, 400, "M_INVALID_PARAM")
	st.do(t, "GET", "/_matrix/client/v3/keys/changes?from="+tok+"&to=nonsense", alice.AccessToken, nil).fails(t, 400, "M_INVALID_PARAM")
	st.do(t, "GET", "/_matrix/client/v3/keys/changes?from="+tok, "", nil).fails(t, 401, "M_MISSING_TOKEN")
	st.uploadDeviceKeys(t, alice)
	// to is optional (the current position) and may be ahead of it.
	for _, q := range []string{"from=" + tok, "from=" + tok + "&to=s99999999_0"} {
		kc := st.do(t, "GET", "/_matrix/client/r0/keys/changes?"+q, alice.AccessToken, nil).ok(t)
		if fmt.Sprint(kc) != fmt.Sprintf("map[changed:[%s] left:[]]", alice.UserID) {
			t.Fatalf("%s: %v", q, kc)
		}
	}
	// A window ending before it starts is empty.
	kc := st.do(t, "GET", "/_matrix/client/v3/keys/changes?from="+tok+"&to=s0_0", alice.AccessToken, nil).ok(t)
	if fmt.Sprint(kc) != "map[changed:[] left:[]]" {
		t.Fatalf("empty window: %v", kc)
	}
}

// BenchmarkSendToDevice is PUT /sendToDevice throughput through the
// router on real Postgres: senders in parallel (2×GOMAXPROCS), each
// request one message to one of 8 devices, or to "*" of a user with 8
// devices (one stored row per device).
func BenchmarkSendToDevice(b *testing.B) {
	for _, c := range []struct {
		name string
		star bool
	}{{"one-device", false}, {"star-8-devices", true}} {
		b.Run(c.name, func(b *testing.B) {
			st := newTDStack(b, tdOpts{})
			targets := st.user(b, "alice", 8)
			senders := st.user(b, "bob", 4)
			var seq atomic.Int64
			b.SetParallelism(2)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				cli := senders[int(seq.Add(1))%len(senders)]
				hc := &http.Client{}
				for pb.Next() {
					i := seq.Add(1)
					dev := targets[i%int64(len(targets))].DeviceID
					if c.star {
						dev = "*"
					}
					body := fmt.Sprintf(`{"messages":{%q:{%q:{"n":%d,"ciphertext":"%s"}}}}`, targets[0].UserID, dev, i, strings.Repeat("x", 400))
					req, _ := http.NewRequest("PUT", fmt.Sprintf("%s/_matrix/client/v3/sendToDevice/m.room.encrypted/b%d", st.srv.URL, i), strings.NewReader(body))
					req.Header.Set("Authorization", "Bearer "+cli.AccessToken)
					resp, err := hc.Do(req)
					if err != nil {
						b.Error(err)
						return
					}
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode != http.StatusOK {
						b.Errorf("status %d", resp.StatusCode)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "requests/s")
		})
	}
}

// BenchmarkDeviceListSync100Rooms is the cost of device-list tracking for
// a user in 100 encrypted rooms (each shared with 3 of 20 other users):
// an incremental /sync with nothing new, and one whose window holds one
// member's device-list change (recorded as a key upload records it,
// outside the timer).
func BenchmarkDeviceListSync100Rooms(b *testing.B) {
	st := newTDStack(b, tdOpts{})
	ctx := context.Background()
	alice := st.user(b, "alice", 1)[0]
	others := make([]*mautrix.Client, 20)
	for i := range others {
		others[i] = st.user(b, fmt.Sprint("u", i), 1)[0]
	}
	for r := range 100 {
		rid := createTDRoom(b, alice, true)
		for k := range 3 {
			joinTD(b, others[(r+k*7)%len(others)], rid)
		}
	}
	tok := st.sync(b, alice, "", 0)["next_batch"].(string)
	st.sync(b, alice, tok, 0)
	acc := st.db.Accounts()

	b.Run("no-change", func(b *testing.B) {
		for b.Loop() {
			st.sync(b, alice, tok, 0)
		}
	})
	b.Run("one-change", func(b *testing.B) {
		i := 0
		for b.Loop() {
			b.StopTimer()
			u := others[i%len(others)].UserID
			i++
			if err := acc.RecordDeviceListChange(ctx, u); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
			r := st.sync(b, alice, tok, 0)
			if c, _ := deviceLists(r); !slices.Equal(c, []string{string(u)}) {
				b.Fatalf("changed %v, want [%s]", c, u)
			}
			tok = r["next_batch"].(string)
		}
	})
}

// TestToDeviceConcurrentDelivery: senders in parallel, receiving devices
// syncing meanwhile and sometimes losing a response; every device gets
// every message addressed to it exactly once, each sender's in the order
// sent, and a lost response's messages come again, first.
func TestToDeviceConcurrentDelivery(t *testing.T) {
	st := newTDStack(t, tdOpts{})
	alice := st.user(t, "alice", 3)
	bob := st.user(t, "bob", 2)
	const senders, each = 4, 60
	senderClis := make([]*mautrix.Client, senders)
	for i := range senderClis {
		senderClis[i] = st.user(t, fmt.Sprint("sender", i), 1)[0]
	}
	receivers := append(slices.Clone(alice), bob...)
	tokens := make([]string, len(receivers))
	for i, r := range receivers {
		tokens[i] = st.sync(t, r, "", 0)["next_batch"].(string)
	}

	// want[device] is, per sender, the numbers sent to it in order.
	type key struct {
		dev    id.DeviceID
		sender int
	}
	var wantMu sync.Mutex
	want := map[key][]int{}
	var sendWG sync.WaitGroup
	errs := make(chan error, 100)
	for s, cli := range senderClis {
		sendWG.Go(func() {
			for i := range each {
				msgs := map[id.UserID]map[id.DeviceID]any{}
				var to []*mautrix.Client
				switch i % 3 {
				case 0:
					msgs[alice[0].UserID] = map[id.DeviceID]any{"*": map[string]any{"s": s, "n": i}}
					to = alice
				case 1:
					d := bob[i%2]
					msgs[d.UserID] = map[id.DeviceID]any{d.DeviceID: map[string]any{"s": s, "n": i}}
					to = []*mautrix.Client{d}
				case 2:
					msgs[alice[0].UserID] = map[id.DeviceID]any{"*": map[string]any{"s": s, "n": i}}
					msgs[bob[0].UserID] = map[id.DeviceID]any{"*": map[string]any{"s": s, "n": i}}
					to = receivers
				}
				body, _ := json.Marshal(map[string]any{"messages": msgs})
				req, _ := http.NewRequest("PUT", fmt.Sprintf("%s/_matrix/client/v3/sendToDevice/m.test/c%d", st.srv.URL, i), bytes.NewReader(body))
				req.Header.Set("Authorization", "Bearer "+cli.AccessToken)
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					errs <- err
					return
				}
				resp.Body.Close()
				if resp.StatusCode != 200 {
					errs <- fmt.Errorf("send: status %d", resp.StatusCode)
					return
				}
				wantMu.Lock()
				for _, d := range to {
					want[key{d.DeviceID, s}] = append(want[key{d.DeviceID, s}], i)
				}
				wantMu.Unlock()
			}
		})
	}
	var sent atomic.Bool
	go func() { sendWG.Wait(); sent.Store(true) }()

	got := make([]map[int][]int, len(receivers))
	var recvWG sync.WaitGroup
	for ri, cli := range receivers {
		got[ri] = map[int][]int{}
		recvWG.Go(func() {
			since := tokens[ri]
			deadline := time.Now().Add(60 * time.Second)
			total := func() int {
				n := 0
				for _, l := range got[ri] {
					n += len(l)
				}
				return n
			}
			for round := 0; time.Now().Before(deadline); round++ {
				done := sent.Load()
				r, err := tdTrySync(st, cli, since, 300)
				if err != nil {
					errs <- err
					return
				}
				evs := toDevice(r)
				if round%5 == 2 && len(evs) > 0 {
					// The response is lost: the same token again must
					// start with the same messages.
					again, err := tdTrySync(st, cli, since, 0)
					if err != nil {
						errs <- err
						return
					}
					ev2 := toDevice(again)
					if len(ev2) < len(evs) || fmt.Sprint(ev2[:len(evs)]) != fmt.Sprint(evs) {
						errs <- fmt.Errorf("%s: after a lost response got %d messages, not starting with the %d lost", cli.DeviceID, len(ev2), len(evs))
						return
					}
					r, evs = again, ev2
				}
				for _, e := range evs {
					c := e["content"].(map[string]any)
					s, n := int(c["s"].(float64)), int(c["n"].(float64))
					got[ri][s] = append(got[ri][s], n)
				}
				since = r["next_batch"].(string)
				if done {
					wantMu.Lock()
					w := 0
					for k, l := range want {
						if k.dev == cli.DeviceID {
							w += len(l)
						}
					}
					wantMu.Unlock()
					if total() >= w {
						return
					}
				}
			}
			errs <- fmt.Errorf("%s: gave up with %d messages", cli.DeviceID, total())
		})
	}
	recvWG.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	for ri, cli := range receivers {
		for s := range senders {
			w := want[key{cli.DeviceID, s}]
			if g := got[ri][s]; !slices.Equal(g, w) {
				t.Errorf("%s from sender %d: got %v, want %v", cli.DeviceID, s, g, w)
			}
		}
	}
}

// tdTrySync is sync for goroutines other than the test's.
func tdTrySync(st *tdStack, cli *mautrix.Client, since string, timeout int) (map[string]any, error) {
	req, _ := http.NewRequest("GET", fmt.Sprintf("%s/_matrix/client/v3/sync?since=%s&timeout=%d", st.srv.URL, url.QueryEscape(since), timeout), nil)
	req.Header.Set("Authorization", "Bearer "+cli.AccessToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var m map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&m); err != nil || resp.StatusCode != 200 {
		return nil, fmt.Errorf("sync: status %d, %v", resp.StatusCode, err)
	}
	return m, nil
}

// TestToDeviceAndDeviceListsAfterRestart: a token from before the server
// started is read against the database: a message left waiting answers a
// long-poll at once, and device_lists and /keys/changes find the key
// changes the new notifier never heard of.
func TestToDeviceAndDeviceListsAfterRestart(t *testing.T) {
	st := newTDStack(t, tdOpts{})
	alice := st.user(t, "alice", 1)[0]
	bob := st.user(t, "bob", 1)[0]
	carol := st.user(t, "carol", 1)[0]
	enc := createTDRoom(t, alice, true)
	joinTD(t, bob, enc)
	tok := st.sync(t, alice, "", 0)["next_batch"].(string)
	st.uploadDeviceKeys(t, bob)
	st.uploadDeviceKeys(t, carol)
	st.send(t, bob, "m.test", "before", map[id.UserID]map[id.DeviceID]any{alice.UserID: {alice.DeviceID: map[string]any{"n": 1}}})

	st2 := newTDStack(t, tdOpts{restartOf: st})
	start := time.Now()
	r := st2.sync(t, alice, tok, 10_000)
	if el := time.Since(start); el > 5*time.Second {
		t.Fatalf("a long-poll with a token from before the restart waited %v for what was already there", el)
	}
	if n := tdNumbers(toDevice(r)); !slices.Equal(n, []int{1}) {
		t.Fatalf("after a restart alice got %v, want [1]", n)
	}
	if c, l := deviceLists(r); !slices.Equal(c, []string{string(bob.UserID)}) || len(l) != 0 {
		t.Fatalf("after a restart: changed %v left %v, want [bob] []", c, l)
	}
	st2.deviceListStep(t, "the same window after the restart", alice, tok, []id.UserID{bob.UserID}, nil)
}
