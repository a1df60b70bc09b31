package push

import (
	"context"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"
)

// memPusherStore is an in-memory PusherStore.
type memPusherStore struct {
	mu      sync.Mutex
	pushers []Pusher
	// exclusive records the flag of each SetPusher.
	exclusive []bool
}

func (m *memPusherStore) Pushers(_ context.Context, user id.UserID) ([]Pusher, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []Pusher
	for _, p := range m.pushers {
		if p.UserID == user {
			out = append(out, p)
		}
	}
	return out, nil
}

func (m *memPusherStore) SetPusher(_ context.Context, p Pusher, exclusive bool) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.exclusive = append(m.exclusive, exclusive)
	for i, q := range m.pushers {
		if q.UserID == p.UserID && q.AppID == p.AppID && q.PushKey == p.PushKey {
			m.pushers[i] = p
			return nil
		}
	}
	m.pushers = append(m.pushers, p)
	return nil
}

func (m *memPusherStore) DeletePusher(_ context.Context, user id.UserID, appID, pushKey string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	for i, q := range m.pushers {
		if q.UserID == user && q.AppID == appID && q.PushKey == pushKey {
			m.pushers = append(m.pushers[:i], m.pushers[i+1:]...)
			break
		}
	}
	return nil
}

const pusherTestUser = id.UserID("@a:x")

func pusherRequest(t *testing.T, body string) SetPusherRequest {
	t.Helper()
	var req SetPusherRequest
	if err := json.Unmarshal([]byte(body), &req); err != nil {
		t.Fatalf("%s: %v", body, err)
	}
	return req
}

const validPusher = `{"kind":"http","app_id":"com.example.app","pushkey":"PK","app_display_name":"App",
	"device_display_name":"Phone","lang":"en","profile_tag":"tag",
	"data":{"url":"https://gw.example/_matrix/push/v1/notify","format":"event_id_only","custom":{"n":1}}}`

func TestSetPusherStoresWhatWasGiven(t *testing.T) {
	store := &memPusherStore{}
	ps := NewPushers(store)
	ps.now = func() time.Time { return time.UnixMilli(1234567) }
	if err := ps.Set(context.Background(), pusherTestUser, "DEV", false, pusherRequest(t, validPusher)); err != nil {
		t.Fatal(err)
	}
	want := Pusher{
		UserID: pusherTestUser, DeviceID: "DEV", AppID: "com.example.app", PushKey: "PK", Kind: "http",
		AppDisplayName: "App", DeviceDisplayName: "Phone", ProfileTag: "tag", Lang: "en",
		Data:      json.RawMessage(`{"url":"https://gw.example/_matrix/push/v1/notify","format":"event_id_only","custom":{"n":1}}`),
		PushKeyTS: 1234567,
	}
	got := store.pushers[0]
	if string(got.Data) != string(want.Data) {
		t.Fatalf("data %s", got.Data)
	}
	got.Data, want.Data = nil, nil
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("stored\n%+v\nwant\n%+v", got, want)
	}
	// append defaults to false: the set is exclusive.
	if !store.exclusive[0] {
		t.Fatal("append omitted did not remove other users' pushers")
	}
	req := pusherRequest(t, strings.Replace(validPusher, `"kind"`, `"append":true,"kind"`, 1))
	if err := ps.Set(context.Background(), pusherTestUser, "DEV", false, req); err != nil || store.exclusive[1] {
		t.Fatalf("append true: %v, exclusive %v", err, store.exclusive[1])
	}

	list, err := ps.List(context.Background(), pusherTestUser, false)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := json.Marshal(mautrix.RespPushers{Pushers: list})
	wantBody := `{"pushers":[{"app_display_name":"App","app_id":"com.example.app","data":{"custom":{"n":1},"format":"event_id_only","url":"https://gw.example/_matrix/push/v1/notify"},"device_display_name":"Phone","kind":"http","lang":"en","profile_tag":"tag","pushkey":"PK"}]}`
	if string(body) != wantBody {
		t.Fatalf("list\n got %s\nwant %s", body, wantBody)
	}

	// kind null deletes, whatever else is missing.
	if err := ps.Set(context.Background(), pusherTestUser, "DEV", false, pusherRequest(t, `{"kind":null,"app_id":"com.example.app","pushkey":"PK"}`)); err != nil {
		t.Fatal(err)
	}
	if len(store.pushers) != 0 {
		t.Fatalf("kind null left %+v", store.pushers)
	}
}

func TestSetPusherRefusals(t *testing.T) {
	long := strings.Repeat("a", 65)
	cases := []struct {
		name, body, errcode, msg string
	}{
		{"no kind", `{"app_id":"a","pushkey":"k"}`, "M_MISSING_PARAM", "kind"},
		{"no app_id or pushkey", `{"kind":"http"}`, "M_MISSING_PARAM", "app_id, pushkey"},
		{"kind not a string", `{"kind":5,"app_id":"a","pushkey":"k"}`, "M_BAD_JSON", "kind"},
		{"missing for http", `{"kind":"http","app_id":"a","pushkey":"k","app_display_name":"x","device_display_name":"y"}`, "M_MISSING_PARAM", "lang, data"},
		{"data null", strings.Replace(validPusher, `"data":{`, `"data":null,"x":{`, 1), "M_MISSING_PARAM", "data"},
		{"email", strings.Replace(validPusher, `"http"`, `"email"`, 1), "M_INVALID_PARAM", "email"},
		{"unknown kind", strings.Replace(validPusher, `"http"`, `"sms"`, 1), "M_INVALID_PARAM", "sms"},
		{"long app_id", strings.Replace(validPusher, `"com.example.app"`, `"`+long+`"`, 1), "M_INVALID_PARAM", "64"},
		{"empty app_id", strings.Replace(validPusher, `"com.example.app"`, `""`, 1), "M_INVALID_PARAM", "app_id"},
		{"long pushkey", strings.Replace(validPusher, `"PK"`, `"`+strings.Repeat("é", 257)+`"`, 1), "M_INVALID_PARAM", "512"},
		{"empty pushkey", strings.Replace(validPusher, `"PK"`, `""`, 1), "M_INVALID_PARAM", "pushkey"},
		{"data not an object", strings.Replace(validPusher, `"data":{`, `"data":["x"],"x":{`, 1), "M_BAD_JSON", "data"},
		{"no url", strings.Replace(validPusher, `"url":`, `"uri":`, 1), "M_MISSING_PARAM", "data.url"},
		{"url not a string", strings.Replace(validPusher, `"url":"https://gw.example/_matrix/push/v1/notify"`, `"url":7`, 1), "M_INVALID_PARAM", "data.url"},
		{"relative url", strings.Replace(validPusher, `https://gw.example/_matrix/push/v1/notify`, `/_matrix/push/v1/notify`, 1), "M_INVALID_PARAM", "absolute"},
		{"ftp url", strings.Replace(validPusher, `https://`, `ftp://`, 1), "M_INVALID_PARAM", "absolute"},
		{"wrong path", strings.Replace(validPusher, `/_matrix/push/v1/notify`, `/notify`, 1), "M_INVALID_PARAM", "/_matrix/push/v1/notify"},
		{"trailing slash", strings.Replace(validPusher, `/_matrix/push/v1/notify`, `/_matrix/push/v1/notify/`, 1), "M_INVALID_PARAM", "/_matrix/push/v1/notify"},
		{"credentials", strings.Replace(validPusher, `https://gw`, `https://u:p@gw`, 1), "M_INVALID_PARAM", "credentials"},
		{"unknown format", strings.Replace(validPusher, `"event_id_only"`, `"full"`, 1), "M_INVALID_PARAM", "format"},
		{"huge data", strings.Replace(validPusher, `"custom":{"n":1}`, `"custom":"`+strings.Repeat("x", 9000)+`"`, 1), "M_INVALID_PARAM", "data"},
		{"long lang", strings.Replace(validPusher, `"lang":"en"`, `"lang":"`+strings.Repeat("x", 2000)+`"`, 1), "M_INVALID_PARAM", "lang"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			store := &memPusherStore{}
			err := NewPushers(store).Set(context.Background(), pusherTestUser, "DEV", false, pusherRequest(t, c.body))
			var re mautrix.RespError
			if !errors.As(err, &re) || re.ErrCode != c.errcode || !strings.Contains(re.Err, c.msg) {
				t.Fatalf("got %v, want %s mentioning %q", err, c.errcode, c.msg)
			}
			if re.StatusCode != 400 {
				t.Fatalf("status %d", re.StatusCode)
			}
			if len(store.pushers) != 0 {
				t.Fatal("a refused pusher was stored")
			}
		})
	}
}

func TestSetPusherLimitsAreInclusive(t *testing.T) {
	// 64 characters (not bytes) of app_id and 512 bytes of pushkey pass.
	body := strings.Replace(validPusher, `"com.example.app"`, `"`+strings.Repeat("é", 64)+`"`, 1)
	body = strings.Replace(body, `"PK"`, `"`+strings.Repeat("k", 512)+`"`, 1)
	body = strings.Replace(body, `https://gw.example`, `http://gw.example:8080`, 1)
	if err := NewPushers(&memPusherStore{}).Set(context.Background(), pusherTestUser, "DEV", false, pusherRequest(t, body)); err != nil {
		t.Fatal(err)
	}
}

func TestPushersRefuseGuests(t *testing.T) {
	ps := NewPushers(&memPusherStore{})
	var re mautrix.RespError
	if err := ps.Set(context.Background(), pusherTestUser, "DEV", true, pusherRequest(t, validPusher)); !errors.As(err, &re) || re.ErrCode != "M_GUEST_ACCESS_FORBIDDEN" {
		t.Fatalf("guest set: %v", err)
	}
	if _, err := ps.List(context.Background(), pusherTestUser, true); !errors.As(err, &re) || re.ErrCode != "M_GUEST_ACCESS_FORBIDDEN" {
		t.Fatalf("guest list: %v", err)
	}
}
