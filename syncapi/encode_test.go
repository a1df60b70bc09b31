package syncapi

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"reflect"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"
)

// plainResponse encodes like Response did before AppendJSON: through
// encoding/json's reflection, the reference the fast encoder must match.
type plainResponse Response

// randomResponse builds a response using every field some of the time,
// with strings that need escaping.
func randomResponse(rng *rand.Rand) *Response {
	str := func() string {
		parts := []string{"a", "é", `"`, `\`, "<&>", "\u2028", "😀", "\x01", "!room:example.org", "$ev"}
		s := ""
		for range rng.IntN(4) {
			s += parts[rng.IntN(len(parts))]
		}
		return s
	}
	raw := func() json.RawMessage {
		b, _ := json.Marshal(map[string]any{"type": str(), "content": map[string]any{"body": str(), "n": rng.IntN(1000)}})
		return b
	}
	events := func() []json.RawMessage {
		if rng.IntN(4) == 0 {
			return nil
		}
		out := []json.RawMessage{}
		for range rng.IntN(3) {
			out = append(out, raw())
		}
		return out
	}
	list := func() *EventList {
		if rng.IntN(2) == 0 {
			return nil
		}
		return &EventList{Events: events()}
	}
	users := func() []id.UserID {
		var out []id.UserID
		for range rng.IntN(3) {
			out = append(out, id.UserID("@"+str()+":example.org"))
		}
		return out
	}
	intp := func() *int {
		if rng.IntN(2) == 0 {
			return nil
		}
		n := rng.IntN(50)
		return &n
	}
	timeline := func() Timeline {
		t := Timeline{Events: events(), Limited: rng.IntN(2) == 0}
		if rng.IntN(2) == 0 {
			t.PrevBatch = "t" + str()
		}
		return t
	}
	r := &Response{NextBatch: "s" + str()}
	if rng.IntN(5) > 0 {
		rooms := &Rooms{}
		for range rng.IntN(3) {
			jr := &JoinedRoom{State: EventList{Events: events()}, Timeline: timeline(),
				Ephemeral: EventList{Events: events()}, AccountData: EventList{Events: events()}}
			if rng.IntN(2) == 0 {
				jr.Summary = &RoomSummary{Heroes: users(), Joined: intp(), Invited: intp()}
			}
			if rng.IntN(2) == 0 {
				jr.UnreadNotifications = &Unread{HighlightCount: rng.IntN(5), NotificationCount: rng.IntN(9)}
			}
			if rng.IntN(3) == 0 {
				jr.UnreadThreadNotifications = map[id.EventID]Unread{}
				for range rng.IntN(3) {
					jr.UnreadThreadNotifications[id.EventID("$"+str())] = Unread{rng.IntN(3), rng.IntN(3)}
				}
			}
			rooms.join(id.RoomID("!j"+str()+fmt.Sprint(rng.IntN(1e6))), jr)
		}
		for range rng.IntN(2) {
			rooms.invite(id.RoomID("!i"+str()), &InvitedRoom{InviteState: EventList{Events: events()}})
		}
		for range rng.IntN(2) {
			rooms.knock(id.RoomID("!k"+str()), &KnockedRoom{KnockState: EventList{Events: events()}})
		}
		for range rng.IntN(2) {
			rooms.leave(id.RoomID("!l"+str()), &LeftRoom{State: EventList{Events: events()}, Timeline: timeline(), AccountData: EventList{Events: events()}})
		}
		r.Rooms = rooms
	}
	r.Presence, r.AccountData, r.ToDevice = list(), list(), list()
	if rng.IntN(2) == 0 {
		r.DeviceLists = &mautrix.DeviceLists{Changed: users(), Left: users()}
	}
	if rng.IntN(2) == 0 {
		r.DeviceOneTimeKeysCount = map[id.KeyAlgorithm]int{id.KeyAlgorithmSignedCurve25519: rng.IntN(50)}
		if rng.IntN(2) == 0 {
			r.DeviceOneTimeKeysCount["curve25519"] = rng.IntN(5)
		}
	}
	if rng.IntN(2) == 0 {
		r.DeviceUnusedFallbackKeyTypes = FallbackKeyTypes{id.KeyAlgorithmSignedCurve25519}
	}
	return r
}

func decodeAny(t *testing.T, b []byte) any {
	t.Helper()
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, b)
	}
	return v
}

// TestAppendJSONMatchesEncodingJSON: the fast encoder writes the same
// JSON value as encoding/json for responses using every field, and a
// shared copy with its own key counts encodes as the whole would.
func TestAppendJSONMatchesEncodingJSON(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 2000 {
		r := randomResponse(rng)
		want, err := json.Marshal((*plainResponse)(r))
		if err != nil {
			t.Fatal(err)
		}
		got := r.AppendJSON(nil)
		if !json.Valid(got) {
			t.Fatalf("case %d: invalid JSON:\n%s", i, got)
		}
		if w, g := decodeAny(t, want), decodeAny(t, got); !reflect.DeepEqual(w, g) {
			t.Fatalf("case %d:\nwant %s\ngot  %s", i, want, got)
		}

		// Shared: two copies with different key counts, encoded after
		// each other, each match the whole response with its counts.
		shared := *r
		shared.body = &encodedBody{}
		for range 2 {
			c := shared.copy()
			c.DeviceOneTimeKeysCount = map[id.KeyAlgorithm]int{id.KeyAlgorithmSignedCurve25519: rng.IntN(9)}
			c.DeviceUnusedFallbackKeyTypes = FallbackKeyTypes{}
			whole := *c
			whole.body = nil
			want, _ := json.Marshal((*plainResponse)(&whole))
			if w, g := decodeAny(t, want), decodeAny(t, c.AppendJSON(nil)); !reflect.DeepEqual(w, g) {
				t.Fatalf("case %d, shared copy:\nwant %s\ngot  %s", i, want, c.AppendJSON(nil))
			}
		}
	}
}

// BenchmarkEncodeResponse compares the fast encoder with encoding/json on
// a long-poll's typical answer: one message in one room.
func BenchmarkEncodeResponse(b *testing.B) {
	ev := json.RawMessage(`{"content":{"body":"fanout-17","msgtype":"m.text"},"event_id":"$Ojv1o2Xc9jz8ZqvG1fKTt2mGQkXk2QmUQ2mn7pXxQ4c","origin_server_ts":1763800000000,"sender":"@fan0:localhost","type":"m.room.message","unsigned":{"age":12}}`)
	r := &Response{NextBatch: "s1234_0", Rooms: &Rooms{Join: map[id.RoomID]*JoinedRoom{
		"!abcdefghijklmnop:localhost": {Timeline: Timeline{Events: []json.RawMessage{ev}, PrevBatch: "t1233"},
			UnreadNotifications: &Unread{NotificationCount: 3}},
	}}, DeviceOneTimeKeysCount: map[id.KeyAlgorithm]int{id.KeyAlgorithmSignedCurve25519: 0}, DeviceUnusedFallbackKeyTypes: FallbackKeyTypes{}}
	b.Run("AppendJSON", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_ = r.AppendJSON(nil)
		}
	})
	b.Run("encoding-json", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_, _ = json.Marshal((*plainResponse)(r))
		}
	})
}
