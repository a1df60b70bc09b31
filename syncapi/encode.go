package syncapi

import (
	"encoding/json"
	"encoding/json/jsontext"
	"slices"
	"strconv"
	"sync"

	"maunium.net/go/mautrix/id"
)

// Encoding a response.
//
// A response is mostly events that are already JSON (formatted by this
// package from stored events, or stored account data and receipts). The
// generic encoder validates and re-compacts every one of them again, and
// sorts map keys through reflection: most of the CPU of answering a
// long-poll woken by one message. AppendJSON writes the same JSON
// directly: events byte for byte, everything else from the fields.
//
// Invariant: every json.RawMessage in a Response is valid JSON produced or
// checked before it was put there (event formatting, stored JSON read
// from PostgreSQL's json columns). AppendJSON trusts that.
//
// Responses that every device of a user gets alike (sync.go, shared
// responses) are encoded once: the copies handed to each device share
// their encodedBody, and only the device's own fields are appended per
// device.

// encodedBody caches the encoding of a response without its device
// fields (the key counts).
type encodedBody struct {
	once sync.Once
	b    []byte // the object without its closing brace
}

// AppendJSON appends the response as a JSON object.
func (r *Response) AppendJSON(dst []byte) []byte {
	if r == nil {
		return append(dst, "null"...)
	}
	if r.body != nil {
		r.body.once.Do(func() { r.body.b = r.appendShared(nil) })
		dst = append(dst, r.body.b...)
	} else {
		dst = r.appendShared(dst)
	}
	return r.appendDevice(dst)
}

// MarshalJSON is AppendJSON, for encoding/json.
func (r *Response) MarshalJSON() ([]byte, error) { return r.AppendJSON(nil), nil }

// appendShared writes every field but the device's key counts, without
// the closing brace.
func (r *Response) appendShared(b []byte) []byte {
	b = append(b, `{"next_batch":`...)
	b = appendString(b, r.NextBatch)
	if r.Rooms != nil {
		b = append(b, `,"rooms":`...)
		b = r.Rooms.appendJSON(b)
	}
	b = appendEventListField(b, "presence", r.Presence)
	b = appendEventListField(b, "account_data", r.AccountData)
	b = appendEventListField(b, "to_device", r.ToDevice)
	if r.DeviceLists != nil {
		b = append(b, `,"device_lists":{`...)
		n := len(b)
		if len(r.DeviceLists.Changed) > 0 {
			b = append(b, `"changed":`...)
			b = appendUserIDs(b, r.DeviceLists.Changed)
		}
		if len(r.DeviceLists.Left) > 0 {
			if len(b) > n {
				b = append(b, ',')
			}
			b = append(b, `"left":`...)
			b = appendUserIDs(b, r.DeviceLists.Left)
		}
		b = append(b, '}')
	}
	return b
}

// appendDevice writes the key counts and closes the object.
func (r *Response) appendDevice(b []byte) []byte {
	if len(r.DeviceOneTimeKeysCount) > 0 {
		b = append(b, `,"device_one_time_keys_count":{`...)
		for i, alg := range sortedKeys(r.DeviceOneTimeKeysCount) {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendString(b, string(alg))
			b = append(b, ':')
			b = strconv.AppendInt(b, int64(r.DeviceOneTimeKeysCount[alg]), 10)
		}
		b = append(b, '}')
	}
	b = append(b, `,"device_unused_fallback_key_types":[`...)
	for i, alg := range r.DeviceUnusedFallbackKeyTypes {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendString(b, string(alg))
	}
	return append(b, "]}"...)
}

func (r *Rooms) appendJSON(b []byte) []byte {
	b = append(b, '{')
	n := len(b)
	b = appendRoomSection(b, n, "join", r.Join, (*JoinedRoom).appendJSON)
	b = appendRoomSection(b, n, "invite", r.Invite, func(ir *InvitedRoom, b []byte) []byte {
		b = append(b, `{"invite_state":`...)
		return append(ir.InviteState.appendJSON(b), '}')
	})
	b = appendRoomSection(b, n, "knock", r.Knock, func(kr *KnockedRoom, b []byte) []byte {
		b = append(b, `{"knock_state":`...)
		return append(kr.KnockState.appendJSON(b), '}')
	})
	b = appendRoomSection(b, n, "leave", r.Leave, func(lr *LeftRoom, b []byte) []byte {
		b = append(b, `{"state":`...)
		b = lr.State.appendJSON(b)
		b = append(b, `,"timeline":`...)
		b = lr.Timeline.appendJSON(b)
		b = append(b, `,"account_data":`...)
		b = lr.AccountData.appendJSON(b)
		return append(b, '}')
	})
	return append(b, '}')
}

// appendRoomSection writes one of rooms' sections, omitted when empty
// (start is where the enclosing object's first member goes).
func appendRoomSection[R any](b []byte, start int, name string, rooms map[id.RoomID]*R, room func(*R, []byte) []byte) []byte {
	if len(rooms) == 0 {
		return b
	}
	if len(b) > start {
		b = append(b, ',')
	}
	b = appendString(b, name)
	b = append(b, `:{`...)
	for i, rid := range sortedKeys(rooms) {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendString(b, string(rid))
		b = append(b, ':')
		b = room(rooms[rid], b)
	}
	return append(b, '}')
}

func (jr *JoinedRoom) appendJSON(b []byte) []byte {
	b = append(b, '{')
	if s := jr.Summary; s != nil {
		b = append(b, `"summary":{`...)
		n := len(b)
		if len(s.Heroes) > 0 {
			b = append(b, `"m.heroes":`...)
			b = appendUserIDs(b, s.Heroes)
		}
		for _, c := range []struct {
			name string
			v    *int
		}{{"m.joined_member_count", s.Joined}, {"m.invited_member_count", s.Invited}} {
			if c.v == nil {
				continue
			}
			if len(b) > n {
				b = append(b, ',')
			}
			b = appendString(b, c.name)
			b = append(b, ':')
			b = strconv.AppendInt(b, int64(*c.v), 10)
		}
		b = append(b, "},"...)
	}
	b = append(b, `"state":`...)
	b = jr.State.appendJSON(b)
	b = append(b, `,"timeline":`...)
	b = jr.Timeline.appendJSON(b)
	b = append(b, `,"ephemeral":`...)
	b = jr.Ephemeral.appendJSON(b)
	b = append(b, `,"account_data":`...)
	b = jr.AccountData.appendJSON(b)
	if u := jr.UnreadNotifications; u != nil {
		b = append(b, `,"unread_notifications":`...)
		b = u.appendJSON(b)
	}
	if len(jr.UnreadThreadNotifications) > 0 {
		b = append(b, `,"unread_thread_notifications":{`...)
		for i, thread := range sortedKeys(jr.UnreadThreadNotifications) {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendString(b, string(thread))
			b = append(b, ':')
			u := jr.UnreadThreadNotifications[thread]
			b = u.appendJSON(b)
		}
		b = append(b, '}')
	}
	return append(b, '}')
}

func (u *Unread) appendJSON(b []byte) []byte {
	b = append(b, `{"highlight_count":`...)
	b = strconv.AppendInt(b, int64(u.HighlightCount), 10)
	b = append(b, `,"notification_count":`...)
	b = strconv.AppendInt(b, int64(u.NotificationCount), 10)
	return append(b, '}')
}

func (t *Timeline) appendJSON(b []byte) []byte {
	b = append(b, `{"events":`...)
	b = appendRaw(b, t.Events)
	b = append(b, `,"limited":`...)
	b = strconv.AppendBool(b, t.Limited)
	if t.PrevBatch != "" {
		b = append(b, `,"prev_batch":`...)
		b = appendString(b, t.PrevBatch)
	}
	return append(b, '}')
}

func (l *EventList) appendJSON(b []byte) []byte {
	b = append(b, `{"events":`...)
	return append(appendRaw(b, l.Events), '}')
}

// appendEventListField writes ,"name":{"events":[...]} when l is set.
func appendEventListField(b []byte, name string, l *EventList) []byte {
	if l == nil {
		return b
	}
	b = append(b, ',')
	b = appendString(b, name)
	b = append(b, ':')
	return l.appendJSON(b)
}

// appendRaw writes a list of JSON values as they are (see the invariant
// at the top of this file).
func appendRaw(b []byte, evs []json.RawMessage) []byte {
	b = append(b, '[')
	for i, ev := range evs {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, ev...)
	}
	return append(b, ']')
}

func appendUserIDs(b []byte, users []id.UserID) []byte {
	b = append(b, '[')
	for i, u := range users {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendString(b, string(u))
	}
	return append(b, ']')
}

// appendString writes s as a JSON string. Invalid UTF-8 (which no ID or
// token this server issues contains) becomes U+FFFD, as encoding/json
// does.
func appendString(b []byte, s string) []byte {
	b, _ = jsontext.AppendQuote(b, s)
	return b
}

// sortedKeys are m's keys in order, for output that does not depend on
// map iteration (as encoding/json sorts them).
func sortedKeys[K ~string, V any](m map[K]V) []K {
	keys := make([]K, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
