package room

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"

	"github.com/tidwall/gjson"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"
)

// Relation types the server aggregates (spec: "Aggregations of child
// events"). m.annotation is deliberately not aggregated.
const (
	relReplace    = "m.replace"
	relThread     = "m.thread"
	relReference  = "m.reference"
	relAnnotation = "m.annotation"
)

// RelationStore is the read side of the relations index (the events
// table's relates_to and rel_type columns). *storage.Rooms implements it;
// the service finds it by type assertion on its Store. Every method leaves
// out rejected events and redacted children: redacting a child breaks its
// relationship.
type RelationStore interface {
	// Relations lists the events relating to q.Parent, directly or (with
	// q.Depth > 1) through up to q.Depth-1 intermediate relating events
	// that match the same filter, with stream positions in (q.Lo, q.Hi]:
	// newest first when q.Backward, else oldest first.
	Relations(ctx context.Context, q RelationQuery) ([]*Event, error)
	// RelationCandidates lists, for a batch of parents in one room, in one
	// query: up to MaxCandidates valid m.replace children of each (same
	// sender and type as the parent, not a state event, with m.new_content
	// unless encrypted; most recent first by origin_server_ts then
	// event_id), the most recent MaxCandidates m.thread children with the
	// thread's count and whether q.User took part, and every m.reference
	// child. Children from q.Ignored senders, or above q.MaxPos, are left
	// out.
	RelationCandidates(ctx context.Context, q CandidateQuery) ([]RelationChild, error)
	// EventsByID loads events by ID (missing ones are absent).
	EventsByID(ctx context.Context, ids []id.EventID) (map[id.EventID]*Event, error)
	// ThreadRoots lists a room's thread roots by latest activity (the
	// stream position of the newest counted m.thread child), newest first.
	ThreadRoots(ctx context.Context, q ThreadQuery) ([]ThreadRoot, error)
}

// RelationTx is what Send asks of a room's write transaction before it
// appends a relation; *storage's room transaction implements it, and the
// service finds it by type assertion on its Tx. Read under the room's
// lock, it sees every earlier write to the room, those of the same batch
// included, so two racing sends cannot both pass a check. Like
// RelationStore, it ignores rejected and redacted events.
type RelationTx interface {
	// RelTypeOf is the rel_type of the relation eventID, an event of this
	// room, makes; "" if it makes none (or its relation was redacted) and
	// ErrNotFound if the room has no such event.
	RelTypeOf(eventID id.EventID) (string, error)
	// HasAnnotation reports whether sender already annotated target with
	// an event of type typ and this key.
	HasAnnotation(sender id.UserID, target id.EventID, typ, key string) (bool, error)
}

// RelationQuery selects a page of /relations.
type RelationQuery struct {
	RoomID    id.RoomID
	Parent    id.EventID
	RelType   string // "" for any
	EventType string // "" for any
	Depth     int    // 1: direct children only
	Lo, Hi    int64  // stream positions (Lo, Hi]
	Backward  bool
	Limit     int
	Ignored   []id.UserID
}

// MaxCandidates is how many edit and thread candidates RelationCandidates
// returns per parent: the newest visible one is chosen, and history
// visibility rarely hides more than a few of the newest.
const MaxCandidates = 5

// CandidateQuery asks for the children to aggregate for a page of parents.
type CandidateQuery struct {
	RoomID  id.RoomID
	Parents []id.EventID
	User    id.UserID
	Ignored []id.UserID
	MaxPos  int64
}

// RelationChild is one aggregation candidate.
type RelationChild struct {
	RelType     string
	Parent      id.EventID
	ID          id.EventID
	StateBefore int64 // for the history visibility check
	// Thread rows carry the thread's totals (the same on every row).
	Count        int
	Participated bool
}

// ThreadQuery selects a page of /threads.
type ThreadQuery struct {
	RoomID id.RoomID
	User   id.UserID
	// Participated keeps only threads whose root User sent or in which
	// User sent an m.thread child.
	Participated bool
	Ignored      []id.UserID
	// MaxPos bounds the children counted (a departed reader's leave).
	MaxPos int64
	// Before keeps threads whose latest activity is at or below it.
	Before int64
	Limit  int
}

// ThreadRoot is a thread root and the position of its latest activity.
type ThreadRoot struct {
	Root   *Event
	Latest int64
}

func (s *Service) relationStore() (RelationStore, error) {
	rs, ok := s.store.(RelationStore)
	if !ok {
		return nil, errors.New("store has no relations index")
	}
	return rs, nil
}

// RelationsParams are GET /rooms/{roomId}/relations/{eventId}[/{relType}[/{eventType}]].
type RelationsParams struct {
	User      id.UserID
	RoomID    id.RoomID
	EventID   id.EventID
	RelType   string
	EventType string
	From, To  string
	Forward   bool // dir=f
	Limit     int  // 0: the default
	// Recurse is nil when the client did not send the parameter, which
	// decides whether recursion_depth is answered.
	Recurse *bool
	Ignored map[id.UserID]bool
}

// RelationsPage is the /relations response.
type RelationsPage struct {
	Chunk          []ClientEvent `json:"chunk"`
	NextBatch      string        `json:"next_batch,omitempty"`
	PrevBatch      string        `json:"prev_batch,omitempty"`
	RecursionDepth *int          `json:"recursion_depth,omitempty"`
}

const (
	defaultRelationsLimit = 5
	maxRelationsLimit     = 100
	// maxRelationDepth is how far recurse=true follows relations of
	// relations (the spec asks for at least 3).
	maxRelationDepth = 3
)

// Relations pages through the children of an event. The parent must be an
// event the reader may see, else M_NOT_FOUND (the spec's one refusal for
// this endpoint, which also hides whether the event exists); children the
// reader may not see, and children from ignored users, are left out.
func (s *Service) Relations(ctx context.Context, p RelationsParams) (*RelationsPage, error) {
	rs, err := s.relationStore()
	if err != nil {
		return nil, err
	}
	notFound := errNotFound("Event not found")
	vis, _, err := s.visibilityFor(ctx, p.User, p.RoomID)
	if isErrcode(err, mautrix.MForbidden.ErrCode) {
		return nil, notFound
	} else if err != nil {
		return nil, err
	}
	parent, err := s.store.Event(ctx, p.EventID)
	if errors.Is(err, ErrNotFound) || (err == nil && parent.RoomID != p.RoomID) {
		return nil, notFound
	} else if err != nil {
		return nil, err
	}
	if ok, err := vis.allowed(parent); err != nil {
		return nil, err
	} else if !ok {
		return nil, notFound
	}
	maxPos, err := s.store.MaxStreamPos(ctx)
	if err != nil {
		return nil, err
	}
	// Backward starts at the newest event, forward at the oldest.
	from, to := Token(maxPos), Token(-1)
	if p.Forward {
		from = 0
	}
	if p.From != "" {
		if from, err = ParseToken(p.From); err != nil {
			return nil, err
		}
	}
	if p.To != "" {
		if to, err = ParseToken(p.To); err != nil {
			return nil, err
		}
	}
	limit := p.Limit
	if limit <= 0 {
		limit = defaultRelationsLimit
	}
	limit = min(limit, maxRelationsLimit)
	depth := 1
	out := &RelationsPage{Chunk: []ClientEvent{}}
	if p.Recurse != nil {
		if *p.Recurse {
			depth = maxRelationDepth
		}
		out.RecursionDepth = &depth
	}
	if p.From != "" {
		out.PrevBatch = p.From
	}
	// cursor is the token after what has been consumed, as in Messages.
	cursor := int64(from)
	exhausted := false
	for len(out.Chunk) < limit && !exhausted {
		lo, hi := int64(to), cursor
		if p.Forward {
			lo, hi = cursor, int64(to)
			if to < 0 {
				hi = maxPos
			}
		} else if to < 0 {
			lo = 0
		}
		if lo >= hi {
			exhausted = true
			break
		}
		batch, err := rs.Relations(ctx, RelationQuery{
			RoomID: p.RoomID, Parent: p.EventID, RelType: p.RelType, EventType: p.EventType,
			Depth: depth, Lo: lo, Hi: hi, Backward: !p.Forward, Limit: limit + 1, Ignored: userList(p.Ignored),
		})
		if err != nil {
			return nil, err
		}
		// One row more than a page tells whether another page exists.
		exhausted = len(batch) <= limit
		for _, e := range batch {
			if len(out.Chunk) == limit {
				exhausted = false
				break
			}
			cursor = e.StreamPos
			if !p.Forward {
				cursor = e.StreamPos - 1
			}
			ok, err := vis.allowed(e)
			if err != nil {
				return nil, err
			}
			if ok {
				out.Chunk = append(out.Chunk, s.ToClient(e))
			}
		}
	}
	if !exhausted {
		out.NextBatch = Token(cursor).String()
	}
	if err := s.bundleAggregations(ctx, vis, p.Ignored, out.Chunk); err != nil {
		return nil, err
	}
	return out, nil
}

// ThreadsParams are GET /rooms/{roomId}/threads.
type ThreadsParams struct {
	User         id.UserID
	RoomID       id.RoomID
	Participated bool // include=participated
	From         string
	Limit        int
	Ignored      map[id.UserID]bool
}

// ThreadsPage is the /threads response.
type ThreadsPage struct {
	Chunk     []ClientEvent `json:"chunk"`
	NextBatch string        `json:"next_batch,omitempty"`
}

const (
	defaultThreadsLimit = 10
	maxThreadsLimit     = 100
)

// Threads lists a room's thread roots the reader may see, most recently
// active first, each with its m.thread aggregation. The next_batch token
// is a position in latest activity: a thread that gets a new reply while
// the client pages moves above the cursor, and the client learns of it
// from /sync. A root sent by an ignored user is served redacted, as the
// spec asks, so the client's thread list looks as local aggregation would.
func (s *Service) Threads(ctx context.Context, p ThreadsParams) (*ThreadsPage, error) {
	rs, err := s.relationStore()
	if err != nil {
		return nil, err
	}
	vis, _, err := s.visibilityFor(ctx, p.User, p.RoomID)
	if err != nil {
		return nil, err
	}
	before := int64(math.MaxInt64)
	if p.From != "" {
		t, err := ParseToken(p.From)
		if err != nil {
			return nil, err
		}
		before = int64(t)
	}
	bound, err := s.readBound(ctx, vis)
	if err != nil {
		return nil, err
	}
	limit := p.Limit
	if limit <= 0 {
		limit = defaultThreadsLimit
	}
	limit = min(limit, maxThreadsLimit)
	out := &ThreadsPage{Chunk: []ClientEvent{}}
	exhausted := false
	for len(out.Chunk) < limit && !exhausted && before >= 0 {
		roots, err := rs.ThreadRoots(ctx, ThreadQuery{
			RoomID: p.RoomID, User: p.User, Participated: p.Participated, Ignored: userList(p.Ignored),
			MaxPos: bound, Before: before, Limit: limit + 1,
		})
		if err != nil {
			return nil, err
		}
		exhausted = len(roots) <= limit
		for _, t := range roots {
			if len(out.Chunk) == limit {
				exhausted = false
				break
			}
			before = t.Latest - 1
			ok, err := vis.allowed(t.Root)
			if err != nil {
				return nil, err
			}
			if !ok {
				continue
			}
			ce := s.ToClient(t.Root)
			if p.Ignored[t.Root.PDU.Sender] && t.Root.RedactedBy == "" {
				ce.Content = []byte(t.Root.PDU.Clone().Redact(t.Root.RoomVersion).Content)
				if len(ce.Content) == 0 {
					ce.Content = []byte("{}")
				}
			}
			out.Chunk = append(out.Chunk, ce)
		}
	}
	if !exhausted && before >= 0 {
		out.NextBatch = Token(before).String()
	}
	if err := s.bundleAggregations(ctx, vis, p.Ignored, out.Chunk); err != nil {
		return nil, err
	}
	return out, nil
}

// readBound is the highest stream position whose relations count for the
// reader: everything for a member or a peeker, and up to their leave (or
// ban) for someone who left, matching what Messages shows them.
func (s *Service) readBound(ctx context.Context, vis *visibility) (int64, error) {
	if vis.joined {
		return math.MaxInt64, nil
	}
	m, leaveID, err := s.store.Membership(ctx, vis.room, vis.user)
	if err != nil {
		return 0, err
	}
	if m != "leave" && m != "ban" {
		return math.MaxInt64, nil
	}
	le, err := s.store.Event(ctx, leaveID)
	if errors.Is(err, ErrNotFound) {
		return math.MaxInt64, nil
	} else if err != nil {
		return 0, err
	}
	return le.StreamPos, nil
}

// bundleAggregations adds the server-side aggregations (unsigned
// m.relations) to events about to be served to the reader behind vis:
//
//   - m.replace: the most recent valid replacement, as a whole event (spec
//     v1.7+). The original's content is left as it is: servers no longer
//     apply edits. A redacted original gets no m.replace.
//   - m.thread: latest_event (itself with its aggregations), count, and
//     current_user_participated.
//   - m.reference: {chunk: [{event_id}]}.
//
// Only children the reader may see and that ignored users did not send are
// counted. State events get no aggregations, as the spec says. The work is
// one query for the whole page, one to load the chosen events, and the
// same again for the thread latest events' own aggregations.
func (s *Service) bundleAggregations(ctx context.Context, vis *visibility, ignored map[id.UserID]bool, evs []ClientEvent) error {
	return s.bundle(ctx, vis, ignored, evs, true)
}

type threadAgg struct {
	count        int
	participated bool
	latest       id.EventID
}

func (s *Service) bundle(ctx context.Context, vis *visibility, ignored map[id.UserID]bool, evs []ClientEvent, threads bool) error {
	if len(evs) == 0 {
		return nil
	}
	rs, err := s.relationStore()
	if err != nil {
		return err
	}
	parents := make([]id.EventID, 0, len(evs))
	for _, ce := range evs {
		if ce.StateKey == nil && !slices.Contains(parents, ce.EventID) {
			parents = append(parents, ce.EventID)
		}
	}
	if len(parents) == 0 {
		return nil
	}
	bound, err := s.readBound(ctx, vis)
	if err != nil {
		return err
	}
	cands, err := rs.RelationCandidates(ctx, CandidateQuery{RoomID: vis.room, Parents: parents, User: vis.user, Ignored: userList(ignored), MaxPos: bound})
	if err != nil {
		return fmt.Errorf("loading aggregations: %w", err)
	}
	edits := map[id.EventID]id.EventID{}
	thr := map[id.EventID]*threadAgg{}
	refs := map[id.EventID][]map[string]id.EventID{}
	for _, c := range cands {
		switch c.RelType {
		case relReplace:
			if _, done := edits[c.Parent]; done {
				continue
			}
		case relThread:
			if !threads {
				continue
			}
			t := thr[c.Parent]
			if t == nil {
				t = &threadAgg{count: c.Count, participated: c.Participated}
				thr[c.Parent] = t
			}
			if t.latest != "" {
				continue
			}
		}
		ok, err := vis.allowed(&Event{ID: c.ID, StateBefore: c.StateBefore})
		if err != nil {
			return err
		}
		if !ok {
			continue
		}
		switch c.RelType {
		case relReplace:
			edits[c.Parent] = c.ID
		case relThread:
			thr[c.Parent].latest = c.ID
		case relReference:
			refs[c.Parent] = append(refs[c.Parent], map[string]id.EventID{"event_id": c.ID})
		}
	}
	want := make([]id.EventID, 0, len(edits)+len(thr))
	for _, e := range edits {
		want = append(want, e)
	}
	for _, t := range thr {
		if t.latest != "" {
			want = append(want, t.latest)
		}
	}
	loaded := map[id.EventID]*Event{}
	if len(want) > 0 {
		if loaded, err = rs.EventsByID(ctx, want); err != nil {
			return err
		}
	}
	// The thread latest events carry their own aggregations (an edit of
	// the latest reply, say); they cannot be thread roots themselves.
	latest := map[id.EventID]ClientEvent{}
	if len(thr) > 0 {
		var lat []ClientEvent
		for _, t := range thr {
			if e := loaded[t.latest]; e != nil {
				lat = append(lat, s.ToClient(e))
			}
		}
		if err := s.bundle(ctx, vis, ignored, lat, false); err != nil {
			return err
		}
		for _, ce := range lat {
			latest[ce.EventID] = ce
		}
	}
	for i := range evs {
		ce := &evs[i]
		if ce.StateKey != nil {
			continue
		}
		rel := map[string]any{}
		_, redacted := ce.Unsigned["redacted_because"]
		isEdit := gjson.GetBytes(ce.Content, `m\.relates_to.rel_type`).Str == relReplace
		if eid, ok := edits[ce.EventID]; ok && !redacted && !isEdit {
			if e := loaded[eid]; e != nil {
				rel[relReplace] = s.ToClient(e)
			}
		}
		if t := thr[ce.EventID]; t != nil {
			if l, ok := latest[t.latest]; ok {
				rel[relThread] = map[string]any{
					"latest_event":              l,
					"count":                     t.count,
					"current_user_participated": t.participated || ce.Sender == vis.user,
				}
			}
		}
		if r := refs[ce.EventID]; len(r) > 0 {
			rel[relReference] = map[string]any{"chunk": r}
		}
		if len(rel) > 0 {
			if ce.Unsigned == nil {
				ce.Unsigned = map[string]any{}
			}
			ce.Unsigned["m.relations"] = rel
		}
	}
	return nil
}

// userList turns a set of users into a list for a query.
func userList(set map[id.UserID]bool) []id.UserID {
	out := make([]id.UserID, 0, len(set))
	for u, ok := range set {
		if ok {
			out = append(out, u)
		}
	}
	return out
}

// isErrcode reports whether err is a Matrix error with errcode.
func isErrcode(err error, errcode string) bool {
	var re mautrix.RespError
	if errors.As(err, &re) {
		return re.ErrCode == errcode
	}
	var rep *mautrix.RespError
	return errors.As(err, &rep) && rep.ErrCode == errcode
}
