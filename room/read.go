package room

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/tidwall/gjson"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"
)

// ClientEvent is an event in the client-server format.
type ClientEvent struct {
	Content        json.RawMessage `json:"content"`
	EventID        id.EventID      `json:"event_id"`
	OriginServerTS int64           `json:"origin_server_ts"`
	RoomID         id.RoomID       `json:"room_id,omitempty"` // omitted inside /sync rooms
	Sender         id.UserID       `json:"sender"`
	StateKey       *string         `json:"state_key,omitempty"`
	Type           string          `json:"type"`
	Redacts        id.EventID      `json:"redacts,omitempty"`
	Unsigned       map[string]any  `json:"unsigned,omitempty"`
}

// ToClient formats a stored event for clients. Redacted events are shown as
// the room version's redaction algorithm leaves them.
func (s *Service) ToClient(e *Event) ClientEvent {
	p := e.PDU
	content := json.RawMessage(p.Content)
	unsigned := map[string]any{"age": max(s.now().UnixMilli()-p.OriginServerTS, 0)}
	if e.RedactedBy != "" {
		content = json.RawMessage(p.Clone().Redact(e.RoomVersion).Content)
		if e.RedactedBecause != nil {
			unsigned["redacted_because"] = s.ToClient(&Event{ID: e.RedactedBy, RoomID: e.RoomID, RoomVersion: e.RoomVersion, PDU: e.RedactedBecause})
		} else {
			unsigned["redacted_because"] = map[string]any{"event_id": e.RedactedBy, "type": "m.room.redaction"}
		}
	}
	ce := ClientEvent{
		Content: content, EventID: e.ID, OriginServerTS: p.OriginServerTS,
		RoomID: e.RoomID, Sender: p.Sender, StateKey: p.StateKey, Type: p.Type, Unsigned: unsigned,
	}
	if p.Redacts != nil {
		ce.Redacts = *p.Redacts
	} else if p.Type == "m.room.redaction" {
		ce.Redacts = id.EventID(gjson.GetBytes(p.Content, "redacts").Str)
	}
	if len(ce.Content) == 0 {
		ce.Content = json.RawMessage("{}")
	}
	return ce
}

// Token is a position between events in the room stream: "after every event
// at or below this stream position". /messages tokens are "t" + decimal.
type Token int64

func (t Token) String() string { return "t" + strconv.FormatInt(int64(t), 10) }

// ParseToken reads a /messages token: a room token ("t<pos>") or a /sync
// next_batch ("s<pos>_<typing>", whose stream position is the same kind
// of position).
func ParseToken(s string) (Token, error) {
	bad := mautrix.MInvalidParam.WithMessage("Invalid pagination token")
	var digits string
	switch {
	case strings.HasPrefix(s, "t"):
		digits = s[1:]
	case strings.HasPrefix(s, "s"):
		var ok bool
		if digits, _, ok = strings.Cut(s[1:], "_"); !ok {
			return 0, bad
		}
	default:
		return 0, bad
	}
	n, err := strconv.ParseInt(digits, 10, 64)
	if err != nil || n < 0 {
		return 0, bad
	}
	return Token(n), nil
}

// visibility answers "may this user see this event?" following the spec's
// history visibility rules, caching per state snapshot.
type visibility struct {
	s      *Service
	ctx    context.Context
	user   id.UserID
	room   id.RoomID
	joined bool // the user is joined now
	// joinedUntil, for a user not joined now, is the stream position of
	// the event that last took them out of join (0: never joined). They
	// were joined at some point after every event below it.
	joinedUntil int64
	cache       map[int64][2]string // snapshot -> history_visibility, membership
	snapGet     func(snapshot int64) (hv, membership string, err error)
}

// allowed implements the spec's rules on the state at the event:
// world_readable always; the user's membership is join; shared and the
// user joined at some point after the event; invited and the user was
// invited. A history_visibility event, and the user's own member event, is
// visible if the rules allow it with the state before or after it.
func (v *visibility) allowed(e *Event) (bool, error) {
	at, hit := v.cache[e.StateBefore]
	if !hit {
		hv, membership, err := v.snapGet(e.StateBefore)
		if err != nil {
			return false, err
		}
		at = [2]string{hv, membership}
		v.cache[e.StateBefore] = at
	}
	hv, membership := at[0], at[1]
	if v.rule(e, hv, membership) {
		return true, nil
	}
	if p := e.PDU; p != nil && p.StateKey != nil {
		switch {
		case p.Type == "m.room.history_visibility" && *p.StateKey == "":
			return v.rule(e, gjson.GetBytes(p.Content, "history_visibility").Str, membership), nil
		case p.Type == "m.room.member" && *p.StateKey == string(v.user):
			return v.rule(e, hv, gjson.GetBytes(p.Content, "membership").Str), nil
		}
	}
	return false, nil
}

func (v *visibility) rule(e *Event, hv, membership string) bool {
	switch hv {
	case "world_readable", "shared", "invited", "joined":
	default:
		hv = "shared" // unset or not understood
	}
	return hv == "world_readable" || membership == "join" ||
		hv == "shared" && (v.joined || e.StreamPos > 0 && e.StreamPos < v.joinedUntil) ||
		hv == "invited" && membership == "invite"
}

// joinedUntil walks back from the user's current member event (not join)
// to the one that took them out of join, and returns its stream position;
// 0 if they never joined.
func (s *Service) joinedUntil(ctx context.Context, roomID id.RoomID, user id.UserID, memberEvent id.EventID) (int64, error) {
	cur := memberEvent
	for range 100 { // a bound against pathological membership churn
		e, err := s.store.Event(ctx, cur)
		if errors.Is(err, ErrNotFound) {
			return 0, nil
		} else if err != nil {
			return 0, err
		}
		state, err := s.store.StateAt(ctx, roomID, cur, false)
		if err != nil {
			return 0, err
		}
		var prev *Event
		for _, st := range state {
			if st.PDU.Type == "m.room.member" && st.PDU.StateKey != nil && *st.PDU.StateKey == string(user) {
				prev = st
			}
		}
		if prev == nil {
			return 0, nil
		}
		if gjson.GetBytes(prev.PDU.Content, "membership").Str == "join" {
			return e.StreamPos, nil
		}
		cur = prev.ID
	}
	return 0, nil
}

// Reader is the read side of the store needed for visibility checks.
type snapshotReader interface {
	// SnapshotVisibility returns history_visibility and the user's
	// membership in a state snapshot.
	SnapshotVisibility(ctx context.Context, snapshot int64, user id.UserID) (string, string, error)
}

// Messages is GET /rooms/{roomId}/messages.
type Messages struct {
	Start string        `json:"start"`
	End   string        `json:"end,omitempty"`
	Chunk []ClientEvent `json:"chunk"`
	State []ClientEvent `json:"state,omitempty"`
}

// MessagesParams are the query parameters.
type MessagesParams struct {
	User     id.UserID
	RoomID   id.RoomID
	From, To string
	Backward bool
	Limit    int
	// Ignored are senders the reader ignores (m.ignored_user_list).
	Ignored map[id.UserID]bool
	// Filter selects events (types, senders, ...); nil: all. With
	// lazy_load_members the response's state has the senders' member events.
	Filter *EventFilter
}

// maxMessagesLimit caps one page.
const maxMessagesLimit = 1000

// Messages pages through a room's timeline, showing the reader only what
// history visibility allows. A reader who was never in the room (and the
// room is not world-readable) gets M_FORBIDDEN.
func (s *Service) Messages(ctx context.Context, p MessagesParams) (*Messages, error) {
	vis, membership, err := s.visibilityFor(ctx, p.User, p.RoomID)
	if err != nil {
		return nil, err
	}
	max, err := s.store.MaxStreamPos(ctx)
	if err != nil {
		return nil, err
	}
	var from Token
	switch {
	case p.From != "":
		if from, err = ParseToken(p.From); err != nil {
			return nil, err
		}
	case p.Backward:
		from = Token(max)
	}
	to := Token(-1)
	if p.To != "" {
		if to, err = ParseToken(p.To); err != nil {
			return nil, err
		}
	}
	// A user who left sees nothing after their leave.
	if membership == "leave" || membership == "ban" {
		_, leaveID, err := s.store.Membership(ctx, p.RoomID, p.User)
		if err == nil {
			if le, err := s.store.Event(ctx, leaveID); err == nil {
				if p.Backward && int64(from) > le.StreamPos {
					from = Token(le.StreamPos)
				}
				if !p.Backward && (to < 0 || int64(to) > le.StreamPos) {
					to = Token(le.StreamPos)
				}
			}
		}
	}
	limit := p.Limit
	if limit <= 0 {
		limit = 10
	}
	limit = min(limit, maxMessagesLimit)
	out := &Messages{Start: from.String(), Chunk: []ClientEvent{}}
	// cursor is the token after what has been consumed so far: backward,
	// events at or below it remain; forward, events above it remain.
	cursor := int64(from)
	exhausted := false
	for len(out.Chunk) < limit && !exhausted {
		lo, hi := int64(to), cursor // backward: (lo, hi]
		if !p.Backward {
			lo, hi = cursor, int64(to) // forward: (lo, hi]
			if to < 0 {
				hi = max
			}
		} else if to < 0 {
			lo = 0
		}
		if lo >= hi {
			exhausted = true
			break
		}
		batch, err := s.store.Timeline(ctx, p.RoomID, lo, hi, p.Backward, limit)
		if err != nil {
			return nil, err
		}
		exhausted = len(batch) < limit
		for _, e := range batch {
			if len(out.Chunk) == limit {
				exhausted = false // stopped early: more remain
				break
			}
			if p.Backward {
				cursor = e.StreamPos - 1
			} else {
				cursor = e.StreamPos
			}
			ok, err := vis.allowed(e)
			if err != nil {
				return nil, err
			}
			if !ok || p.Ignored[e.PDU.Sender] || !p.Filter.Match(e) {
				continue
			}
			out.Chunk = append(out.Chunk, s.ToClient(e))
		}
	}
	if !exhausted {
		out.End = Token(cursor).String()
	}
	if err := s.bundleAggregations(ctx, vis, p.Ignored, out.Chunk); err != nil {
		return nil, err
	}
	if p.Filter != nil && p.Filter.LazyLoadMembers && len(out.Chunk) > 0 {
		if err := s.addSenderMembers(ctx, p.RoomID, out); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// addSenderMembers puts the current member events of the chunk's senders
// into the response's state (lazy-loading members).
func (s *Service) addSenderMembers(ctx context.Context, roomID id.RoomID, out *Messages) error {
	senders := map[id.UserID]bool{}
	for _, e := range out.Chunk {
		senders[e.Sender] = true
	}
	members, err := s.store.Members(ctx, roomID)
	if err != nil {
		return err
	}
	for _, m := range members {
		if m.PDU.StateKey != nil && senders[id.UserID(*m.PDU.StateKey)] {
			out.State = append(out.State, s.ToClient(m))
		}
	}
	return nil
}

// visibilityFor builds the visibility checker for a reader, refusing
// readers who have never been in the room unless it is world-readable.
func (s *Service) visibilityFor(ctx context.Context, user id.UserID, roomID id.RoomID) (*visibility, string, error) {
	if _, err := s.store.RoomVersion(ctx, roomID); errors.Is(err, ErrNotFound) {
		return nil, "", errForbidden("You are not in this room")
	} else if err != nil {
		return nil, "", err
	}
	membership, memberEvent, err := s.store.Membership(ctx, roomID, user)
	if err != nil {
		return nil, "", err
	}
	if membership == "" || membership == "knock" {
		hv, err := s.currentHistoryVisibility(ctx, roomID)
		if err != nil {
			return nil, "", err
		}
		if hv != "world_readable" {
			return nil, "", errForbidden("You are not in this room")
		}
	}
	sr, ok := s.store.(snapshotReader)
	if !ok {
		return nil, "", fmt.Errorf("store cannot read snapshots")
	}
	v := &visibility{s: s, ctx: ctx, user: user, room: roomID, joined: membership == "join", cache: map[int64][2]string{},
		snapGet: func(snap int64) (string, string, error) { return sr.SnapshotVisibility(ctx, snap, user) }}
	if !v.joined && memberEvent != "" {
		if v.joinedUntil, err = s.joinedUntil(ctx, roomID, user, memberEvent); err != nil {
			return nil, "", err
		}
	}
	return v, membership, nil
}

// Visibility applies the history visibility rules for one reader of one
// room, reading state snapshots through a function the caller chooses (so
// /sync can answer from its own read snapshot).
type Visibility struct{ v *visibility }

// NewVisibility builds a checker. joined: the reader is joined as of the
// read. joinedUntil: for a reader not joined, the stream position of the
// event that took them out of join (0: they never were). snapshot returns
// history_visibility and the reader's membership in a state snapshot.
func NewVisibility(user id.UserID, joined bool, joinedUntil int64, snapshot func(snap int64) (hv, membership string, err error)) *Visibility {
	return &Visibility{&visibility{user: user, joined: joined, joinedUntil: joinedUntil, cache: map[int64][2]string{}, snapGet: snapshot}}
}

// Allowed reports whether the reader may see e.
func (v *Visibility) Allowed(e *Event) (bool, error) { return v.v.allowed(e) }

// VisibleTo keeps the events (all of roomID) that user may see under the
// room's history visibility, in order. A user who may not read the room
// at all gets none.
func (s *Service) VisibleTo(ctx context.Context, user id.UserID, roomID id.RoomID, events []*Event) ([]*Event, error) {
	v, _, err := s.visibilityFor(ctx, user, roomID)
	var me mautrix.RespError
	if errors.As(err, &me) && me.ErrCode == mautrix.MForbidden.ErrCode {
		return nil, nil
	} else if err != nil {
		return nil, err
	}
	out := events[:0:0]
	for _, e := range events {
		ok, err := v.allowed(e)
		if err != nil {
			return nil, err
		}
		if ok {
			out = append(out, e)
		}
	}
	return out, nil
}

func (s *Service) currentHistoryVisibility(ctx context.Context, roomID id.RoomID) (string, error) {
	st, err := s.store.CurrentState(ctx, roomID)
	if err != nil {
		return "", err
	}
	for _, e := range st {
		if e.PDU.Type == "m.room.history_visibility" && e.PDU.StateKey != nil && *e.PDU.StateKey == "" {
			return gjson.GetBytes(e.PDU.Content, "history_visibility").Str, nil
		}
	}
	return "shared", nil
}

// State is GET /rooms/{roomId}/state: the current state for members; for
// someone who left, the state when they left.
func (s *Service) State(ctx context.Context, user id.UserID, roomID id.RoomID) ([]ClientEvent, error) {
	evs, err := s.visibleState(ctx, user, roomID)
	if err != nil {
		return nil, err
	}
	out := make([]ClientEvent, 0, len(evs))
	for _, e := range evs {
		out = append(out, s.ToClient(e))
	}
	return out, nil
}

func (s *Service) visibleState(ctx context.Context, user id.UserID, roomID id.RoomID) ([]*Event, error) {
	_, membership, err := s.visibilityFor(ctx, user, roomID)
	if err != nil {
		return nil, err
	}
	if membership == "leave" || membership == "ban" {
		_, leaveID, err := s.store.Membership(ctx, roomID, user)
		if err != nil {
			return nil, err
		}
		return s.store.StateAt(ctx, roomID, leaveID, true)
	}
	if membership == "invite" {
		return nil, errForbidden("Join the room to see its state")
	}
	return s.store.CurrentState(ctx, roomID)
}

// StateEvent is GET /rooms/{roomId}/state/{eventType}/{stateKey}.
func (s *Service) StateEvent(ctx context.Context, user id.UserID, roomID id.RoomID, typ, stateKey string) (*ClientEvent, error) {
	evs, err := s.visibleState(ctx, user, roomID)
	if err != nil {
		return nil, err
	}
	for _, e := range evs {
		if e.PDU.Type == typ && e.PDU.StateKey != nil && *e.PDU.StateKey == stateKey {
			ce := s.ToClient(e)
			return &ce, nil
		}
	}
	return nil, errNotFound("No such state event")
}

// Event is GET /rooms/{roomId}/event/{eventId}. Its bundled aggregations
// leave out children sent by the ignored users, as Messages does.
func (s *Service) Event(ctx context.Context, user id.UserID, roomID id.RoomID, eventID id.EventID, ignored map[id.UserID]bool) (*ClientEvent, error) {
	vis, _, err := s.visibilityFor(ctx, user, roomID)
	if err != nil {
		return nil, err
	}
	e, err := s.store.Event(ctx, eventID)
	if errors.Is(err, ErrNotFound) || (err == nil && e.RoomID != roomID) {
		return nil, errNotFound("Event not found")
	}
	if err != nil {
		return nil, err
	}
	ok, err := vis.allowed(e)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, errNotFound("Event not found")
	}
	evs := []ClientEvent{s.ToClient(e)}
	if err := s.bundleAggregations(ctx, vis, ignored, evs); err != nil {
		return nil, err
	}
	return &evs[0], nil
}

// Members is GET /rooms/{roomId}/members (membership / not_membership filters).
// With at (a /messages or sync token) it answers for the room as it was at
// that point, never later than the reader may see.
func (s *Service) Members(ctx context.Context, user id.UserID, roomID id.RoomID, at, membership, notMembership string) ([]ClientEvent, error) {
	evs, err := s.visibleState(ctx, user, roomID)
	if err != nil {
		return nil, err
	}
	if at != "" {
		tok, err := ParseToken(at)
		if err != nil {
			return nil, err
		}
		if evs, err = s.stateAtToken(ctx, roomID, tok, evs); err != nil {
			return nil, err
		}
	}
	out := []ClientEvent{}
	for _, e := range evs {
		if e.PDU.Type != "m.room.member" {
			continue
		}
		m := gjson.GetBytes(e.PDU.Content, "membership").Str
		if (membership != "" && m != membership) || (notMembership != "" && m == notMembership) {
			continue
		}
		out = append(out, s.ToClient(e))
	}
	return out, nil
}

// JoinedMember is one entry of /joined_members.
type JoinedMember struct {
	DisplayName string `json:"display_name,omitempty"`
	AvatarURL   string `json:"avatar_url,omitempty"`
}

// JoinedMembers is GET /rooms/{roomId}/joined_members: for joined users only.
func (s *Service) JoinedMembers(ctx context.Context, user id.UserID, roomID id.RoomID) (map[id.UserID]JoinedMember, error) {
	m, _, err := s.store.Membership(ctx, roomID, user)
	if err != nil {
		return nil, err
	}
	if m != "join" {
		return nil, errForbidden("You are not in this room")
	}
	evs, err := s.store.Members(ctx, roomID)
	if err != nil {
		return nil, err
	}
	out := map[id.UserID]JoinedMember{}
	for _, e := range evs {
		if gjson.GetBytes(e.PDU.Content, "membership").Str != "join" || e.PDU.StateKey == nil {
			continue
		}
		out[id.UserID(*e.PDU.StateKey)] = JoinedMember{
			DisplayName: gjson.GetBytes(e.PDU.Content, "displayname").Str,
			AvatarURL:   gjson.GetBytes(e.PDU.Content, "avatar_url").Str,
		}
	}
	return out, nil
}

// JoinedRooms is GET /joined_rooms.
func (s *Service) JoinedRooms(ctx context.Context, user id.UserID) ([]id.RoomID, error) {
	rooms, err := s.store.JoinedRooms(ctx, user)
	if err != nil {
		return nil, err
	}
	if rooms == nil {
		rooms = []id.RoomID{}
	}
	return rooms, nil
}

// stateAtToken is the room state after the last event at or before tok,
// unless the reader's visible state (visible) is older, which then wins.
func (s *Service) stateAtToken(ctx context.Context, roomID id.RoomID, tok Token, visible []*Event) ([]*Event, error) {
	last, err := s.store.Timeline(ctx, roomID, 0, int64(tok), true, 1)
	if err != nil || len(last) == 0 {
		return []*Event{}, err
	}
	newest := int64(0)
	for _, e := range visible {
		newest = max(newest, e.StreamPos)
	}
	if last[0].StreamPos >= newest {
		return visible, nil
	}
	return s.store.StateAt(ctx, roomID, last[0].ID, true)
}

// IgnoredUsers is the set of users an m.ignored_user_list account data
// content lists (nil for none, or for content that is not such a list).
func IgnoredUsers(content json.RawMessage) map[id.UserID]bool {
	var c struct {
		IgnoredUsers map[id.UserID]json.RawMessage `json:"ignored_users"`
	}
	if json.Unmarshal(content, &c) != nil || len(c.IgnoredUsers) == 0 {
		return nil
	}
	out := make(map[id.UserID]bool, len(c.IgnoredUsers))
	for u := range c.IgnoredUsers {
		out[u] = true
	}
	return out
}
