package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// End-to-end tests of GET /sync beyond the basics: every filter field
// (inline and by filter ID), tokens, timeouts, full_state, the response
// shape against the spec, and two devices seeing one timeline. Lazy
// loading, gaps and the membership sections are in sync_rooms_test.go.

// --- helpers ------------------------------------------------------------------

// syncWith runs one /sync with mautrix: since "" for an initial sync, filter
// inline JSON or a filter ID ("" for none), timeout in milliseconds. Every
// event's content is parsed so that the As* accessors work.
func syncWith(t *testing.T, cli *mautrix.Client, since, filter string, timeout int) *mautrix.RespSync {
	t.Helper()
	resp, err := cli.FullSyncRequest(context.Background(), mautrix.ReqSync{Since: since, FilterID: filter, Timeout: timeout})
	if err != nil {
		t.Fatalf("%s: /sync since=%q filter=%q: %v", cli.UserID, since, filter, err)
	}
	parseSync(resp)
	return resp
}

// parseSync parses the content of every event in resp (unknown types keep
// only Content.Raw).
func parseSync(resp *mautrix.RespSync) {
	parse := func(evs []*event.Event) {
		for _, e := range evs {
			_ = e.Content.ParseRaw(e.Type)
		}
	}
	parse(resp.AccountData.Events)
	parse(resp.Presence.Events)
	for _, r := range resp.Rooms.Join {
		parse(r.State.Events)
		parse(r.Timeline.Events)
		parse(r.Ephemeral.Events)
		parse(r.AccountData.Events)
	}
	for _, r := range resp.Rooms.Leave {
		parse(r.State.Events)
		parse(r.Timeline.Events)
	}
	for _, r := range resp.Rooms.Invite {
		parse(r.State.Events)
	}
	for _, r := range resp.Rooms.Knock {
		parse(r.State.Events)
	}
}

// syncRaw runs one /sync with the query parameters q and returns the raw
// answer (for error answers, exact JSON and schema validation).
func syncRaw(t *testing.T, cli *mautrix.Client, q map[string]string) rawResponse {
	t.Helper()
	return doJSON(t, "GET", cli.BuildURLWithQuery(mautrix.ClientURLPath{"v3", "sync"}, q), cli.AccessToken, nil)
}

// syncUploadFilter stores filterJSON with POST /user/{userId}/filter, exactly as
// written (mautrix's Filter cannot say "types": []), and returns its ID.
func syncUploadFilter(t *testing.T, cli *mautrix.Client, filterJSON string) string {
	t.Helper()
	r := doJSON(t, "POST", cli.BuildClientURL("v3", "user", cli.UserID, "filter"), cli.AccessToken, filterJSON)
	r.wantOK(t)
	fid, _ := r.Body["filter_id"].(string)
	if fid == "" || strings.HasPrefix(fid, "{") {
		t.Fatalf("filter upload answered filter_id %q: %s", fid, r.Raw)
	}
	return fid
}

// syncFilterForms runs f once with the filter given inline and once by the ID
// of the same filter stored on the server.
func syncFilterForms(t *testing.T, cli *mautrix.Client, filterJSON string, f func(t *testing.T, filter string)) {
	t.Helper()
	t.Run("inline", func(t *testing.T) { f(t, filterJSON) })
	fid := syncUploadFilter(t, cli, filterJSON)
	t.Run("by_id", func(t *testing.T) { f(t, fid) })
}

// syncJSON marshals v (a filter written as Go maps).
func syncJSON(t *testing.T, v any) string {
	t.Helper()
	raw, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(raw)
}

// syncSendText sends a text message and returns its event ID.
func syncSendText(t *testing.T, cli *mautrix.Client, roomID id.RoomID, body string) id.EventID {
	t.Helper()
	resp, err := cli.SendText(context.Background(), roomID, body)
	if err != nil {
		t.Fatalf("%s sending %q: %v", cli.UserID, body, err)
	}
	return resp.EventID
}

// syncSendState sends a state event and returns its event ID.
func syncSendState(t *testing.T, cli *mautrix.Client, roomID id.RoomID, typ event.Type, stateKey string, content any) id.EventID {
	t.Helper()
	resp, err := cli.SendStateEvent(context.Background(), roomID, typ, stateKey, content)
	if err != nil {
		t.Fatalf("%s sending %s state: %v", cli.UserID, typ.Type, err)
	}
	return resp.EventID
}

// syncEventIDs are the IDs of evs, in order.
func syncEventIDs(evs []*event.Event) []id.EventID {
	out := make([]id.EventID, 0, len(evs))
	for _, e := range evs {
		out = append(out, e.ID)
	}
	return out
}

// syncEventTypes are the types of evs, in order.
func syncEventTypes(evs []*event.Event) []string {
	out := make([]string, 0, len(evs))
	for _, e := range evs {
		out = append(out, e.Type.Type)
	}
	return out
}

// syncKeep is the events of evs for which f holds, in order.
func syncKeep(evs []*event.Event, f func(*event.Event) bool) []*event.Event {
	var out []*event.Event
	for _, e := range evs {
		if f(e) {
			out = append(out, e)
		}
	}
	return out
}

// syncStateKeys are the "type|state_key" of evs, sorted.
func syncStateKeys(evs []*event.Event) []string {
	out := make([]string, 0, len(evs))
	for _, e := range evs {
		sk := "<none>"
		if e.StateKey != nil {
			sk = *e.StateKey
		}
		out = append(out, e.Type.Type+"|"+sk)
	}
	slices.Sort(out)
	return out
}

// syncMemberKeys are the state keys of the m.room.member events among evs,
// sorted.
func syncMemberKeys(evs []*event.Event) []id.UserID {
	var out []id.UserID
	for _, e := range evs {
		if e.Type == event.StateMember && e.StateKey != nil {
			out = append(out, id.UserID(*e.StateKey))
		}
	}
	slices.Sort(out)
	return out
}

// syncMembership is the membership of a member event.
func syncMembership(e *event.Event) event.Membership {
	if e.Content.Parsed == nil {
		_ = e.Content.ParseRaw(e.Type)
	}
	if m := e.Content.AsMember(); m != nil {
		return m.Membership
	}
	return ""
}

// syncAccountDataTypes are the types of account data events, sorted.
func syncAccountDataTypes(evs []*event.Event) []string {
	out := syncEventTypes(evs)
	slices.Sort(out)
	return out
}

// --- filters ------------------------------------------------------------------

// TestSyncFilters checks each sync filter field, inline and by filter ID,
// against an unfiltered sync of the same rooms: the filtered answer must be
// exactly the unfiltered one with the filter applied.
func TestSyncFilters(t *testing.T) {
	srv := startAccounts(t, nil)
	ctx := context.Background()
	alice := registerUser(t, srv, "alice", "correct horse battery")
	bob := registerUser(t, srv, "bob", "correct horse battery")

	roomA := createRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat", Name: "Room A", Topic: "first topic"})
	roomB := createRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "private_chat", Name: "Room B"})
	roomC := createRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "private_chat", Name: "Room C"})
	roomD := createRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "private_chat", Name: "Room D"})
	syncSendText(t, alice, roomD, "bye D")
	if _, err := alice.LeaveRoom(ctx, roomD); err != nil {
		t.Fatal(err)
	}

	joinRoom(t, bob, roomA)
	syncSendText(t, alice, roomA, "a1")
	syncSendText(t, bob, roomA, "b1")
	syncSendState(t, alice, roomA, event.StateTopic, "", map[string]any{"topic": "second topic"})
	if _, err := alice.SendMessageEvent(ctx, roomA, event.Type{Type: "org.example.thing", Class: event.MessageEventType}, map[string]any{"n": 1}); err != nil {
		t.Fatal(err)
	}
	imageID, err := bob.SendMessageEvent(ctx, roomA, event.EventMessage, map[string]any{
		"msgtype": "m.image", "body": "pic.png", "url": "mxc://localhost/abcdefghijkl",
	})
	if err != nil {
		t.Fatal(err)
	}
	syncSendText(t, alice, roomA, "a2")
	syncSendText(t, bob, roomA, "b2")

	for typ, v := range map[string]int{"org.example.g1": 1, "org.example.g2": 2} {
		if err := alice.SetAccountData(ctx, typ, map[string]any{"v": v}); err != nil {
			t.Fatal(err)
		}
	}
	for _, typ := range []string{"org.example.ra", "org.example.rb"} {
		if err := alice.SetRoomAccountData(ctx, roomA, typ, map[string]any{"room": true}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := bob.UserTyping(ctx, roomA, true, 60*time.Second); err != nil {
		t.Fatal(err)
	}

	// The unfiltered baseline: every event of room A fits the timeline.
	base := syncWith(t, alice, "", `{"room":{"timeline":{"limit":100}}}`, 0)
	baseA := base.Rooms.Join[roomA]
	if baseA == nil || baseA.Timeline.Limited {
		t.Fatalf("baseline: room A missing or limited: %+v", base.Rooms.Join)
	}
	allA := baseA.Timeline.Events
	if !slices.Contains(syncEventIDs(allA), imageID.EventID) || !slices.Contains(syncEventTypes(allA), "org.example.thing") {
		t.Fatalf("baseline timeline of room A lacks the test events: %v", syncEventTypes(allA))
	}
	joinedKeys := slices.Sorted(maps.Keys(base.Rooms.Join))
	wantIDs(t, "baseline joined rooms", joinedKeys, syncSorted(roomA, roomB, roomC)...)
	if _, ok := base.Rooms.Leave[roomD]; ok {
		t.Fatal("baseline: a left room is shown without include_leave")
	}

	// timelineCase expects room A's timeline to be the baseline's events
	// for which want holds, which must be some but not all of them.
	timelineCase := func(filter string, want func(*event.Event) bool) func(t *testing.T, f string) {
		expect := syncEventIDs(syncKeep(allA, want))
		if len(expect) == 0 || len(expect) == len(allA) {
			t.Fatalf("filter %s: the baseline gives a trivial expectation (%d of %d events)", filter, len(expect), len(allA))
		}
		return func(t *testing.T, f string) {
			resp := syncWith(t, alice, "", f, 0)
			jr := resp.Rooms.Join[roomA]
			if jr == nil {
				t.Fatal("room A missing")
			}
			wantIDs(t, "timeline", syncEventIDs(jr.Timeline.Events), expect...)
			if jr.Timeline.Limited {
				t.Fatal("timeline limited although every matching event fits")
			}
		}
	}
	isType := func(types ...string) func(*event.Event) bool {
		return func(e *event.Event) bool { return slices.Contains(types, e.Type.Type) }
	}

	cases := []struct {
		name   string
		filter string
		check  func(t *testing.T, f string)
	}{
		{
			name:   "room.rooms",
			filter: syncJSON(t, map[string]any{"room": map[string]any{"rooms": []id.RoomID{roomA, roomB}}}),
			check: func(t *testing.T, f string) {
				resp := syncWith(t, alice, "", f, 0)
				wantIDs(t, "joined rooms", slices.Sorted(maps.Keys(resp.Rooms.Join)), syncSorted(roomA, roomB)...)
			},
		},
		{
			name:   "room.not_rooms",
			filter: syncJSON(t, map[string]any{"room": map[string]any{"not_rooms": []id.RoomID{roomB}}}),
			check: func(t *testing.T, f string) {
				resp := syncWith(t, alice, "", f, 0)
				wantIDs(t, "joined rooms", slices.Sorted(maps.Keys(resp.Rooms.Join)), syncSorted(roomA, roomC)...)
			},
		},
		{
			name: "room.rooms and not_rooms",
			filter: syncJSON(t, map[string]any{"room": map[string]any{
				"rooms": []id.RoomID{roomA, roomB, roomD}, "not_rooms": []id.RoomID{roomB, roomD}, "include_leave": true}}),
			check: func(t *testing.T, f string) {
				resp := syncWith(t, alice, "", f, 0)
				wantIDs(t, "joined rooms", slices.Sorted(maps.Keys(resp.Rooms.Join)), roomA)
				if len(resp.Rooms.Leave) != 0 {
					t.Fatalf("a left room excluded by not_rooms is shown: %v", slices.Collect(maps.Keys(resp.Rooms.Leave)))
				}
			},
		},
		{
			name:   "timeline.limit",
			filter: `{"room":{"timeline":{"limit":2}}}`,
			check: func(t *testing.T, f string) {
				resp := syncWith(t, alice, "", f, 0)
				jr := resp.Rooms.Join[roomA]
				wantIDs(t, "timeline", syncEventIDs(jr.Timeline.Events), syncEventIDs(allA[len(allA)-2:])...)
				if !jr.Timeline.Limited || jr.Timeline.PrevBatch == "" {
					t.Fatalf("a timeline cut to its limit: limited=%v prev_batch=%q", jr.Timeline.Limited, jr.Timeline.PrevBatch)
				}
			},
		},
		{
			name:   "timeline.types with wildcard",
			filter: `{"room":{"timeline":{"limit":100,"types":["m.room.m*","org.example.*"]}}}`,
			check: timelineCase(`types`, func(e *event.Event) bool {
				return e.Type == event.EventMessage || e.Type == event.StateMember || e.Type.Type == "org.example.thing"
			}),
		},
		{
			name:   "timeline.not_types with wildcard",
			filter: `{"room":{"timeline":{"limit":100,"not_types":["m.room.*"]}}}`,
			check:  timelineCase(`not_types`, func(e *event.Event) bool { return !strings.HasPrefix(e.Type.Type, "m.room.") }),
		},
		{
			name:   "timeline.types and not_types",
			filter: `{"room":{"timeline":{"limit":100,"types":["m.room.*"],"not_types":["m.room.member","m.room.message"]}}}`,
			check: timelineCase(`types+not_types`, func(e *event.Event) bool {
				return strings.HasPrefix(e.Type.Type, "m.room.") && e.Type != event.StateMember && e.Type != event.EventMessage
			}),
		},
		{
			name:   "timeline.senders",
			filter: syncJSON(t, map[string]any{"room": map[string]any{"timeline": map[string]any{"limit": 100, "senders": []id.UserID{bob.UserID}}}}),
			check:  timelineCase(`senders`, func(e *event.Event) bool { return e.Sender == bob.UserID }),
		},
		{
			name:   "timeline.not_senders",
			filter: syncJSON(t, map[string]any{"room": map[string]any{"timeline": map[string]any{"limit": 100, "not_senders": []id.UserID{bob.UserID}}}}),
			check:  timelineCase(`not_senders`, func(e *event.Event) bool { return e.Sender != bob.UserID }),
		},
		{
			name:   "timeline.contains_url true",
			filter: `{"room":{"timeline":{"limit":100,"contains_url":true}}}`,
			check:  timelineCase(`contains_url`, func(e *event.Event) bool { return e.ID == imageID.EventID }),
		},
		{
			name:   "timeline.contains_url false",
			filter: `{"room":{"timeline":{"limit":100,"contains_url":false}}}`,
			check:  timelineCase(`not contains_url`, func(e *event.Event) bool { return e.ID != imageID.EventID }),
		},
		{
			name:   "timeline.types with limit",
			filter: `{"room":{"timeline":{"limit":3,"types":["m.room.message"]}}}`,
			check: func(t *testing.T, f string) {
				msgs := syncKeep(allA, isType("m.room.message"))
				resp := syncWith(t, alice, "", f, 0)
				jr := resp.Rooms.Join[roomA]
				wantIDs(t, "timeline", syncEventIDs(jr.Timeline.Events), syncEventIDs(msgs[len(msgs)-3:])...)
				if !jr.Timeline.Limited {
					t.Fatal("more matching events than the limit, yet not limited")
				}
			},
		},
		{
			name:   "timeline.not_rooms",
			filter: syncJSON(t, map[string]any{"room": map[string]any{"timeline": map[string]any{"not_rooms": []id.RoomID{roomA}}}}),
			check: func(t *testing.T, f string) {
				resp := syncWith(t, alice, "", f, 0)
				if jr := resp.Rooms.Join[roomA]; jr == nil || len(jr.Timeline.Events) != 0 {
					t.Fatalf("room A's timeline is not empty with timeline.not_rooms: %+v", jr)
				}
				if jr := resp.Rooms.Join[roomB]; jr == nil || len(jr.Timeline.Events) == 0 {
					t.Fatal("room B's timeline is empty, though only room A is excluded")
				}
			},
		},
		{
			name:   "state.types",
			filter: `{"room":{"timeline":{"limit":1},"state":{"types":["m.room.name","m.room.t*"]}}}`,
			check: func(t *testing.T, f string) {
				full := syncWith(t, alice, "", `{"room":{"timeline":{"limit":1}}}`, 0).Rooms.Join[roomA].State.Events
				want := syncStateKeys(syncKeep(full, isType("m.room.name", "m.room.topic")))
				if len(want) != 2 || len(full) <= 2 {
					t.Fatalf("unfiltered state %v: want a name, a topic and more", syncStateKeys(full))
				}
				resp := syncWith(t, alice, "", f, 0)
				if got := syncStateKeys(resp.Rooms.Join[roomA].State.Events); !slices.Equal(got, want) {
					t.Fatalf("state = %v, want %v", got, want)
				}
				if topic := syncKeep(resp.Rooms.Join[roomA].State.Events, isType("m.room.topic")); topic[0].Content.AsTopic().Topic != "second topic" {
					t.Fatalf("state topic = %q, want the current one", topic[0].Content.AsTopic().Topic)
				}
			},
		},
		{
			name:   "state.not_types and not_senders",
			filter: syncJSON(t, map[string]any{"room": map[string]any{"timeline": map[string]any{"limit": 1}, "state": map[string]any{"not_types": []string{"m.room.power_levels"}, "not_senders": []id.UserID{bob.UserID}}}}),
			check: func(t *testing.T, f string) {
				full := syncWith(t, alice, "", `{"room":{"timeline":{"limit":1}}}`, 0).Rooms.Join[roomA].State.Events
				want := syncStateKeys(syncKeep(full, func(e *event.Event) bool {
					return e.Type != event.StatePowerLevels && e.Sender != bob.UserID
				}))
				resp := syncWith(t, alice, "", f, 0)
				if got := syncStateKeys(resp.Rooms.Join[roomA].State.Events); !slices.Equal(got, want) || len(got) == len(full) {
					t.Fatalf("state = %v, want %v (of %v)", got, want, syncStateKeys(full))
				}
			},
		},
		{
			name:   "ephemeral.not_types",
			filter: `{"room":{"ephemeral":{"not_types":["m.typing"]}}}`,
			check: func(t *testing.T, f string) {
				if !slices.Contains(syncEventTypes(baseA.Ephemeral.Events), "m.typing") {
					t.Fatalf("baseline has no typing: %v", syncEventTypes(baseA.Ephemeral.Events))
				}
				resp := syncWith(t, alice, "", f, 0)
				if got := syncEventTypes(resp.Rooms.Join[roomA].Ephemeral.Events); slices.Contains(got, "m.typing") {
					t.Fatalf("ephemeral = %v despite not_types m.typing", got)
				}
			},
		},
		{
			name:   "ephemeral.types",
			filter: `{"room":{"ephemeral":{"types":["m.t*"]}}}`,
			check: func(t *testing.T, f string) {
				resp := syncWith(t, alice, "", f, 0)
				evs := resp.Rooms.Join[roomA].Ephemeral.Events
				if !slices.Equal(syncEventTypes(evs), []string{"m.typing"}) {
					t.Fatalf("ephemeral = %v, want [m.typing]", syncEventTypes(evs))
				}
				if users := evs[0].Content.AsTyping().UserIDs; !slices.Equal(users, []id.UserID{bob.UserID}) {
					t.Fatalf("typing = %v, want [%s]", users, bob.UserID)
				}
			},
		},
		{
			name:   "ephemeral.not_rooms",
			filter: syncJSON(t, map[string]any{"room": map[string]any{"ephemeral": map[string]any{"not_rooms": []id.RoomID{roomA}}}}),
			check: func(t *testing.T, f string) {
				resp := syncWith(t, alice, "", f, 0)
				if got := syncEventTypes(resp.Rooms.Join[roomA].Ephemeral.Events); len(got) != 0 {
					t.Fatalf("ephemeral = %v for a room in not_rooms", got)
				}
			},
		},
		{
			name:   "room.account_data.types",
			filter: `{"room":{"account_data":{"types":["org.example.ra"]}}}`,
			check: func(t *testing.T, f string) {
				if got := syncAccountDataTypes(baseA.AccountData.Events); !slices.Equal(got, []string{"org.example.ra", "org.example.rb"}) {
					t.Fatalf("baseline room account data = %v", got)
				}
				resp := syncWith(t, alice, "", f, 0)
				if got := syncAccountDataTypes(resp.Rooms.Join[roomA].AccountData.Events); !slices.Equal(got, []string{"org.example.ra"}) {
					t.Fatalf("room account data = %v, want [org.example.ra]", got)
				}
			},
		},
		{
			name:   "room.account_data.not_rooms",
			filter: syncJSON(t, map[string]any{"room": map[string]any{"account_data": map[string]any{"not_rooms": []id.RoomID{roomA}}}}),
			check: func(t *testing.T, f string) {
				resp := syncWith(t, alice, "", f, 0)
				if got := syncAccountDataTypes(resp.Rooms.Join[roomA].AccountData.Events); len(got) != 0 {
					t.Fatalf("room account data = %v for a room in not_rooms", got)
				}
			},
		},
		{
			name:   "account_data.not_types",
			filter: `{"account_data":{"not_types":["org.example.g2"]}}`,
			check: func(t *testing.T, f string) {
				all := syncAccountDataTypes(base.AccountData.Events)
				if !slices.Contains(all, "org.example.g1") || !slices.Contains(all, "org.example.g2") {
					t.Fatalf("baseline account data = %v", all)
				}
				want := slices.DeleteFunc(slices.Clone(all), func(s string) bool { return s == "org.example.g2" })
				resp := syncWith(t, alice, "", f, 0)
				if got := syncAccountDataTypes(resp.AccountData.Events); !slices.Equal(got, want) {
					t.Fatalf("account data = %v, want %v", got, want)
				}
			},
		},
		{
			name:   "account_data.types",
			filter: `{"account_data":{"types":["org.example.*"]}}`,
			check: func(t *testing.T, f string) {
				resp := syncWith(t, alice, "", f, 0)
				if got := syncAccountDataTypes(resp.AccountData.Events); !slices.Equal(got, []string{"org.example.g1", "org.example.g2"}) {
					t.Fatalf("account data = %v", got)
				}
				for _, e := range resp.AccountData.Events {
					if want := map[string]float64{"org.example.g1": 1, "org.example.g2": 2}[e.Type.Type]; e.Content.Raw["v"] != want {
						t.Fatalf("%s content = %v", e.Type.Type, e.Content.Raw)
					}
				}
			},
		},
		{
			name:   "account_data.types empty",
			filter: `{"account_data":{"types":[]},"room":{"account_data":{"types":[]}}}`,
			check: func(t *testing.T, f string) {
				resp := syncWith(t, alice, "", f, 0)
				if len(resp.AccountData.Events) != 0 || len(resp.Rooms.Join[roomA].AccountData.Events) != 0 {
					t.Fatalf("account data despite types []: %v, %v", syncEventTypes(resp.AccountData.Events),
						syncEventTypes(resp.Rooms.Join[roomA].AccountData.Events))
				}
			},
		},
		{
			name:   "include_leave",
			filter: `{"room":{"include_leave":true,"timeline":{"limit":100}}}`,
			check: func(t *testing.T, f string) {
				resp := syncWith(t, alice, "", f, 0)
				lr := resp.Rooms.Leave[roomD]
				if lr == nil {
					t.Fatalf("left room missing from rooms.leave with include_leave: %v", slices.Collect(maps.Keys(resp.Rooms.Leave)))
				}
				tl := lr.Timeline.Events
				last := tl[len(tl)-1]
				if last.Type != event.StateMember || last.GetStateKey() != alice.UserID.String() || syncMembership(last) != event.MembershipLeave {
					t.Fatalf("left room's timeline does not end with the leave: %s %s", last.Type.Type, last.Content.VeryRaw)
				}
				if !slices.Equal(bodies(tl), []string{"bye D"}) {
					t.Fatalf("left room's messages = %v", bodies(tl))
				}
				if _, joined := resp.Rooms.Join[roomD]; joined {
					t.Fatal("left room also under join")
				}
			},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) { syncFilterForms(t, alice, c.filter, c.check) })
	}

	t.Run("event_fields", func(t *testing.T) {
		syncFilterForms(t, alice, `{"event_fields":["content.body","type"],"room":{"timeline":{"limit":100}}}`, func(t *testing.T, f string) {
			r := syncRaw(t, alice, map[string]string{"filter": f})
			r.wantOK(t)
			tl, _ := dig(r.Body, "rooms", "join", string(roomA), "timeline", "events").([]any)
			if len(tl) != len(allA) {
				t.Fatalf("timeline has %d events, want %d", len(tl), len(allA))
			}
			for i, x := range tl {
				ev := x.(map[string]any)
				if ev["type"] != allA[i].Type.Type {
					t.Fatalf("event %d: type %v, want %s", i, ev["type"], allA[i].Type.Type)
				}
				for k := range ev {
					if k != "type" && k != "content" {
						t.Fatalf("event %d keeps field %q: %v", i, k, ev)
					}
				}
				body, hasBody := allA[i].Content.Raw["body"]
				content, _ := ev["content"].(map[string]any)
				switch {
				case hasBody && (len(content) != 1 || content["body"] != body):
					t.Fatalf("event %d content = %v, want only body %v", i, ev["content"], body)
				case !hasBody && len(content) != 0:
					t.Fatalf("event %d content = %v, want no fields", i, ev["content"])
				}
			}
		})
	})

	t.Run("event_format federation", func(t *testing.T) {
		syncFilterForms(t, alice, `{"event_format":"federation","room":{"timeline":{"limit":100}}}`, func(t *testing.T, f string) {
			r := syncRaw(t, alice, map[string]string{"filter": f})
			r.wantOK(t)
			tl, _ := dig(r.Body, "rooms", "join", string(roomA), "timeline", "events").([]any)
			if len(tl) != len(allA) {
				t.Fatalf("timeline has %d events, want %d", len(tl), len(allA))
			}
			for i, x := range tl {
				ev := x.(map[string]any)
				for _, k := range []string{"auth_events", "prev_events", "depth", "hashes", "signatures", "sender", "origin_server_ts", "content", "type"} {
					if _, ok := ev[k]; !ok {
						t.Fatalf("event %d is not a PDU (no %s): %v", i, k, ev)
					}
				}
				if ev["type"] != allA[i].Type.Type {
					t.Fatalf("event %d: type %v, want %s", i, ev["type"], allA[i].Type.Type)
				}
				// Room v12: the create event has no room_id (the room ID is
				// its hash); every other PDU names the room.
				if ev["type"] != "m.room.create" && ev["room_id"] != string(roomA) {
					t.Fatalf("event %d: room_id %v, want %s", i, ev["room_id"], roomA)
				}
				if _, ok := ev["prev_events"].([]any); !ok {
					t.Fatalf("event %d prev_events = %v", i, ev["prev_events"])
				}
			}
			// Client format, for contrast: no PDU fields.
			cr := syncRaw(t, alice, map[string]string{"filter": `{"room":{"timeline":{"limit":1}}}`})
			ce, _ := dig(cr.Body, "rooms", "join", string(roomA), "timeline", "events").([]any)
			if len(ce) != 1 || dig(ce[0], "auth_events") != nil || dig(ce[0], "event_id") == nil {
				t.Fatalf("client-format event looks wrong: %v", ce)
			}
		})
	})
}

// syncSorted returns a sorted copy of ids (for set comparisons).
func syncSorted[T ~string](ids ...T) []T {
	out := slices.Clone(ids)
	slices.Sort(out)
	return out
}

// TestSyncPresenceFilter: the presence filter's types [] hides the presence
// section; senders/not_senders pick whose presence is shown.
func TestSyncPresenceFilter(t *testing.T) {
	srv := startAccounts(t, nil)
	ctx := context.Background()
	alice := registerUser(t, srv, "alice", "correct horse battery")
	bob := registerUser(t, srv, "bob", "correct horse battery")
	roomID := createRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	joinRoom(t, bob, roomID)
	for _, c := range []*mautrix.Client{alice, bob} {
		if err := c.SetPresence(ctx, mautrix.ReqPresence{Presence: event.PresenceOnline, StatusMsg: "here"}); err != nil {
			t.Fatal(err)
		}
	}
	senders := func(resp *mautrix.RespSync) []id.UserID {
		var out []id.UserID
		for _, e := range resp.Presence.Events {
			if e.Type != event.EphemeralEventPresence {
				t.Fatalf("presence section holds %s", e.Type.Type)
			}
			out = append(out, e.Sender)
		}
		slices.Sort(out)
		return out
	}
	// Unfiltered: both users' presence (so the filters below have
	// something to hide).
	wantIDs(t, "presence", senders(syncWith(t, alice, "", "", 0)), syncSorted(alice.UserID, bob.UserID)...)

	for _, c := range []struct {
		name, filter string
		want         []id.UserID
	}{
		{"types empty", `{"presence":{"types":[]}}`, nil},
		{"not_types", `{"presence":{"not_types":["m.*"]}}`, nil},
		{"types", `{"presence":{"types":["m.presence"]}}`, syncSorted(alice.UserID, bob.UserID)},
		{"senders", syncJSON(t, map[string]any{"presence": map[string]any{"senders": []id.UserID{bob.UserID}}}), []id.UserID{bob.UserID}},
		{"not_senders", syncJSON(t, map[string]any{"presence": map[string]any{"not_senders": []id.UserID{bob.UserID}}}), []id.UserID{alice.UserID}},
	} {
		t.Run(c.name, func(t *testing.T) {
			syncFilterForms(t, alice, c.filter, func(t *testing.T, f string) {
				wantIDs(t, "presence", senders(syncWith(t, alice, "", f, 0)), c.want...)
			})
		})
	}
}

// TestSyncFilterErrors: unknown filter IDs and malformed inline filters are
// refused, never treated as "no filter".
func TestSyncFilterErrors(t *testing.T) {
	srv := startAccounts(t, nil)
	alice := registerUser(t, srv, "alice", "correct horse battery")
	bob := registerUser(t, srv, "bob", "correct horse battery")
	bobFilter := syncUploadFilter(t, bob, `{"room":{"timeline":{"limit":1}}}`)
	for _, c := range []struct{ name, filter, errcode string }{
		{"unknown ID", "123456", "M_INVALID_PARAM"},
		{"another user's ID", bobFilter, "M_INVALID_PARAM"},
		{"not JSON", "{not json", "M_NOT_JSON"},
		{"bad event_format", `{"event_format":"pdu"}`, "M_BAD_JSON"},
		{"bad limit", `{"room":{"timeline":{"limit":"ten"}}}`, "M_BAD_JSON"},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := syncRaw(t, alice, map[string]string{"filter": c.filter})
			r.wantErr(t, http.StatusBadRequest, c.errcode)
			specValidateErr(t, r)
		})
	}
}

// --- tokens, timeouts, full_state -------------------------------------------

// TestSyncTokens: malformed and future tokens are refused; an old token
// still gives everything since it exactly once; full_state gives the whole
// state with a token; a long-poll with nothing new answers empty after its
// timeout; set_presence is checked.
func TestSyncTokens(t *testing.T) {
	srv := startAccounts(t, nil)
	alice := registerUser(t, srv, "alice", "correct horse battery")
	bob := registerUser(t, srv, "bob", "correct horse battery")
	roomID := createRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat", Name: "Tokens"})
	joinRoom(t, bob, roomID)

	first := syncWith(t, bob, "", "", 0)
	for _, since := range []string{"abc", "s-1_0", "s1", "s1_", "s_0", "s1_-1", "t1", "s1_0_0", "s99999999999999999999_0"} {
		t.Run("bad since "+since, func(t *testing.T) {
			r := syncRaw(t, bob, map[string]string{"since": since})
			r.wantErr(t, http.StatusBadRequest, "M_INVALID_PARAM")
			specValidateErr(t, r)
		})
	}
	t.Run("future since", func(t *testing.T) {
		tok := first.NextBatch
		pos, _, _ := strings.Cut(strings.TrimPrefix(tok, "s"), "_")
		if pos == tok || pos == "" {
			t.Fatalf("next_batch %q is not s<pos>_<typing>", tok)
		}
		future := "s" + pos + "000000_0"
		r := syncRaw(t, bob, map[string]string{"since": future, "timeout": "0"})
		r.wantErr(t, http.StatusBadRequest, "M_INVALID_PARAM")
	})
	t.Run("bad set_presence", func(t *testing.T) {
		r := syncRaw(t, bob, map[string]string{"set_presence": "busy"})
		r.wantErr(t, http.StatusBadRequest, "M_INVALID_PARAM")
	})
	t.Run("bad timeout", func(t *testing.T) {
		r := syncRaw(t, bob, map[string]string{"since": first.NextBatch, "timeout": "soon"})
		r.wantErr(t, http.StatusBadRequest, "M_INVALID_PARAM")
	})

	// An old token: three syncs later it still gives every event since it,
	// once each, in order.
	old := first.NextBatch
	since := old
	var sent []id.EventID
	for i := range 3 {
		sent = append(sent, syncSendText(t, alice, roomID, fmt.Sprintf("m%d", i)))
		resp := syncWith(t, bob, since, "", 5000)
		wantIDs(t, "incremental timeline", syncEventIDs(resp.Rooms.Join[roomID].Timeline.Events), sent[i])
		since = resp.NextBatch
	}
	again := syncWith(t, bob, old, `{"room":{"timeline":{"limit":50}}}`, 0)
	jr := again.Rooms.Join[roomID]
	wantIDs(t, "timeline from the old token", syncEventIDs(jr.Timeline.Events), sent...)
	if jr.Timeline.Limited || len(jr.State.Events) != 0 {
		t.Fatalf("old token: limited=%v state=%v", jr.Timeline.Limited, syncStateKeys(jr.State.Events))
	}
	if again.NextBatch != since {
		t.Fatalf("next_batch from the old token = %s, from the newest %s: both read up to the same position", again.NextBatch, since)
	}

	t.Run("full_state", func(t *testing.T) {
		resp := syncWith(t, bob, since, `{"room":{"timeline":{"limit":1}}}`, 0)
		if _, ok := resp.Rooms.Join[roomID]; ok {
			t.Fatal("nothing new, yet the room is in an incremental sync")
		}
		start := time.Now()
		r, err := bob.FullSyncRequest(context.Background(), mautrix.ReqSync{Since: since, FullState: true, Timeout: 30000})
		if err != nil {
			t.Fatal(err)
		}
		if time.Since(start) > 20*time.Second {
			t.Fatal("full_state waited for the timeout")
		}
		fs := r.Rooms.Join[roomID]
		if fs == nil {
			t.Fatal("full_state: room missing")
		}
		keys := syncStateKeys(fs.State.Events)
		for _, want := range []string{"m.room.create|", "m.room.name|", "m.room.power_levels|", "m.room.join_rules|",
			"m.room.member|" + alice.UserID.String(), "m.room.member|" + bob.UserID.String()} {
			if !slices.Contains(keys, want) {
				t.Fatalf("full_state state %v lacks %s", keys, want)
			}
		}
		if len(fs.Timeline.Events) != 0 {
			t.Fatalf("full_state timeline = %v, want nothing new", syncEventTypes(fs.Timeline.Events))
		}
	})

	t.Run("timeout", func(t *testing.T) {
		start := time.Now()
		resp := syncWith(t, bob, since, "", 500)
		elapsed := time.Since(start)
		if elapsed < 450*time.Millisecond {
			t.Fatalf("an empty long-poll answered after %v, before its 500 ms timeout", elapsed)
		}
		if !resp.Rooms.IsZero() || resp.NextBatch == "" {
			t.Fatalf("timed-out long-poll: rooms %+v, next_batch %q", resp.Rooms, resp.NextBatch)
		}
		// Its next_batch is a valid token that still sees what comes next.
		m := syncSendText(t, alice, roomID, "after the timeout")
		next := syncWith(t, bob, resp.NextBatch, "", 5000)
		wantIDs(t, "timeline after the timeout", syncEventIDs(next.Rooms.Join[roomID].Timeline.Events), m)
	})

	t.Run("r0", func(t *testing.T) {
		r := doJSON(t, "GET", clientURL(srv, "r0", "sync")+"?since="+since+"&timeout=0", bob.AccessToken, nil)
		r.wantOK(t)
		if _, ok := r.Body["next_batch"].(string); !ok {
			t.Fatalf("r0 sync: %s", r.Raw)
		}
	})
}

// --- the response against the spec ------------------------------------------

// TestSyncSpecShape validates an initial sync with all four membership
// sections, and an incremental one, against the spec's sync.yaml.
func TestSyncSpecShape(t *testing.T) {
	srv := startAccounts(t, nil)
	ctx := context.Background()
	alice := registerUser(t, srv, "alice", "correct horse battery")
	carol := registerUser(t, srv, "carol", "correct horse battery")

	joined := createRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat", Name: "Joined", Topic: "t"})
	joinRoom(t, carol, joined)
	syncSendText(t, alice, joined, "hello")
	invited := createRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "private_chat", Name: "Invited", Invite: []id.UserID{carol.UserID}})
	knock := syncKnockRoom(t, srv, alice, "Knock")
	if _, err := carol.KnockRoom(ctx, knock.String(), &mautrix.ReqKnockRoom{Reason: "let me in"}); err != nil {
		t.Fatal(err)
	}
	left := createRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat", Name: "Left"})
	joinRoom(t, carol, left)
	if _, err := carol.LeaveRoom(ctx, left); err != nil {
		t.Fatal(err)
	}
	if err := carol.SetAccountData(ctx, "org.example.x", map[string]any{"x": 1}); err != nil {
		t.Fatal(err)
	}
	if err := carol.SetRoomAccountData(ctx, joined, "org.example.y", map[string]any{"y": 1}); err != nil {
		t.Fatal(err)
	}
	if _, err := alice.UserTyping(ctx, joined, true, 30*time.Second); err != nil {
		t.Fatal(err)
	}

	r := syncRaw(t, carol, map[string]string{"filter": `{"room":{"include_leave":true}}`, "set_presence": "online"})
	r.wantOK(t)
	for _, section := range []string{"join", "invite", "knock", "leave"} {
		rooms, _ := dig(r.Body, "rooms", section).(map[string]any)
		want := map[string]id.RoomID{"join": joined, "invite": invited, "knock": knock, "leave": left}[section]
		if _, ok := rooms[string(want)]; !ok || len(rooms) != 1 {
			t.Fatalf("rooms.%s = %v, want just %s", section, rooms, want)
		}
	}
	specValidateSync(t, r.Body)

	// Incremental: a message, a state change, typing and a kick.
	since, _ := r.Body["next_batch"].(string)
	syncSendText(t, alice, joined, "again")
	syncSendState(t, alice, joined, event.StateTopic, "", map[string]any{"topic": "t2"})
	if _, err := alice.KickUser(ctx, invited, &mautrix.ReqKickUser{UserID: carol.UserID, Reason: "no"}); err != nil {
		t.Fatal(err)
	}
	inc := syncRaw(t, carol, map[string]string{"since": since, "timeout": "5000"})
	inc.wantOK(t)
	if dig(inc.Body, "rooms", "join", string(joined), "timeline", "events") == nil || dig(inc.Body, "rooms", "leave", string(invited)) == nil {
		t.Fatalf("incremental sync lacks the joined room's timeline or the rejected invite: %s", inc.Raw)
	}
	specValidateSync(t, inc.Body)
}

// specValidateSync validates a /sync body against sync.yaml, including
// each room of the four sections: specValidate does not descend into
// patternProperties (room ID -> room), so the rooms are checked here, each
// against its section's schema.
func specValidateSync(t *testing.T, body map[string]any) {
	t.Helper()
	specValidate(t, body, "sync.yaml", "/sync", "get", "200")
	dir := filepath.Join(matrixSpecDir(t), "api", "client-server")
	doc := loadYAML(t, filepath.Join(dir, "sync.yaml"))
	rooms := dig(doc, "paths", "/sync", "get", "responses", "200", "content", "application/json", "schema", "properties", "rooms", "properties")
	checked := 0
	for _, section := range []string{"join", "invite", "knock", "leave"} {
		schema, ok := dig(rooms, section, "patternProperties", "^!").(map[string]any)
		if !ok {
			t.Fatalf("sync.yaml: no room schema for rooms.%s", section)
		}
		got, _ := dig(body, "rooms", section).(map[string]any)
		for roomID, room := range got {
			if !strings.HasPrefix(roomID, "!") {
				t.Fatalf("rooms.%s key %q is not a room ID", section, roomID)
			}
			at := "$.rooms." + section + "." + roomID
			if errs := specCheck(t, specDoc{dir: dir, root: doc}, schema, room, at); len(errs) > 0 {
				t.Fatalf("/sync rooms.%s does not match sync.yaml:\n%s\nroom: %v", section, strings.Join(errs, "\n"), room)
			}
			checked++
		}
	}
	if checked == 0 {
		t.Fatal("specValidateSync: no rooms to check")
	}
}

// syncKnockRoom creates a private room whose join rule is knock.
func syncKnockRoom(t *testing.T, srv *Server, creator *mautrix.Client, name string) id.RoomID {
	t.Helper()
	return createRoomRaw(t, srv, creator, map[string]any{
		"preset": "private_chat", "name": name,
		"initial_state": []any{map[string]any{"type": "m.room.join_rules", "state_key": "", "content": map[string]any{"join_rule": "knock"}}},
	})
}

// --- consistency --------------------------------------------------------------

// TestSyncTwoDevicesSameTimeline: while several users send concurrently, two
// devices of one user, long-polling independently, each see every event
// exactly once and in the same order.
func TestSyncTwoDevicesSameTimeline(t *testing.T) {
	srv := startAccounts(t, nil)
	ctx := context.Background()
	alice := registerUser(t, srv, "alice", "correct horse battery")
	senders := []*mautrix.Client{alice}
	for _, name := range []string{"bob", "carol"} {
		senders = append(senders, registerUser(t, srv, name, "correct horse battery"))
	}
	rooms := []id.RoomID{
		createRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat", Name: "One"}),
		createRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat", Name: "Two"}),
	}
	for _, s := range senders[1:] {
		for _, r := range rooms {
			joinRoom(t, s, r)
		}
	}
	dev1 := loginWith(t, srv, "alice", "correct horse battery")
	dev2 := loginWith(t, srv, "alice", "correct horse battery")
	if dev1.DeviceID == dev2.DeviceID {
		t.Fatal("two logins gave one device")
	}
	const filter = `{"room":{"timeline":{"limit":200}}}`
	tok1 := syncWith(t, dev1, "", filter, 0).NextBatch
	tok2 := syncWith(t, dev2, "", filter, 0).NextBatch

	const perSender = 15
	total := perSender * len(senders)
	errs := make(chan error, len(senders))
	for i, s := range senders {
		go func() {
			for n := range perSender {
				r := rooms[(i+n)%len(rooms)]
				if _, err := s.SendText(ctx, r, fmt.Sprintf("%s-%d", s.UserID.Localpart(), n)); err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}

	// follow long-polls until it has seen total messages; it returns, per
	// room, the event IDs in the order the device received them.
	type seen struct {
		order map[id.RoomID][]id.EventID
		err   error
	}
	follow := func(cli *mautrix.Client, since string) seen {
		out := map[id.RoomID][]id.EventID{}
		count := 0
		deadline := time.Now().Add(60 * time.Second)
		for count < total {
			if time.Now().After(deadline) {
				return seen{out, fmt.Errorf("%s saw %d of %d messages", cli.DeviceID, count, total)}
			}
			resp, err := cli.FullSyncRequest(ctx, mautrix.ReqSync{Since: since, FilterID: filter, Timeout: 10000})
			if err != nil {
				return seen{out, err}
			}
			for rid, jr := range resp.Rooms.Join {
				if jr.Timeline.Limited {
					return seen{out, fmt.Errorf("%s: limited timeline in %s", cli.DeviceID, rid)}
				}
				for _, e := range jr.Timeline.Events {
					out[rid] = append(out[rid], e.ID)
					if e.Type == event.EventMessage {
						count++
					}
				}
			}
			since = resp.NextBatch
		}
		return seen{out, nil}
	}
	res := make(chan seen, 2)
	go func() { res <- follow(dev1, tok1) }()
	go func() { res <- follow(dev2, tok2) }()
	for range senders {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	a, b := <-res, <-res
	if a.err != nil || b.err != nil {
		t.Fatalf("following: %v / %v", a.err, b.err)
	}
	for _, r := range rooms {
		if !slices.Equal(a.order[r], b.order[r]) {
			t.Fatalf("room %s: the devices saw different timelines:\n%v\n%v", r, a.order[r], b.order[r])
		}
		dup := map[id.EventID]bool{}
		for _, e := range a.order[r] {
			if dup[e] {
				t.Fatalf("room %s: event %s seen twice", r, e)
			}
			dup[e] = true
		}
		// The order is the server's: /messages forward from the start
		// token lists the same events in the same order.
		msgs, err := alice.Messages(ctx, r, tok1, "", mautrix.DirectionForward, nil, 1000)
		if err != nil {
			t.Fatal(err)
		}
		wantIDs(t, "timeline against /messages", a.order[r], syncEventIDs(msgs.Chunk)...)
	}
}

// --- waking and visibility -------------------------------------------------

// TestSyncLongPollWakes: a waiting /sync answers promptly (well before its
// timeout) for an invite, for the user's own account data, and for a
// message in a room the filter keeps, never with an empty answer for a
// change the filter drops.
func TestSyncLongPollWakes(t *testing.T) {
	srv := startAccounts(t, nil)
	ctx := context.Background()
	alice := registerUser(t, srv, "alice", "correct horse battery")
	bob := registerUser(t, srv, "bob", "correct horse battery")
	bob2 := loginWith(t, srv, "bob", "correct horse battery")
	quiet := createRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat", Name: "Quiet"})
	loud := createRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat", Name: "Loud"})
	joinRoom(t, bob, quiet)
	joinRoom(t, bob, loud)
	since := syncWith(t, bob, "", "", 0).NextBatch

	// poll starts a 30 s long-poll, runs change, and wants the answer
	// within 10 s.
	poll := func(t *testing.T, filter string, change func()) *mautrix.RespSync {
		t.Helper()
		type result struct {
			resp *mautrix.RespSync
			err  error
		}
		done := make(chan result, 1)
		go func() {
			resp, err := bob.FullSyncRequest(ctx, mautrix.ReqSync{Since: since, FilterID: filter, Timeout: 30000})
			done <- result{resp, err}
		}()
		change()
		select {
		case r := <-done:
			if r.err != nil {
				t.Fatal(r.err)
			}
			parseSync(r.resp)
			since = r.resp.NextBatch
			return r.resp
		case <-time.After(10 * time.Second):
			t.Fatal("the long-poll did not wake")
			return nil
		}
	}

	t.Run("invite", func(t *testing.T) {
		var invited id.RoomID
		resp := poll(t, "", func() {
			invited = createRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "private_chat", Name: "New", Invite: []id.UserID{bob.UserID}})
		})
		syncWantSection(t, resp, invited, "invite")
	})
	t.Run("own account data from another device", func(t *testing.T) {
		resp := poll(t, "", func() {
			if err := bob2.SetAccountData(ctx, "org.example.woken", map[string]any{"ok": true}); err != nil {
				t.Error(err)
			}
		})
		if got := syncEventTypes(resp.AccountData.Events); !slices.Equal(got, []string{"org.example.woken"}) {
			t.Fatalf("account data = %v", got)
		}
	})
	t.Run("filtered-out change keeps waiting", func(t *testing.T) {
		var msg id.EventID
		filter := syncJSON(t, map[string]any{"room": map[string]any{"not_rooms": []id.RoomID{quiet}}})
		resp := poll(t, filter, func() {
			syncSendText(t, alice, quiet, "not for this filter")
			msg = syncSendText(t, alice, loud, "for this filter")
		})
		if _, ok := resp.Rooms.Join[quiet]; ok {
			t.Fatal("a room excluded by the filter is in the answer")
		}
		jr := resp.Rooms.Join[loud]
		if jr == nil {
			t.Fatalf("the long-poll answered without the kept room's message: %+v", resp.Rooms)
		}
		wantIDs(t, "timeline", syncEventIDs(jr.Timeline.Events), msg)
	})
}

// TestSyncHistoryVisibility: a user joining a room sees, in their first
// sync of it, only the history the room's history_visibility allows.
func TestSyncHistoryVisibility(t *testing.T) {
	srv := startAccounts(t, nil)
	ctx := context.Background()
	alice := registerUser(t, srv, "alice", "correct horse battery")
	bob := registerUser(t, srv, "bob", "correct horse battery")
	for _, c := range []struct {
		visibility string
		want       []string
	}{
		{"joined", []string{"after the join"}},
		{"invited", []string{"while invited", "after the join"}},
		{"shared", []string{"before the invite", "while invited", "after the join"}},
		{"world_readable", []string{"before the invite", "while invited", "after the join"}},
	} {
		t.Run(c.visibility, func(t *testing.T) {
			roomID := createRoomRaw(t, srv, alice, map[string]any{
				"preset": "private_chat", "name": "Visibility " + c.visibility,
				"initial_state": []any{map[string]any{"type": "m.room.history_visibility", "state_key": "",
					"content": map[string]any{"history_visibility": c.visibility}}},
			})
			since := syncWith(t, bob, "", "", 0).NextBatch
			syncSendText(t, alice, roomID, "before the invite")
			if _, err := alice.InviteUser(ctx, roomID, &mautrix.ReqInviteUser{UserID: bob.UserID}); err != nil {
				t.Fatal(err)
			}
			syncSendText(t, alice, roomID, "while invited")
			joinRoom(t, bob, roomID)
			syncSendText(t, alice, roomID, "after the join")
			const filter = `{"room":{"timeline":{"limit":50}}}`
			incremental := syncWith(t, bob, since, filter, 5000).Rooms.Join[roomID]
			initial := syncWith(t, bob, "", filter, 0).Rooms.Join[roomID]
			for name, jr := range map[string]*mautrix.SyncJoinedRoom{"incremental": incremental, "initial": initial} {
				if jr == nil {
					t.Fatalf("%s sync lacks the room", name)
				}
				if got := bodies(jr.Timeline.Events); !slices.Equal(got, c.want) {
					t.Fatalf("%s sync: messages %v, want %v", name, got, c.want)
				}
			}
		})
	}
}
