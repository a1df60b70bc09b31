package syncapi

import (
	"encoding/json"
	"slices"
	"strings"

	"github.com/tidwall/gjson"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/weftchat/weft/room"
)

// defaultTimelineLimit is the timeline limit without a filter.
const defaultTimelineLimit = 10

// maxTimelineLimit caps a filter's timeline limit.
const maxTimelineLimit = 500

// filter is a parsed sync filter (mautrix.Filter) with the spec's defaults.
type filter struct {
	f      mautrix.Filter
	fields [][]string // event_fields, split on unescaped dots
}

func newFilter(mf *mautrix.Filter) (*filter, error) {
	f := &filter{}
	if mf != nil {
		f.f = *mf
	}
	if f.f.Room == nil {
		f.f.Room = &mautrix.RoomFilter{}
	}
	switch f.f.EventFormat {
	case "", mautrix.EventFormatClient, mautrix.EventFormatFederation:
	default:
		return nil, mautrix.MInvalidParam.WithMessage("event_format must be client or federation")
	}
	for _, p := range f.f.EventFields {
		f.fields = append(f.fields, splitField(p))
	}
	return f, nil
}

// splitField splits "content.body" into path segments; "\." is a literal
// dot (the spec's escape for keys such as "m.relates_to").
func splitField(p string) []string {
	var out []string
	var cur strings.Builder
	for i := 0; i < len(p); i++ {
		switch {
		case p[i] == '\\' && i+1 < len(p):
			i++
			cur.WriteByte(p[i])
		case p[i] == '.':
			out = append(out, cur.String())
			cur.Reset()
		default:
			cur.WriteByte(p[i])
		}
	}
	return append(out, cur.String())
}

// matchPart applies a filter part's types/senders/rooms to one event.
func matchPart(p *mautrix.FilterPart, typ string, sender id.UserID, roomID id.RoomID) bool {
	if p == nil {
		return true
	}
	if p.Types != nil && !room.TypeMatches(typeStrings(p.Types), typ) {
		return false
	}
	if room.TypeMatches(typeStrings(p.NotTypes), typ) {
		return false
	}
	if sender != "" {
		if p.Senders != nil && !slices.Contains(p.Senders, sender) || slices.Contains(p.NotSenders, sender) {
			return false
		}
	}
	if roomID != "" {
		if p.Rooms != nil && !slices.Contains(p.Rooms, roomID) || slices.Contains(p.NotRooms, roomID) {
			return false
		}
	}
	return true
}

func typeStrings(ts []event.Type) []string {
	if ts == nil {
		return nil
	}
	out := make([]string, len(ts))
	for i, t := range ts {
		out[i] = t.Type
	}
	return out
}

func (f *filter) roomAllowed(roomID id.RoomID) bool {
	r := f.f.Room
	return (r.Rooms == nil || slices.Contains(r.Rooms, roomID)) && !slices.Contains(r.NotRooms, roomID)
}

func (f *filter) includeLeave() bool { return f.f.Room.IncludeLeave }

func (f *filter) timelineLimit() int {
	if t := f.f.Room.Timeline; t != nil && t.Limit > 0 {
		return min(t.Limit, maxTimelineLimit)
	}
	return defaultTimelineLimit
}

func (f *filter) lazyLoad() bool {
	return f.f.Room.State != nil && f.f.Room.State.LazyLoadMembers ||
		f.f.Room.Timeline != nil && f.f.Room.Timeline.LazyLoadMembers
}

func (f *filter) unreadThreads() bool {
	return f.f.Room.Timeline != nil && f.f.Room.Timeline.UnreadThreadNotifications
}

func (f *filter) timelineMatch(e *room.Event) bool {
	t := f.f.Room.Timeline
	if !matchPart(t, e.PDU.Type, e.PDU.Sender, e.RoomID) {
		return false
	}
	if t != nil && t.ContainsURL != nil {
		url := gjson.GetBytes(e.PDU.Content, "url")
		if (url.Type == gjson.String) != *t.ContainsURL {
			return false
		}
	}
	return true
}

// timelineKeepsAll reports that the timeline filter passes every event.
func (f *filter) timelineKeepsAll() bool {
	t := f.f.Room.Timeline
	return t == nil || t.Types == nil && len(t.NotTypes) == 0 && t.Senders == nil && len(t.NotSenders) == 0 &&
		t.Rooms == nil && len(t.NotRooms) == 0 && t.ContainsURL == nil
}

func (f *filter) stateFilter(evs []*room.Event) []*room.Event {
	s := f.f.Room.State
	if s == nil {
		return evs
	}
	out := evs[:0:0]
	for _, e := range evs {
		if !matchPart(s, e.PDU.Type, e.PDU.Sender, e.RoomID) {
			continue
		}
		if s.ContainsURL != nil && (gjson.GetBytes(e.PDU.Content, "url").Type == gjson.String) != *s.ContainsURL {
			continue
		}
		out = append(out, e)
	}
	return out
}

// ephemeralAllowed and roomAccountDataAllowed take the room: the parts are
// RoomEventFilters, whose rooms/not_rooms apply as well as the types.
func (f *filter) ephemeralAllowed(typ string, roomID id.RoomID) bool {
	return matchPart(f.f.Room.Ephemeral, typ, "", roomID)
}

func (f *filter) accountDataAllowed(typ string) bool { return matchPart(f.f.AccountData, typ, "", "") }

func (f *filter) roomAccountDataAllowed(typ string, roomID id.RoomID) bool {
	return matchPart(f.f.Room.AccountData, typ, "", roomID)
}

// presenceWanted is false when the presence filter excludes everything.
func (f *filter) presenceWanted() bool {
	p := f.f.Presence
	return p == nil || (p.Types == nil || len(p.Types) > 0) && (p.Limit >= 0) && matchPart(p, "m.presence", "", "")
}

func (f *filter) presenceAllowed(sender id.UserID) bool {
	return matchPart(f.f.Presence, "m.presence", sender, "")
}

func (f *filter) federationFormat() bool { return f.f.EventFormat == mautrix.EventFormatFederation }

// onlyFields keeps the event_fields paths of an event (all without them).
func (f *filter) onlyFields(raw []byte) json.RawMessage {
	if len(f.fields) == 0 {
		return raw
	}
	var full map[string]any
	if err := json.Unmarshal(raw, &full); err != nil {
		return raw
	}
	out := map[string]any{}
	for _, path := range f.fields {
		copyPath(out, full, path)
	}
	kept, err := json.Marshal(out)
	if err != nil {
		return raw
	}
	return kept
}

func copyPath(dst, src map[string]any, path []string) {
	v, ok := src[path[0]]
	if !ok {
		return
	}
	if len(path) == 1 {
		dst[path[0]] = v
		return
	}
	sub, ok := v.(map[string]any)
	if !ok {
		return
	}
	d, ok := dst[path[0]].(map[string]any)
	if !ok {
		d = map[string]any{}
		dst[path[0]] = d
	}
	copyPath(d, sub, path[1:])
}
