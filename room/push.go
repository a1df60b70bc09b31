package room

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/tidwall/gjson"
	"maunium.net/go/mautrix/federation/pdu"
	"maunium.net/go/mautrix/id"

	"github.com/weftchat/weft/push"
)

// Push rules are evaluated for every new event, for every local member of
// the room but the sender, inside the event's job and before the stream
// lock (room/batch.go): the rows it yields (Appended.Notifications) are
// written in the same transaction as the event, so /sync never shows an
// event without the unread counts it changed. Evaluation reads nothing
// from the database in the common case: members come from roomMembers,
// kept current by the jobs themselves, and compiled rules from the push
// service's cache, warmed before the job (Send).

// PushRules is what the room domain needs of the push rules service
// (*push.Service).
type PushRules interface {
	// Evaluators returns the compiled rules of users, in their order.
	Evaluators(ctx context.Context, users []id.UserID) ([]*push.Evaluator, error)
	// Warm loads the compiled rules of users not cached yet.
	Warm(ctx context.Context, users []id.UserID) error
}

// PushOutcome is what an event did for the local members of its room,
// written with it: in a big room most members share one outcome, so it is
// stored once (Summary) and only the members it does not fit get a row of
// their own (Exceptions). See storage/migrations/0012_push.sql.
type PushOutcome struct {
	// Summary, when not nil, is the outcome of every local member joined
	// at the event, except the sender and the users of Exceptions.
	Summary *Notification
	// Exceptions are users whose outcome is not Summary's (Notify false:
	// not notified), and the invitee of an invite when notified.
	Exceptions []Notification
}

// Notification is one outcome of the push rules for an event.
type Notification struct {
	User   id.UserID // "" in a summary
	Notify bool
	// Thread is "main" or the event ID of the thread's root.
	Thread    string
	Highlight bool
	// Actions are the matched rule's actions as the spec writes them.
	Actions json.RawMessage
}

// sameOutcome: the actions say whether to notify and highlight, so two
// outcomes with equal actions are one.
func sameOutcome(a, b Notification) bool {
	return a.Notify == b.Notify && (!a.Notify || bytes.Equal(a.Actions, b.Actions))
}

// SetPushRules turns push rule evaluation on. Call it before serving.
func (s *Service) SetPushRules(p PushRules) { s.push = p }

// JoinedMembersTx is what a Tx offers for push evaluation: the room's
// joined members and their display names as the transaction sees them
// (events appended earlier in the same batch included).
type JoinedMembersTx interface {
	JoinedMembers() (map[id.UserID]string, error)
}

// contextTx is a Tx that knows its request's context.
type contextTx interface{ Context() context.Context }

func txContext(tx Tx) context.Context {
	if c, ok := tx.(contextTx); ok {
		return c.Context()
	}
	return context.Background()
}

// roomMembers caches each room's joined members (user -> display name),
// tagged with the event that was the room's head when they were true. A job
// may use an entry only while the room's head is still that event: the
// room is locked, and every append to it goes through a job, which moves
// the tag to the new event (applying a member event's change). A batch
// that fails leaves the tag on an event that never committed, so the next
// job finds the head different and reads the members again.
type roomMembers struct {
	mu sync.Mutex
	m  map[id.RoomID]*memberSet
}

type memberSet struct {
	head    id.EventID
	members map[id.UserID]string // joined: display name ("" if none)
	// warmed is set once the members' compiled rules were loaded; member
	// sets with the same members share it, so warmPush runs once per
	// change of members, not once per send.
	warmed *atomic.Bool
}

const maxCachedMemberSets = 10_000

func (c *roomMembers) get(roomID id.RoomID) *memberSet {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.m[roomID]
}

func (c *roomMembers) put(roomID id.RoomID, ms *memberSet) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil || len(c.m) >= maxCachedMemberSets {
		c.m = map[id.RoomID]*memberSet{}
	}
	c.m[roomID] = ms
}

func (c *roomMembers) forget(roomID id.RoomID) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.m, roomID)
}

// members returns the room's joined members as of its current head,
// reading them through tx when the cache cannot say.
func (s *Service) members(tx Tx) (*memberSet, error) {
	prev, _, err := tx.Head()
	if err != nil {
		return nil, err
	}
	if len(prev) == 0 {
		return &memberSet{members: map[id.UserID]string{}, warmed: new(atomic.Bool)}, nil // a new room
	}
	if len(prev) == 1 {
		if ms := s.memberCache.get(tx.RoomID()); ms != nil && ms.head == prev[0] {
			return ms, nil
		}
	}
	jm, ok := tx.(JoinedMembersTx)
	if !ok {
		return nil, nil
	}
	members, err := jm.JoinedMembers()
	if err != nil {
		return nil, fmt.Errorf("reading members for push rules: %w", err)
	}
	var head id.EventID
	if len(prev) == 1 {
		head = prev[0]
	}
	return &memberSet{head: head, members: members, warmed: new(atomic.Bool)}, nil
}

// warmPush loads, before a job, the compiled rules of the room's members
// as last known, so the job itself reads nothing.
func (s *Service) warmPush(ctx context.Context, roomID id.RoomID) {
	if s.push == nil {
		return
	}
	ms := s.memberCache.get(roomID)
	if ms == nil || ms.warmed.Load() {
		return
	}
	users := make([]id.UserID, 0, len(ms.members))
	for u := range ms.members {
		if s.isLocal(u) {
			users = append(users, u)
		}
	}
	if err := s.push.Warm(ctx, users); err != nil {
		s.log.Warn("loading push rules before sending", "room", roomID, "err", err)
		return
	}
	ms.warmed.Store(true)
}

func (s *Service) isLocal(u id.UserID) bool {
	return strings.HasSuffix(string(u), ":"+s.cfg.Signer.ServerName)
}

// pushFor evaluates the push rules of the room's local members (the
// sender excepted) for the authorised event p, about to be appended, and
// returns the outcome with the member set as it will be after p.
func (s *Service) pushFor(tx Tx, p *pdu.PDU, eventID id.EventID) (*PushOutcome, *memberSet, error) {
	if s.push == nil {
		return nil, nil, nil
	}
	ms, err := s.members(tx)
	if err != nil || ms == nil {
		return nil, nil, err
	}
	var members []id.UserID
	for u := range ms.members {
		if u != p.Sender && s.isLocal(u) {
			members = append(members, u)
		}
	}
	isMember := p.Type == "m.room.member" && p.StateKey != nil
	membership := ""
	var invitee id.UserID
	if isMember {
		membership = gjson.GetBytes(p.Content, "membership").Str
		// The invitee is no member yet, but .m.rule.invite_for_me is for
		// them.
		u := id.UserID(*p.StateKey)
		if _, joined := ms.members[u]; membership == "invite" && !joined && u != p.Sender && s.isLocal(u) {
			invitee = u
		}
	}
	var out *PushOutcome
	if len(members) > 0 || invitee != "" {
		if out, err = s.evaluate(tx, p, eventID, ms, members, invitee); err != nil {
			return nil, nil, err
		}
	}
	next := &memberSet{head: eventID, members: ms.members, warmed: ms.warmed}
	if isMember {
		next.members, next.warmed = maps.Clone(ms.members), new(atomic.Bool)
		if membership == "join" {
			next.members[id.UserID(*p.StateKey)] = gjson.GetBytes(p.Content, "displayname").Str
		} else {
			delete(next.members, id.UserID(*p.StateKey))
		}
	}
	return out, next, nil
}

func (s *Service) evaluate(tx Tx, p *pdu.PDU, eventID id.EventID, ms *memberSet, members []id.UserID, invitee id.UserID) (*PushOutcome, error) {
	users := members
	if invitee != "" {
		users = append(slices.Clip(members), invitee)
	}
	evals, err := s.push.Evaluators(txContext(tx), users)
	if err != nil {
		return nil, fmt.Errorf("loading push rules: %w", err)
	}
	ev, err := push.NewEvent(clientEventJSON(p, tx.RoomID(), eventID))
	if err != nil {
		return nil, fmt.Errorf("reading event for push rules: %w", err)
	}
	pl, err := s.powerLevels(tx)
	if err != nil {
		return nil, err
	}
	rs := push.RoomState{MemberCount: len(ms.members), SenderPower: int64(pl.GetUserLevel(p.Sender)), NotificationLevels: map[string]int64{}}
	if pl.Notifications != nil && pl.Notifications.RoomPtr != nil {
		rs.NotificationLevels["room"] = int64(*pl.Notifications.RoomPtr)
	}
	thread, err := threadOf(tx, p.Content)
	if err != nil {
		return nil, err
	}
	outcome := func(i int) Notification {
		u := users[i]
		n := Notification{User: u, Thread: thread}
		if e := evals[i]; e != nil {
			o := e.Evaluate(ev, push.Member{UserID: u, DisplayName: ms.members[u]}, rs)
			n.Notify, n.Highlight, n.Actions = o.Notify, o.Highlight, o.Actions
		}
		if !n.Notify {
			n.Highlight, n.Actions = false, json.RawMessage("[]")
		}
		return n
	}
	// The members' most common outcome becomes the summary. Members
	// mostly share one, so counting the distinct outcomes is a short scan.
	results := make([]Notification, len(members))
	type group struct {
		n     Notification
		count int
	}
	var groups []group
	best := -1
	for i := range members {
		results[i] = outcome(i)
		g := slices.IndexFunc(groups, func(g group) bool { return sameOutcome(g.n, results[i]) })
		if g < 0 {
			if len(groups) == maxOutcomeGroups {
				// Rare outcomes are counted in the last slot; whoever
				// differs from the summary still gets an exception.
				g = len(groups) - 1
			} else {
				groups = append(groups, group{n: results[i]})
				g = len(groups) - 1
			}
		}
		groups[g].count++
		if best < 0 || groups[g].count > groups[best].count {
			best = g
		}
	}
	out := &PushOutcome{}
	if best >= 0 && groups[best].n.Notify {
		sum := groups[best].n
		sum.User = ""
		out.Summary = &sum
	}
	for _, n := range results {
		if best >= 0 && sameOutcome(n, groups[best].n) {
			continue
		}
		out.Exceptions = append(out.Exceptions, n)
	}
	if invitee != "" {
		if n := outcome(len(users) - 1); n.Notify {
			out.Exceptions = append(out.Exceptions, n)
		}
	}
	if out.Summary == nil && len(out.Exceptions) == 0 {
		return nil, nil
	}
	return out, nil
}

// clientEventJSON is the event as push rules see it: the client format's
// fields a rule can name.
func clientEventJSON(p *pdu.PDU, roomID id.RoomID, eventID id.EventID) []byte {
	ce := struct {
		Type     string          `json:"type"`
		Content  json.RawMessage `json:"content"`
		Sender   id.UserID       `json:"sender"`
		StateKey *string         `json:"state_key,omitempty"`
		RoomID   id.RoomID       `json:"room_id"`
		EventID  id.EventID      `json:"event_id"`
		TS       int64           `json:"origin_server_ts"`
	}{p.Type, json.RawMessage(p.Content), p.Sender, p.StateKey, roomID, eventID, p.OriginServerTS}
	raw, _ := json.Marshal(ce) // the content was checked as JSON before
	return raw
}

// maxOutcomeGroups bounds the distinct outcomes counted per event.
const maxOutcomeGroups = 8

// maxThreadHops is how far a relation chain is followed to find a thread
// (the spec recommends 3), so a reaction to a reply in a thread counts in
// that thread.
const maxThreadHops = 3

// threadOf is "main", or the root of the thread the event belongs to.
func threadOf(tx Tx, content []byte) (string, error) {
	for range maxThreadHops {
		rel := gjson.GetBytes(content, `m\.relates_to`)
		parent := rel.Get("event_id").Str
		if parent == "" {
			return "main", nil
		}
		if rel.Get("rel_type").Str == "m.thread" {
			return parent, nil
		}
		evs, err := tx.Events([]id.EventID{id.EventID(parent)})
		if err != nil {
			return "", fmt.Errorf("reading related event: %w", err)
		}
		pe := evs[id.EventID(parent)]
		if pe == nil {
			return "main", nil
		}
		content = pe.Content
	}
	return "main", nil
}
