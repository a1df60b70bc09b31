package syncapi

import (
	"encoding/json"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"
)

// Response is the body of GET /sync. Events are kept as the JSON they were
// formatted to (mautrix's RespSync would parse and re-encode every event).
type Response struct {
	NextBatch   string     `json:"next_batch"`
	Rooms       *Rooms     `json:"rooms,omitempty"`
	Presence    *EventList `json:"presence,omitempty"`
	AccountData *EventList `json:"account_data,omitempty"`
	ToDevice    *EventList `json:"to_device,omitempty"`
	// DeviceLists: incremental syncs only, and only when not empty.
	DeviceLists *mautrix.DeviceLists `json:"device_lists,omitempty"`
	// DeviceOneTimeKeysCount and DeviceUnusedFallbackKeyTypes are in
	// every response (Service.complete), and are not news.
	DeviceOneTimeKeysCount       map[id.KeyAlgorithm]int `json:"device_one_time_keys_count,omitempty"`
	DeviceUnusedFallbackKeyTypes FallbackKeyTypes        `json:"device_unused_fallback_key_types"`

	// body, when set, caches the encoding of everything above but the
	// key counts, for responses shared by a user's devices (encode.go).
	body *encodedBody
}

// empty reports whether the response has no news: a long-poll does not
// answer with it. The key counts are not news.
func (r *Response) empty() bool {
	return r.Rooms == nil && r.Presence == nil && r.AccountData == nil && r.ToDevice == nil && r.DeviceLists == nil
}

// FallbackKeyTypes is device_unused_fallback_key_types: always a list,
// never null (the spec requires the field).
type FallbackKeyTypes []id.KeyAlgorithm

func (f FallbackKeyTypes) MarshalJSON() ([]byte, error) {
	if f == nil {
		return []byte("[]"), nil
	}
	return json.Marshal([]id.KeyAlgorithm(f))
}

// Rooms are the four membership sections.
type Rooms struct {
	Join   map[id.RoomID]*JoinedRoom  `json:"join,omitempty"`
	Invite map[id.RoomID]*InvitedRoom `json:"invite,omitempty"`
	Knock  map[id.RoomID]*KnockedRoom `json:"knock,omitempty"`
	Leave  map[id.RoomID]*LeftRoom    `json:"leave,omitempty"`
}

func (r *Rooms) empty() bool {
	return len(r.Join) == 0 && len(r.Invite) == 0 && len(r.Knock) == 0 && len(r.Leave) == 0
}

func (r *Rooms) join(roomID id.RoomID, jr *JoinedRoom) {
	if r.Join == nil {
		r.Join = map[id.RoomID]*JoinedRoom{}
	}
	r.Join[roomID] = jr
}

func (r *Rooms) invite(roomID id.RoomID, ir *InvitedRoom) {
	if r.Invite == nil {
		r.Invite = map[id.RoomID]*InvitedRoom{}
	}
	r.Invite[roomID] = ir
}

func (r *Rooms) knock(roomID id.RoomID, kr *KnockedRoom) {
	if r.Knock == nil {
		r.Knock = map[id.RoomID]*KnockedRoom{}
	}
	r.Knock[roomID] = kr
}

func (r *Rooms) leave(roomID id.RoomID, lr *LeftRoom) {
	if r.Leave == nil {
		r.Leave = map[id.RoomID]*LeftRoom{}
	}
	r.Leave[roomID] = lr
}

// EventList is {"events": [...]}; never null.
type EventList struct {
	Events []json.RawMessage `json:"events"`
}

func (l EventList) MarshalJSON() ([]byte, error) {
	evs := l.Events
	if evs == nil {
		evs = []json.RawMessage{}
	}
	return json.Marshal(struct {
		Events []json.RawMessage `json:"events"`
	}{evs})
}

// Timeline is a room's timeline section.
type Timeline struct {
	Events    []json.RawMessage `json:"events"`
	Limited   bool              `json:"limited"`
	PrevBatch string            `json:"prev_batch,omitempty"`
}

func (t Timeline) MarshalJSON() ([]byte, error) {
	type plain Timeline
	if t.Events == nil {
		t.Events = []json.RawMessage{}
	}
	return json.Marshal(plain(t))
}

// JoinedRoom is one room of rooms.join.
type JoinedRoom struct {
	Summary                   *RoomSummary          `json:"summary,omitempty"`
	State                     EventList             `json:"state"`
	Timeline                  Timeline              `json:"timeline"`
	Ephemeral                 EventList             `json:"ephemeral"`
	AccountData               EventList             `json:"account_data"`
	UnreadNotifications       *Unread               `json:"unread_notifications,omitempty"`
	UnreadThreadNotifications map[id.EventID]Unread `json:"unread_thread_notifications,omitempty"`
}

// RoomSummary is the m.room summary (heroes and member counts).
type RoomSummary struct {
	Heroes  []id.UserID `json:"m.heroes,omitempty"`
	Joined  *int        `json:"m.joined_member_count,omitempty"`
	Invited *int        `json:"m.invited_member_count,omitempty"`
}

// Unread are notification counts (the push issue fills them).
type Unread struct {
	HighlightCount    int `json:"highlight_count"`
	NotificationCount int `json:"notification_count"`
}

// InvitedRoom is one room of rooms.invite.
type InvitedRoom struct {
	InviteState EventList `json:"invite_state"`
}

// KnockedRoom is one room of rooms.knock.
type KnockedRoom struct {
	KnockState EventList `json:"knock_state"`
}

// LeftRoom is one room of rooms.leave.
type LeftRoom struct {
	State       EventList `json:"state"`
	Timeline    Timeline  `json:"timeline"`
	AccountData EventList `json:"account_data"`
}
