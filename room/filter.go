package room

import (
	"encoding/json"
	"slices"
	"strings"

	"github.com/tidwall/gjson"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"
)

// EventFilter is a RoomEventFilter (the /messages filter parameter and the
// timeline/state parts of a sync filter).
type EventFilter struct {
	Types           []string    `json:"types"`
	NotTypes        []string    `json:"not_types"`
	Senders         []id.UserID `json:"senders"`
	NotSenders      []id.UserID `json:"not_senders"`
	Rooms           []id.RoomID `json:"rooms"`
	NotRooms        []id.RoomID `json:"not_rooms"`
	ContainsURL     *bool       `json:"contains_url"`
	LazyLoadMembers bool        `json:"lazy_load_members"`
	Limit           int         `json:"limit"`
}

// ParseEventFilter reads a filter given inline as JSON ("" = no filter).
func ParseEventFilter(raw string) (*EventFilter, error) {
	if raw == "" {
		return nil, nil
	}
	var f EventFilter
	if err := json.Unmarshal([]byte(raw), &f); err != nil {
		return nil, mautrix.MBadJSON.WithMessage("filter is not a valid RoomEventFilter: " + err.Error())
	}
	return &f, nil
}

// TypeMatches applies the spec's "*" wildcards to event types: "*" matches
// any run of characters (dots included); nothing else is special.
func TypeMatches(patterns []string, typ string) bool {
	for _, p := range patterns {
		if wildcardMatch(p, typ) {
			return true
		}
	}
	return false
}

func wildcardMatch(pattern, s string) bool {
	parts := strings.Split(pattern, "*")
	if len(parts) == 1 {
		return pattern == s
	}
	if !strings.HasPrefix(s, parts[0]) {
		return false
	}
	s = s[len(parts[0]):]
	for _, mid := range parts[1 : len(parts)-1] {
		i := strings.Index(s, mid)
		if i < 0 {
			return false
		}
		s = s[i+len(mid):]
	}
	return strings.HasSuffix(s, parts[len(parts)-1])
}

// Match reports whether e passes the filter (a nil filter passes all).
func (f *EventFilter) Match(e *Event) bool {
	if f == nil {
		return true
	}
	p := e.PDU
	if f.Types != nil && !TypeMatches(f.Types, p.Type) {
		return false
	}
	if TypeMatches(f.NotTypes, p.Type) {
		return false
	}
	if f.Senders != nil && !slices.Contains(f.Senders, p.Sender) {
		return false
	}
	if slices.Contains(f.NotSenders, p.Sender) {
		return false
	}
	if f.Rooms != nil && !slices.Contains(f.Rooms, e.RoomID) {
		return false
	}
	if slices.Contains(f.NotRooms, e.RoomID) {
		return false
	}
	if f.ContainsURL != nil {
		url := gjson.GetBytes(p.Content, "url")
		has := url.Exists() && url.Type == gjson.String
		if has != *f.ContainsURL {
			return false
		}
	}
	return true
}
