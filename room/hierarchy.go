package room

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/tidwall/gjson"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"
)

// HierarchyStore reads the rooms of a space tree. *storage.Rooms implements
// it; the service finds it by type assertion on its Store.
type HierarchyStore interface {
	// SpaceRooms loads the summary of each known room of roomIDs in one
	// go; rooms this server does not have are absent from the map.
	SpaceRooms(ctx context.Context, roomIDs []id.RoomID, user id.UserID) (map[id.RoomID]*SpaceRoom, error)
}

// SpaceRoom is what the hierarchy shows of a room.
type SpaceRoom struct {
	RoomID        id.RoomID
	Version       id.RoomVersion
	JoinedMembers int
	// State holds the current state events of the summary (m.room.create,
	// name, topic, avatar, canonical_alias, join_rules,
	// history_visibility, guest_access, encryption), every m.space.child
	// event, and the reader's m.room.member event if any.
	State []*Event
}

// HierarchyParams are GET /rooms/{roomId}/hierarchy.
type HierarchyParams struct {
	User          id.UserID
	RoomID        id.RoomID
	SuggestedOnly bool
	Limit         int  // 0: the default
	MaxDepth      *int // nil: the default
	From          string
}

// Hierarchy is the /hierarchy response.
type Hierarchy struct {
	Rooms     []HierarchyRoom `json:"rooms"`
	NextBatch string          `json:"next_batch,omitempty"`
}

// HierarchyRoom is one room of the tree: the spec's RoomSummary with
// children_state.
type HierarchyRoom struct {
	RoomID           id.RoomID      `json:"room_id"`
	NumJoinedMembers int            `json:"num_joined_members"`
	Name             string         `json:"name,omitempty"`
	Topic            string         `json:"topic,omitempty"`
	CanonicalAlias   string         `json:"canonical_alias,omitempty"`
	AvatarURL        string         `json:"avatar_url,omitempty"`
	JoinRule         string         `json:"join_rule,omitempty"`
	WorldReadable    bool           `json:"world_readable"`
	GuestCanJoin     bool           `json:"guest_can_join"`
	RoomType         string         `json:"room_type,omitempty"`
	RoomVersion      id.RoomVersion `json:"room_version,omitempty"`
	Encryption       string         `json:"encryption,omitempty"`
	AllowedRoomIDs   []id.RoomID    `json:"allowed_room_ids,omitempty"`
	ChildrenState    []SpaceChild   `json:"children_state"`
}

// SpaceChild is an m.space.child event in stripped form plus its
// origin_server_ts.
type SpaceChild struct {
	Type           string          `json:"type"`
	StateKey       string          `json:"state_key"`
	Content        json.RawMessage `json:"content"`
	Sender         id.UserID       `json:"sender"`
	OriginServerTS int64           `json:"origin_server_ts"`
}

const (
	defaultHierarchyLimit = 50
	maxHierarchyLimit     = 100
	// maxHierarchyDepth is both the default and the cap of max_depth.
	maxHierarchyDepth = 10
	// maxHierarchyWalk bounds the rooms one request visits, whatever the
	// tree looks like.
	maxHierarchyWalk = 2000
)

// SpaceHierarchy walks a space tree depth-first from p.RoomID along
// m.space.child events with a non-empty via, children in the spec's
// order. Rooms the reader may not see (see canSee) are left out together
// with everything below them; the root itself must be visible, else
// M_FORBIDDEN. Only rooms on this server are walked: federation fills in
// remote rooms once it exists.
//
// Pagination is stateless: next_batch records how many rooms were served
// and the max_depth and suggested_only they were served with, and the next
// request walks the tree again and skips them. A tree that changes between
// pages can shift rooms across the page boundary.
func (s *Service) SpaceHierarchy(ctx context.Context, p HierarchyParams) (*Hierarchy, error) {
	hs, ok := s.store.(HierarchyStore)
	if !ok {
		return nil, errors.New("store cannot read space hierarchies")
	}
	depthAsked := maxHierarchyDepth
	if p.MaxDepth != nil {
		if *p.MaxDepth < 0 {
			return nil, mautrix.MInvalidParam.WithMessage("max_depth must not be negative")
		}
		depthAsked = *p.MaxDepth
	}
	maxDepth := min(depthAsked, maxHierarchyDepth)
	skip := 0
	if p.From != "" {
		tok, err := parseHierarchyToken(p.From)
		if err != nil {
			return nil, err
		}
		if tok.maxDepth != depthAsked || tok.suggested != p.SuggestedOnly {
			return nil, mautrix.MInvalidParam.WithMessage("suggested_only and max_depth cannot change on paginated requests")
		}
		skip = tok.offset
	}
	limit := p.Limit
	if limit <= 0 {
		limit = defaultHierarchyLimit
	}
	limit = min(limit, maxHierarchyLimit)

	w := &spaceWalk{s: s, hs: hs, ctx: ctx, user: p.User, rooms: map[id.RoomID]*SpaceRoom{}}
	if err := w.load([]id.RoomID{p.RoomID}); err != nil {
		return nil, err
	}
	root := w.rooms[p.RoomID]
	if root == nil {
		return nil, errForbidden("You are not allowed to view this room")
	}
	if ok, err := w.canSee(root); err != nil {
		return nil, err
	} else if !ok {
		return nil, errForbidden("You are not allowed to view this room")
	}

	type item struct {
		room  id.RoomID
		depth int
	}
	out := &Hierarchy{Rooms: []HierarchyRoom{}}
	stack := []item{{p.RoomID, 0}}
	seen := map[id.RoomID]bool{}
	served := 0 // rooms passed in the walk, skipped or returned
	for len(stack) > 0 && len(seen) < maxHierarchyWalk {
		it := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if seen[it.room] {
			continue // a loop, or a room under two parents: shown once
		}
		seen[it.room] = true
		sr := w.rooms[it.room]
		if sr == nil {
			continue // not on this server
		}
		if ok, err := w.canSee(sr); err != nil {
			return nil, err
		} else if !ok {
			continue
		}
		entry, children := summarizeRoom(sr, p.SuggestedOnly)
		if served >= skip {
			if len(out.Rooms) == limit {
				out.NextBatch = hierarchyToken{offset: served, maxDepth: depthAsked, suggested: p.SuggestedOnly}.String()
				break
			}
			out.Rooms = append(out.Rooms, entry)
		}
		served++
		if it.depth >= maxDepth || len(children) == 0 {
			continue
		}
		var missing []id.RoomID
		for _, c := range children {
			if _, loaded := w.rooms[c]; !loaded && !seen[c] {
				missing = append(missing, c)
			}
		}
		if err := w.load(missing); err != nil {
			return nil, err
		}
		// Pushed in reverse, so the first child is walked next.
		for i := len(children) - 1; i >= 0; i-- {
			if !seen[children[i]] {
				stack = append(stack, item{children[i], it.depth + 1})
			}
		}
	}
	return out, nil
}

// spaceWalk caches what one hierarchy request has loaded.
type spaceWalk struct {
	s      *Service
	hs     HierarchyStore
	ctx    context.Context
	user   id.UserID
	rooms  map[id.RoomID]*SpaceRoom // nil value: looked up, unknown
	joined map[id.RoomID]bool       // the reader's joined rooms, loaded on first need
}

func (w *spaceWalk) load(ids []id.RoomID) error {
	if len(ids) == 0 {
		return nil
	}
	got, err := w.hs.SpaceRooms(w.ctx, ids, w.user)
	if err != nil {
		return err
	}
	for _, rid := range ids {
		w.rooms[rid] = got[rid]
	}
	return nil
}

// canSee is the spec's rule for rooms the hierarchy shows: the reader is
// joined or invited; the join rule is public, knock or knock_restricted;
// the join rule is restricted (or knock_restricted) and the reader is in
// one of the allowed rooms; or history is world_readable.
func (w *spaceWalk) canSee(sr *SpaceRoom) (bool, error) {
	joinRule, hv, membership := "", "", ""
	var allow []id.RoomID
	for _, e := range sr.State {
		c := stateContent(e)
		switch e.PDU.Type {
		case "m.room.join_rules":
			joinRule = gjson.GetBytes(c, "join_rule").Str
			allow = allowedRooms(c)
		case "m.room.history_visibility":
			hv = gjson.GetBytes(c, "history_visibility").Str
		case "m.room.member":
			membership = gjson.GetBytes(c, "membership").Str
		}
	}
	switch {
	case membership == "join" || membership == "invite":
		return true, nil
	case joinRule == "public" || joinRule == "knock" || joinRule == "knock_restricted":
		return true, nil
	case hv == "world_readable":
		return true, nil
	case joinRule == "restricted" && len(allow) > 0:
		if w.joined == nil {
			rooms, err := w.s.store.JoinedRooms(w.ctx, w.user)
			if err != nil {
				return false, err
			}
			w.joined = make(map[id.RoomID]bool, len(rooms))
			for _, r := range rooms {
				w.joined[r] = true
			}
		}
		for _, r := range allow {
			if w.joined[r] {
				return true, nil
			}
		}
	}
	return false, nil
}

// allowedRooms lists the m.room_membership conditions of a restricted
// join rule.
func allowedRooms(joinRules []byte) []id.RoomID {
	var out []id.RoomID
	for _, a := range gjson.GetBytes(joinRules, "allow").Array() {
		if a.Get("type").Str == "m.room_membership" && a.Get("room_id").Str != "" {
			out = append(out, id.RoomID(a.Get("room_id").Str))
		}
	}
	return out
}

// stateContent is an event's content as clients see it (redacted if so).
func stateContent(e *Event) []byte {
	if e.RedactedBy != "" {
		return e.PDU.Clone().Redact(e.RoomVersion).Content
	}
	return e.PDU.Content
}

// summarizeRoom builds a room's entry and lists the children to walk, in
// the spec's order. Only spaces have children.
func summarizeRoom(sr *SpaceRoom, suggestedOnly bool) (HierarchyRoom, []id.RoomID) {
	h := HierarchyRoom{RoomID: sr.RoomID, NumJoinedMembers: sr.JoinedMembers, RoomVersion: sr.Version, ChildrenState: []SpaceChild{}}
	var childEvents []*Event
	for _, e := range sr.State {
		if e.PDU.StateKey == nil {
			continue
		}
		c := stateContent(e)
		switch e.PDU.Type {
		case "m.room.create":
			h.RoomType = gjson.GetBytes(c, "type").Str
		case "m.room.name":
			h.Name = gjson.GetBytes(c, "name").Str
		case "m.room.topic":
			h.Topic = plainTopic(c)
		case "m.room.avatar":
			h.AvatarURL = gjson.GetBytes(c, "url").Str
		case "m.room.canonical_alias":
			h.CanonicalAlias = gjson.GetBytes(c, "alias").Str
		case "m.room.join_rules":
			h.JoinRule = gjson.GetBytes(c, "join_rule").Str
			if h.JoinRule == "restricted" || h.JoinRule == "knock_restricted" {
				h.AllowedRoomIDs = allowedRooms(c)
			}
		case "m.room.history_visibility":
			h.WorldReadable = gjson.GetBytes(c, "history_visibility").Str == "world_readable"
		case "m.room.guest_access":
			h.GuestCanJoin = gjson.GetBytes(c, "guest_access").Str == "can_join"
		case "m.room.encryption":
			h.Encryption = gjson.GetBytes(c, "algorithm").Str
		case "m.space.child":
			via := gjson.GetBytes(c, "via")
			if !via.IsArray() || len(via.Array()) == 0 || !strings.HasPrefix(*e.PDU.StateKey, "!") {
				continue // no via: the child was removed
			}
			if suggestedOnly && gjson.GetBytes(c, "suggested").Type != gjson.True {
				continue
			}
			childEvents = append(childEvents, e)
		}
	}
	if h.RoomType != "m.space" {
		return h, nil
	}
	slices.SortFunc(childEvents, compareSpaceChildren)
	children := make([]id.RoomID, 0, len(childEvents))
	for _, e := range childEvents {
		h.ChildrenState = append(h.ChildrenState, SpaceChild{
			Type: e.PDU.Type, StateKey: *e.PDU.StateKey, Content: json.RawMessage(stateContent(e)),
			Sender: e.PDU.Sender, OriginServerTS: e.PDU.OriginServerTS,
		})
		children = append(children, id.RoomID(*e.PDU.StateKey))
	}
	return h, children
}

// plainTopic is the text/plain topic: the topic key, or the first
// text/plain representation in m.topic (spec v1.15).
func plainTopic(c []byte) string {
	if t := gjson.GetBytes(c, "topic"); t.Type == gjson.String {
		return t.Str
	}
	for _, r := range gjson.GetBytes(c, `m\.topic.m\.text`).Array() {
		if m := r.Get("mimetype").Str; m == "" || m == "text/plain" {
			return r.Get("body").Str
		}
	}
	return ""
}

// compareSpaceChildren is the spec's "Ordering of children within a
// space": children with a valid order first, by order; then by the
// m.space.child event's origin_server_ts; then by room ID.
func compareSpaceChildren(a, b *Event) int {
	oa, okA := childOrder(a)
	ob, okB := childOrder(b)
	switch {
	case okA && !okB:
		return -1
	case !okA && okB:
		return 1
	case okA && okB:
		if c := strings.Compare(oa, ob); c != 0 {
			return c
		}
	}
	if c := cmp.Compare(a.PDU.OriginServerTS, b.PDU.OriginServerTS); c != 0 {
		return c
	}
	return strings.Compare(*a.PDU.StateKey, *b.PDU.StateKey)
}

// childOrder is a child's order if valid: a string of at most 50
// printable ASCII characters (\x20 to \x7E).
func childOrder(e *Event) (string, bool) {
	o := gjson.GetBytes(stateContent(e), "order")
	if o.Type != gjson.String || len(o.Str) > 50 {
		return "", false
	}
	for i := 0; i < len(o.Str); i++ {
		if o.Str[i] < 0x20 || o.Str[i] > 0x7E {
			return "", false
		}
	}
	return o.Str, true
}

// hierarchyToken is a stateless /hierarchy pagination token.
type hierarchyToken struct {
	offset    int
	maxDepth  int
	suggested bool
}

func (t hierarchyToken) String() string {
	s := 0
	if t.suggested {
		s = 1
	}
	return fmt.Sprintf("h%d_%d_%d", t.offset, t.maxDepth, s)
}

func parseHierarchyToken(s string) (hierarchyToken, error) {
	bad := mautrix.MInvalidParam.WithMessage("Unknown pagination token")
	parts := strings.Split(strings.TrimPrefix(s, "h"), "_")
	if !strings.HasPrefix(s, "h") || len(parts) != 3 {
		return hierarchyToken{}, bad
	}
	var n [3]int
	for i, p := range parts {
		v, err := strconv.Atoi(p)
		if err != nil || v < 0 {
			return hierarchyToken{}, bad
		}
		n[i] = v
	}
	if n[2] > 1 {
		return hierarchyToken{}, bad
	}
	return hierarchyToken{offset: n[0], maxDepth: n[1], suggested: n[2] == 1}, nil
}
