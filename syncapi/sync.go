// Package syncapi is GET /sync: the notifier that wakes waiting requests,
// sync tokens, sync filters, and the readers that turn stream positions
// into a response. It reads storage through the Store it declares and
// formats events with the room domain.
package syncapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/tidwall/gjson"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/federation/pdu"
	"maunium.net/go/mautrix/id"

	"github.com/weftchat/weft/room"
)

// Config is what the sync service needs from the wiring.
type Config struct {
	// LoadFilter returns the user's stored filter with that ID.
	LoadFilter func(ctx context.Context, user id.UserID, filterID string) (json.RawMessage, error)
	// ValidateFilter checks and compacts an inline filter.
	ValidateFilter func(raw []byte) (json.RawMessage, error)
	// Presence, when set, is told of every /sync's set_presence; the
	// user counts as syncing until end is called, when the request
	// answers. end is called even when err is not nil.
	Presence func(ctx context.Context, user id.UserID, state string) (end func(), err error)
	// KeyCounts, when set, gives the device's unclaimed one-time key
	// counts and its unused fallback key algorithms, for every response.
	// The map may be put in responses as it is: neither side changes it.
	KeyCounts func(ctx context.Context, user id.UserID, device id.DeviceID) (counts map[id.KeyAlgorithm]int, unusedFallback []id.KeyAlgorithm, err error)
	// ServerName tells local users from remote ones (to-device messages
	// for remote users are dropped until federation); empty: all local.
	ServerName string
	// ToDeviceBacklog bounds each device's waiting to-device messages
	// (0: DefaultToDeviceBacklog).
	ToDeviceBacklog int
}

// Service answers /sync.
type Service struct {
	cfg    Config
	store  Store
	rooms  *room.Service
	n      *Notifier
	typing *typing
	log    *slog.Logger
	now    func() time.Time
	// stopping is closed at shutdown: long-polls answer at once so the
	// HTTP server can drain.
	stopping chan struct{}
	cache    *caches
	// active: which devices are syncing (activity.go).
	active *activity
	// unreadBatches joins concurrent unread count loads (unread.go).
	unreadBatches *unreadBatcher
	workers       *workers
	// shared: responses a user's devices share (shared.go), and how many
	// answers were taken from another device's build.
	shared        sharedResponses
	sharedAnswers atomic.Uint64
	// acks and toDeviceDropped: todevice.go.
	acks            toDeviceAcks
	toDeviceDropped atomic.Uint64
}

// New builds the sync service around a notifier fed by storage.
func New(cfg Config, store Store, rooms *room.Service, n *Notifier, log *slog.Logger) *Service {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Service{cfg: cfg, store: store, rooms: rooms, n: n, typing: newTyping(n), log: log, now: time.Now, stopping: make(chan struct{}), cache: newCaches(),
		acks: toDeviceAcks{upTo: map[deviceKey]int64{}}, active: newActivity(time.Now), unreadBatches: newUnreadBatcher(),
		workers: newWorkers(defaultWorkers()), shared: sharedResponses{m: map[sharedKey]*sharedEntry{}}}
}

// Stop answers every waiting and future long-poll at once (shutdown).
func (s *Service) Stop() {
	select {
	case <-s.stopping:
	default:
		close(s.stopping)
	}
	s.n.WakeAll()
}

// Notifier is the service's notifier.
func (s *Service) Notifier() *Notifier { return s.n }

// Request is one GET /sync.
type Request struct {
	User        id.UserID
	Device      id.DeviceID
	Since       string
	Timeout     time.Duration
	FullState   bool
	SetPresence string
	Filter      string
}

// maxTimeout caps a long-poll.
const maxTimeout = 5 * time.Minute

// Sync answers one request: at once if there is something newer than the
// token (or no token), else when something for this user arrives or the
// timeout passes. It holds the calling goroutine while it waits; Start
// does not.
func (s *Service) Sync(ctx context.Context, req Request) (*Response, error) {
	resp, p, err := s.Start(ctx, req)
	if p == nil {
		return resp, err
	}
	return p.Wait(ctx)
}

// Start answers a request at once when it can: no token, full_state,
// something newer than the token, or no time left to wait. Otherwise it
// returns a Pending, registered with the notifier, which the caller waits
// on or hands a callback to.
func (s *Service) Start(ctx context.Context, req Request) (*Response, *Pending, error) {
	endActive := s.active.begin(req.User, req.Device)
	resp, p, err := s.start(ctx, req, endActive)
	if p == nil {
		endActive(err == nil)
	}
	return resp, p, err
}

// start is Start; a Pending it returns calls endActive when it ends.
func (s *Service) start(ctx context.Context, req Request, endActive func(answered bool)) (*Response, *Pending, error) {
	f, err := s.filter(ctx, req)
	if err != nil {
		return nil, nil, err
	}
	var since *Token
	if req.Since != "" {
		t, err := ParseToken(req.Since)
		if err != nil {
			return nil, nil, err
		}
		cur := s.n.Current()
		if t.Pos > cur.Pos {
			return nil, nil, mautrix.MInvalidParam.WithMessage("Sync token is from the future: it was not issued by this server")
		}
		if t.Typing > cur.Typing {
			t.Typing = 0 // from before a restart: send the typing state again
		}
		since = &t
		// The device has everything up to its token: what was waiting
		// for it there is delivered.
		if err := s.ackToDevice(ctx, req.User, req.Device, t.Pos); err != nil {
			return nil, nil, err
		}
	}
	switch req.SetPresence {
	case "", "online", "offline", "unavailable":
	default:
		return nil, nil, mautrix.MInvalidParam.WithMessage("set_presence must be online, offline or unavailable")
	}
	endPresence := func() {}
	if s.cfg.Presence != nil {
		state := req.SetPresence
		if state == "" {
			state = "online"
		}
		end, err := s.cfg.Presence(ctx, req.User, state)
		if end != nil {
			endPresence = end
		}
		if err != nil {
			endPresence()
			return nil, nil, fmt.Errorf("updating presence: %w", err)
		}
	}
	if since == nil || req.FullState {
		defer endPresence()
		resp, err := s.read(ctx, req, f, since, s.n.Current())
		if err == nil {
			err = s.complete(ctx, req, resp)
		}
		return resp, nil, err
	}
	p := &Pending{
		s: s, ctx: context.WithoutCancel(ctx), req: req, f: f, since: *since, seen: *since,
		deadline: time.Now().Add(min(req.Timeout, maxTimeout)), endPresence: endPresence, endActive: endActive,
	}
	for {
		// Nothing else holds p yet; a wake-up of a closed registration
		// is stale.
		p.woken = false
		changed, err := p.listen()
		if err != nil {
			endPresence()
			return nil, nil, err
		}
		if !changed && !p.expired() {
			return nil, p, nil
		}
		resp, again, err := p.answer(!changed)
		if !again {
			endPresence()
			return resp, nil, err
		}
	}
}

// joinedRooms lists the rooms a waiting request listens on. The list only
// changes with the user's member events, which the notifier tracks, so it
// is cached under the position of the last one: the key is taken before
// the read, and a read can only be newer than its key, never older.
func (s *Service) joinedRooms(ctx context.Context, user id.UserID) ([]id.RoomID, error) {
	key := memberKey{user, s.n.userLastChange(user, KindEvents)}
	// Loads are shared, so one client going away must not fail the others'.
	ctx = context.WithoutCancel(ctx)
	return s.cache.joined.get(key, func() ([]id.RoomID, error) { return s.rooms.JoinedRooms(ctx, user) })
}

// filterKey names a parsed filter in the cache: stored filters never
// change, and an inline filter is its own text.
type filterKey struct {
	user id.UserID // for a stored filter; "" inline
	text string
}

// filter loads the request's filter (inline JSON or a stored filter ID),
// parsed once and then cached: clients send the same one on every /sync.
func (s *Service) filter(ctx context.Context, req Request) (*filter, error) {
	key := filterKey{text: req.Filter}
	if !strings.HasPrefix(strings.TrimSpace(req.Filter), "{") {
		key.user = req.User
	}
	return s.cache.filters.get(key, func() (*filter, error) { return s.parseFilter(context.WithoutCancel(ctx), req) })
}

func (s *Service) parseFilter(ctx context.Context, req Request) (*filter, error) {
	if req.Filter == "" {
		return newFilter(nil)
	}
	var raw json.RawMessage
	var err error
	if strings.HasPrefix(strings.TrimSpace(req.Filter), "{") {
		if raw, err = s.cfg.ValidateFilter([]byte(req.Filter)); err != nil {
			return nil, err
		}
	} else if raw, err = s.cfg.LoadFilter(ctx, req.User, req.Filter); err != nil {
		var re mautrix.RespError
		if errors.As(err, &re) && re.ErrCode == mautrix.MNotFound.ErrCode {
			return nil, mautrix.MInvalidParam.WithMessage("Unknown filter ID")
		}
		return nil, err
	}
	var mf mautrix.Filter
	if err := json.Unmarshal(raw, &mf); err != nil {
		return nil, mautrix.MBadJSON.WithMessage("filter: " + err.Error())
	}
	return newFilter(&mf)
}

// read builds the response for (since, to]. Whatever it reads from the
// database comes from one snapshot, opened only if the caches and the
// notifier cannot answer.
func (s *Service) read(ctx context.Context, req Request, f *filter, since *Token, to Token) (*Response, error) {
	resp, _, err := s.readFor(ctx, req, f, since, to)
	return resp, err
}

// readFor is read, also reporting whether the response holds something
// only the requesting device gets (its to-device messages, the
// transaction IDs of its own sends).
func (s *Service) readFor(ctx context.Context, req Request, f *filter, since *Token, to Token) (resp *Response, deviceOnly bool, err error) {
	resp = &Response{NextBatch: to.String()}
	// Reads fill caches other requests wait on: a client going away must
	// not fail them, so they do not stop with the request.
	rd := &reader{s: s, ctx: context.WithoutCancel(ctx), to: to.Pos}
	defer rd.close()
	b := &builder{s: s, rd: rd, req: req, f: f, since: since, to: to, resp: resp}
	if err := b.build(); err != nil {
		return nil, false, err
	}
	return resp, b.deviceOnly, nil
}

// builder assembles one response.
type builder struct {
	s     *Service
	rd    *reader
	req   Request
	f     *filter
	since *Token
	to    Token
	resp  *Response
	// accountData is the user's account data changed in the window.
	accountData []AccountData
	// deviceOnly: the response holds something for the requesting
	// device only, so other devices of the user cannot share it.
	deviceOnly bool
	// ignored are the users the user ignores: their events other than
	// state, and their invites, are left out.
	ignored map[id.UserID]bool
}

func (b *builder) sincePos() int64 {
	if b.since == nil {
		return 0
	}
	return b.since.Pos
}

func (b *builder) build() error {
	// First: it may lower b.to.
	if err := b.toDevice(); err != nil {
		return err
	}
	user := b.req.User
	ignored, err := b.rd.Ignored(user)
	if err != nil {
		return fmt.Errorf("reading ignored users: %w", err)
	}
	b.ignored = ignored
	now, err := b.rd.MemberEvents(user, b.to.Pos)
	if err != nil {
		return fmt.Errorf("reading memberships: %w", err)
	}
	before, err := b.rd.membershipsBefore(user, b.since, now)
	if err != nil {
		return err
	}
	if b.accountData, err = b.rd.AccountData(user, b.sincePos(), b.to.Pos); err != nil {
		return err
	}
	if err := b.prefetch(now, before); err != nil {
		return err
	}
	plans, err := b.planJoined(now, before)
	if err != nil {
		return err
	}
	prefetched := 0 // plans.order[:prefetched] have had their reads made
	rooms := &Rooms{}
	// quiet are the joined rooms with nothing to show but perhaps their
	// unread counts.
	var quiet []id.RoomID
	for _, m := range now {
		if !b.f.roomAllowed(m.RoomID) {
			continue
		}
		changed := b.since == nil || m.StreamPos > b.since.Pos
		switch membershipOf(m) {
		case "join":
			// A room joined within the window is new to this device: it
			// gets the room as an initial sync would.
			p := plans.byRoom[m.RoomID]
			if p.index >= prefetched {
				// The next rooms' reads, together (a bounded number of
				// rooms at a time, to bound what is held at once).
				end := min(p.index+prefetchRooms, len(plans.order))
				if err := b.prefetchPlans(plans.order[p.index:end]); err != nil {
					return err
				}
				prefetched = end
			}
			jr, err := b.joinedRoom(p)
			if err != nil {
				return fmt.Errorf("room %s: %w", m.RoomID, err)
			}
			if jr != nil {
				rooms.join(m.RoomID, jr)
			} else {
				quiet = append(quiet, m.RoomID)
			}
		case "invite":
			// Invites from ignored users are not shown (spec, "Ignoring
			// Users").
			if changed && !b.ignored[m.PDU.Sender] {
				state, err := b.strippedState(m)
				if err != nil {
					return err
				}
				rooms.invite(m.RoomID, &InvitedRoom{InviteState: EventList{Events: state}})
			}
		case "knock":
			if changed {
				state, err := b.strippedState(m)
				if err != nil {
					return err
				}
				rooms.knock(m.RoomID, &KnockedRoom{KnockState: EventList{Events: state}})
			}
		case "leave", "ban":
			// An initial or full_state sync shows left rooms only when the
			// filter asks (include_leave). An incremental one shows every
			// room whose leave or ban is within the window, whatever the
			// membership at the token: a membership that began and ended
			// inside the window (joined then left, a refused knock, a
			// withdrawn invite) was seen by the client that made the
			// request, and this is how it learns the outcome.
			show := b.since != nil && changed || (b.since == nil || b.req.FullState) && b.f.includeLeave()
			if !show {
				continue
			}
			lr, err := b.leftRoom(m)
			if err != nil {
				return fmt.Errorf("room %s: %w", m.RoomID, err)
			}
			rooms.leave(m.RoomID, lr)
		}
	}
	if err := b.unreadCounts(rooms, quiet); err != nil {
		return err
	}
	if !rooms.empty() {
		b.resp.Rooms = rooms
	}
	global, err := b.globalAccountData()
	if err != nil {
		return err
	}
	if len(global) > 0 {
		b.resp.AccountData = &EventList{Events: global}
	}
	if b.since != nil {
		if b.resp.DeviceLists, err = b.s.deviceLists(b.rd, user, b.since.Pos, b.to.Pos, b.page(), now, before); err != nil {
			return fmt.Errorf("device lists: %w", err)
		}
	}
	return b.presence()
}

// membershipsBefore is the user's membership in each room at since, read
// only when a membership changed after it (now holds a member event newer
// than since); otherwise empty.
func (r *reader) membershipsBefore(user id.UserID, since *Token, now []*room.Event) (map[id.RoomID]string, error) {
	before := map[id.RoomID]string{}
	if since != nil && slices.ContainsFunc(now, func(e *room.Event) bool { return e.StreamPos > since.Pos }) {
		old, err := r.MemberEvents(user, since.Pos)
		if err != nil {
			return nil, fmt.Errorf("reading memberships: %w", err)
		}
		for _, e := range old {
			before[e.RoomID] = membershipOf(e)
		}
	}
	return before, nil
}

// page is how many events a timeline read asks for at once: at least 50,
// so that a filtered timeline, or a window's device-list scan
// (devicelists.go), takes few reads.
func (b *builder) page() int { return max(b.f.timelineLimit()+1, 50) }

// pageFrom is the page of a timeline read in (from, ...]. A room's whole
// history (from 0: an initial sync, a room new to the device), read with a
// filter that keeps every event for a user who ignores nobody, needs just
// one event more than the limit (the one that says the timeline is
// limited), nearly always from its first page: at 50, an initial sync in
// 100 rooms read five times the events it sends.
func (b *builder) pageFrom(from int64) int {
	if from == 0 && b.f.timelineKeepsAll() && len(b.ignored) == 0 {
		return b.f.timelineLimit() + 1
	}
	return b.page()
}

// roomSince is where a joined room's part of the response starts: the
// token, or 0 for a room joined within the window (new to the device).
func (b *builder) roomSince(m *room.Event, before map[id.RoomID]string) int64 {
	if b.since != nil && m.StreamPos > b.since.Pos && before[m.RoomID] != "join" {
		return 0
	}
	return b.sincePos()
}

// prefetch reads what many joined rooms need in a few queries instead of
// a few per room: their first timeline page and their receipts.
func (b *builder) prefetch(members []*room.Event, before map[id.RoomID]string) error {
	var reqs []TimelineReq
	windows := map[int64][]id.RoomID{}
	for _, m := range members {
		if membershipOf(m) != "join" || !b.f.roomAllowed(m.RoomID) {
			continue
		}
		since := b.roomSince(m, before)
		reqs = append(reqs, TimelineReq{Room: m.RoomID, From: since, To: b.to.Pos, Limit: b.pageFrom(since)})
		windows[since] = append(windows[since], m.RoomID)
	}
	if err := b.rd.prefetchTimelines(reqs); err != nil {
		return err
	}
	if b.f.ephemeralAllowed("m.receipt", "") {
		for since, rooms := range windows {
			if err := b.rd.prefetchReceipts(b.req.User, rooms, since, b.to.Pos); err != nil {
				return err
			}
		}
	}
	return nil
}

func membershipOf(e *room.Event) string {
	return gjson.GetBytes(e.PDU.Content, "membership").Str
}

func accountDataEvent(a AccountData) json.RawMessage {
	ev, _ := json.Marshal(struct {
		Type    string          `json:"type"`
		Content json.RawMessage `json:"content"`
	}{a.Type, a.Content})
	return ev
}

// visibility is the user's history-visibility checker for member's room,
// read from this response's snapshot. member is the user's newest member
// event as of the response.
func (b *builder) visibility(member *room.Event) (*room.Visibility, error) {
	snap := func(s int64) (string, string, error) { return b.rd.SnapshotVisibility(s, b.req.User) }
	joined := membershipOf(member) == "join"
	var until int64
	if !joined {
		_, before, err := snap(member.StateBefore)
		if err != nil {
			return nil, fmt.Errorf("history visibility: %w", err)
		}
		if before == "join" {
			until = member.StreamPos
		}
	}
	return room.NewVisibility(b.req.User, joined, until, snap), nil
}

// maxTimelinePages bounds how far back a filtered timeline looks for
// matching events (pages of the filter's limit, at least 50 events).
const maxTimelinePages = 10

// timeline reads the newest events of the room in (from, to] that pass
// the timeline filter and history visibility, oldest first, and whether
// older matching ones were left out (or may have been: when the pages run
// out before reaching from, the timeline is limited, so that the client
// pages back with prev_batch instead of silently missing events).
func (b *builder) timeline(member *room.Event, from, to int64) (tl []*room.Event, limited, complete bool, err error) {
	roomID := member.RoomID
	joined := membershipOf(member) == "join"
	vis, err := b.visibility(member)
	if err != nil {
		return nil, false, false, err
	}
	limit := b.f.timelineLimit()
	page := b.pageFrom(from)
	var out []*room.Event
	skipped := false // an event in the range was left out before the limit
	upper := to
	for range maxTimelinePages {
		evs, err := b.rd.Timeline(roomID, from, upper, page)
		if err != nil {
			return nil, false, false, fmt.Errorf("reading timeline: %w", err)
		}
		if len(evs) == 0 {
			slices.Reverse(out)
			return out, false, !skipped, nil
		}
		// Events at or after the user's own join are visible to them;
		// older ones follow the room's history visibility.
		hidden := map[id.EventID]bool{}
		for _, e := range evs {
			if joined && e.StreamPos >= member.StreamPos {
				continue
			}
			// The user's own membership changes are about them: they
			// always see them, or a refused knock or a kick would leave
			// the room without saying why.
			if p := e.PDU; p.Type == "m.room.member" && p.StateKey != nil && *p.StateKey == string(b.req.User) {
				continue
			}
			ok, err := vis.Allowed(e)
			if err != nil {
				return nil, false, false, fmt.Errorf("history visibility: %w", err)
			}
			hidden[e.ID] = !ok
		}
		for _, e := range evs {
			if hidden[e.ID] || !b.f.timelineMatch(e) || e.PDU.StateKey == nil && b.ignored[e.PDU.Sender] {
				skipped = true
				continue
			}
			if len(out) == limit {
				slices.Reverse(out)
				return out, true, !skipped, nil
			}
			out = append(out, e)
		}
		if len(evs) < page {
			slices.Reverse(out) // reached from: nothing older was left out
			return out, false, !skipped, nil
		}
		upper = evs[len(evs)-1].StreamPos - 1
	}
	slices.Reverse(out)
	return out, true, false, nil
}

// roomPlan is a joined room's timeline and what its part of the response
// reads, worked out for every room before any room's state is read, so
// that the states of many rooms are read together (prefetchPlans).
type roomPlan struct {
	// index is the plan's place in joinedPlans.order.
	index  int
	member *room.Event
	// roomSince is 0 for a room new to the device.
	roomSince int64
	// full: the state part is the whole state before the timeline, not
	// a delta.
	full              bool
	tl                []*room.Event
	limited, complete bool
	// stateAt is the position of the state before the timeline.
	stateAt int64
	// members are the users whose member events lazy loading sends
	// (nil: lazy loading is off).
	members *[]id.UserID
}

// joinedPlans are the plans of a response's joined rooms, in the order
// the build takes them.
type joinedPlans struct {
	byRoom map[id.RoomID]*roomPlan
	order  []*roomPlan
}

// prefetchRooms is how many rooms' reads are made together
// (prefetchPlans): enough for a round trip to matter little, few enough
// that an account in thousands of large rooms does not hold all their
// state events at once.
const prefetchRooms = 100

// maxPrefetchEvents bounds the state events read in one prefetch; those
// beyond are read room by room.
const maxPrefetchEvents = 20_000

// planJoined plans the joined rooms of memberships now: their timelines,
// and so which states their parts of the response read.
func (b *builder) planJoined(now []*room.Event, before map[id.RoomID]string) (*joinedPlans, error) {
	plans := &joinedPlans{byRoom: map[id.RoomID]*roomPlan{}}
	for _, m := range now {
		if membershipOf(m) != "join" || !b.f.roomAllowed(m.RoomID) {
			continue
		}
		roomSince := b.roomSince(m, before)
		p := &roomPlan{member: m, roomSince: roomSince, full: roomSince == 0 || b.req.FullState}
		var err error
		if p.tl, p.limited, p.complete, err = b.timeline(m, roomSince, b.to.Pos); err != nil {
			return nil, fmt.Errorf("room %s: %w", m.RoomID, err)
		}
		p.stateAt = b.to.Pos
		if len(p.tl) > 0 {
			p.stateAt = p.tl[0].StreamPos - 1
		}
		p.members = b.lazyMembers(p.tl)
		p.index = len(plans.order)
		plans.byRoom[m.RoomID] = p
		plans.order = append(plans.order, p)
	}
	return plans, nil
}

// summaryAt is where the room summary is read: the state at the
// response's end is the state before the timeline when the timeline holds
// every event since and none is a state event, and then that one is
// reused instead of resolving another snapshot.
func (p *roomPlan) summaryAt(to int64) int64 {
	if p.complete && !slices.ContainsFunc(p.tl, func(e *room.Event) bool { return e.PDU.StateKey != nil }) {
		return p.stateAt
	}
	return to
}

// prefetchPlans reads, in a few queries for all the plans' rooms, the
// states and state events that joinedRoom reads room by room (up to
// maxPrefetchEvents of them), and the device's transaction IDs of the
// timelines' events. It only warms the caches
// joinedRoom reads through: whatever it misses, joinedRoom reads itself.
func (b *builder) prefetchPlans(plans []*roomPlan) error {
	// reads are the state positions each room reads, with which entries
	// it needs of them.
	type read struct {
		k       stateKey
		since   int64 // > 0: only entries that differ from the state here
		members *[]id.UserID
		// membersOnly: only member events (the summary, lazy members).
		membersOnly bool
	}
	var reads []read
	var own []id.EventID
	for _, p := range plans {
		rid := p.member.RoomID
		summary := p.full || hasMember(p.tl)
		switch {
		case p.full:
			reads = append(reads, read{k: stateKey{rid, p.stateAt}, members: p.members})
		case p.limited:
			reads = append(reads, read{k: stateKey{rid, p.stateAt}, since: p.roomSince})
		}
		if !p.full && p.members != nil && len(p.tl) > 0 {
			reads = append(reads, read{k: stateKey{rid, p.stateAt}, members: p.members, membersOnly: true})
		}
		if summary {
			reads = append(reads, read{k: stateKey{rid, p.summaryAt(b.to.Pos)}, membersOnly: true})
		}
		for _, e := range p.tl {
			if e.PDU.Sender == b.req.User {
				own = append(own, e.ID)
			}
		}
	}
	if len(own) > 0 && b.req.Device != "" {
		if err := b.rd.prefetchTxnIDs(b.req.User, b.req.Device, own); err != nil {
			return err
		}
	}
	if len(reads) < 2 {
		return nil
	}
	keys := make([]stateKey, 0, len(reads)+len(plans))
	for _, rd := range reads {
		keys = append(keys, rd.k)
		if rd.since > 0 {
			keys = append(keys, stateKey{rd.k.Room, rd.since})
		}
	}
	if err := b.rd.prefetchStates(keys); err != nil {
		return fmt.Errorf("reading state: %w", err)
	}
	var ids []id.EventID
	seen := map[id.EventID]bool{}
	for _, rd := range reads {
		state, ok := b.s.cache.state.peek(rd.k)
		if !ok {
			continue
		}
		var base map[pdu.StateKey]id.EventID
		if rd.since > 0 {
			if base, ok = b.s.cache.state.peek(stateKey{rd.k.Room, rd.since}); !ok {
				continue
			}
		}
		for k, eid := range state {
			if seen[eid] || rd.membersOnly && k.Type != "m.room.member" || !keep(k, rd.members) || base != nil && base[k] == eid {
				continue
			}
			seen[eid] = true
			ids = append(ids, eid)
		}
	}
	if len(ids) > maxPrefetchEvents {
		ids = ids[:maxPrefetchEvents]
	}
	if err := b.rd.prefetchEvents(ids); err != nil {
		return fmt.Errorf("reading state: %w", err)
	}
	return nil
}

// joinedRoom builds one room of rooms.join, as planned; nil when an
// incremental sync has nothing for it.
func (b *builder) joinedRoom(p *roomPlan) (*JoinedRoom, error) {
	roomID, roomSince, full := p.member.RoomID, p.roomSince, p.full
	tl, limited, stateAt, members := p.tl, p.limited, p.stateAt, p.members
	var err error
	var state []*room.Event
	switch {
	case full:
		state, err = b.rd.StateAt(roomID, stateAt, members)
	case limited:
		// A gap: the client missed events, so it gets the state that
		// changed between its token and the timeline. Every member event
		// in the gap, lazy loading or not: the spec requires them so that
		// joins, leaves and profile changes in the gap are not lost.
		state, err = b.rd.StateDelta(roomID, roomSince, stateAt, nil)
	}
	if err == nil && !full && members != nil && len(tl) > 0 {
		// Lazy loading: the senders' member events as of the timeline's
		// start. Without tracking what each device already has they may
		// repeat (as with include_redundant_members); clients accept that.
		var ms []*room.Event
		ms, err = b.rd.StateAt(roomID, stateAt, members)
		for _, e := range ms {
			if e.PDU.Type == "m.room.member" && !slices.ContainsFunc(state, func(x *room.Event) bool { return x.ID == e.ID }) {
				state = append(state, e)
			}
		}
	}
	if err != nil {
		return nil, fmt.Errorf("reading state: %w", err)
	}
	tlEvents, err := b.formatTimeline(tl)
	if err != nil {
		return nil, err
	}
	jr := &JoinedRoom{
		State:               EventList{Events: b.formatAll(b.f.stateFilter(state))},
		Timeline:            Timeline{Events: tlEvents, Limited: limited, PrevBatch: room.Token(stateAt).String()},
		UnreadNotifications: &Unread{},
	}
	if b.f.unreadThreads() {
		jr.UnreadThreadNotifications = map[id.EventID]Unread{}
	}
	if full || hasMember(tl) || hasMember(state) {
		sum, err := b.rd.Summary(roomID, p.summaryAt(b.to.Pos), b.req.User)
		if err != nil {
			return nil, fmt.Errorf("room summary: %w", err)
		}
		jr.Summary = &RoomSummary{Heroes: sum.Heroes, Joined: &sum.Joined, Invited: &sum.Invited}
	}
	if jr.Ephemeral.Events, err = b.ephemeral(roomID, roomSince); err != nil {
		return nil, err
	}
	for _, a := range b.accountData {
		if a.RoomID == roomID && b.f.roomAccountDataAllowed(a.Type, roomID) {
			jr.AccountData.Events = append(jr.AccountData.Events, accountDataEvent(a))
		}
	}
	if roomSince != 0 && !b.req.FullState && len(tl) == 0 && !limited && len(jr.State.Events) == 0 &&
		len(jr.Ephemeral.Events) == 0 && len(jr.AccountData.Events) == 0 {
		return nil, nil
	}
	return jr, nil
}

func hasMember(evs []*room.Event) bool {
	return slices.ContainsFunc(evs, func(e *room.Event) bool { return e.PDU.Type == "m.room.member" })
}

// lazyMembers is, with lazy loading on, the users whose member events the
// state must carry: the timeline's senders and the syncing user.
func (b *builder) lazyMembers(tl []*room.Event) *[]id.UserID {
	if !b.f.lazyLoad() {
		return nil
	}
	users := []id.UserID{b.req.User}
	for _, e := range tl {
		if !slices.Contains(users, e.PDU.Sender) {
			users = append(users, e.PDU.Sender)
		}
	}
	return &users
}

// leftRoom builds one room of rooms.leave: the timeline up to the event
// that took the user out.
func (b *builder) leftRoom(member *room.Event) (*LeftRoom, error) {
	roomID := member.RoomID
	tl, limited, _, err := b.timeline(member, b.sincePos(), member.StreamPos)
	if err != nil {
		return nil, err
	}
	stateAt := member.StreamPos
	if len(tl) > 0 {
		stateAt = tl[0].StreamPos - 1
	}
	var state []*room.Event
	if b.since == nil || limited || b.req.FullState {
		if b.since == nil || b.req.FullState {
			state, err = b.rd.StateAt(roomID, stateAt, b.lazyMembers(tl))
		} else {
			// A gap: every member event in it, as for joined rooms.
			state, err = b.rd.StateDelta(roomID, b.since.Pos, stateAt, nil)
		}
		if err != nil {
			return nil, fmt.Errorf("reading state: %w", err)
		}
	}
	tlEvents, err := b.formatTimeline(tl)
	if err != nil {
		return nil, err
	}
	lr := &LeftRoom{
		State:    EventList{Events: b.formatAll(b.f.stateFilter(state))},
		Timeline: Timeline{Events: tlEvents, Limited: limited, PrevBatch: room.Token(stateAt).String()},
	}
	for _, a := range b.accountData {
		if a.RoomID == roomID && b.f.roomAccountDataAllowed(a.Type, roomID) {
			lr.AccountData.Events = append(lr.AccountData.Events, accountDataEvent(a))
		}
	}
	return lr, nil
}

// strippedStateTypes are the state events an invited or knocking user
// sees of a room (the spec's recommended set).
var strippedStateTypes = []string{"m.room.create", "m.room.join_rules", "m.room.name", "m.room.avatar",
	"m.room.canonical_alias", "m.room.encryption", "m.room.topic"}

// strippedState is the invite_state or knock_state: the room's stripped
// state at the member event, and the member event itself.
func (b *builder) strippedState(member *room.Event) ([]json.RawMessage, error) {
	state, err := b.rd.StateAt(member.RoomID, member.StreamPos, &[]id.UserID{b.req.User})
	if err != nil {
		return nil, fmt.Errorf("reading stripped state: %w", err)
	}
	var out []json.RawMessage
	for _, e := range state {
		p := e.PDU
		if p.StateKey == nil || !slices.Contains(strippedStateTypes, p.Type) && e.ID != member.ID {
			continue
		}
		if p.Type == "m.room.member" && e.ID != member.ID {
			continue
		}
		ev, err := json.Marshal(struct {
			Content  json.RawMessage `json:"content"`
			Sender   id.UserID       `json:"sender"`
			StateKey string          `json:"state_key"`
			Type     string          `json:"type"`
		}{json.RawMessage(p.Content), p.Sender, *p.StateKey, p.Type})
		if err != nil {
			return nil, err
		}
		out = append(out, ev)
	}
	return out, nil
}

// ephemeral is a joined room's typing and receipts that changed since the
// token (all current ones for a room new to the device).
func (b *builder) ephemeral(roomID id.RoomID, roomSince int64) ([]json.RawMessage, error) {
	var out []json.RawMessage
	if b.f.ephemeralAllowed("m.typing", roomID) {
		newTyping := roomSince == 0 || b.since == nil || b.s.n.typingSince(roomID, b.since.Typing)
		if users := b.s.typing.users(roomID); newTyping && (len(users) > 0 || roomSince != 0) {
			ev, _ := json.Marshal(map[string]any{"type": "m.typing", "content": map[string]any{"user_ids": users}})
			out = append(out, ev)
		}
	}
	if b.f.ephemeralAllowed("m.receipt", roomID) {
		receipts, err := b.rd.Receipts(b.req.User, []id.RoomID{roomID}, roomSince, b.to.Pos)
		if err != nil {
			return nil, err
		}
		// content: event ID -> receipt type -> user -> {ts, thread_id}
		content := map[id.EventID]map[string]map[id.UserID]map[string]any{}
		for _, r := range receipts {
			if r.Type == "m.read.private" && r.UserID != b.req.User {
				continue // private receipts are only their owner's
			}
			byType := content[r.EventID]
			if byType == nil {
				byType = map[string]map[id.UserID]map[string]any{}
				content[r.EventID] = byType
			}
			if byType[r.Type] == nil {
				byType[r.Type] = map[id.UserID]map[string]any{}
			}
			data := map[string]any{"ts": r.TS}
			if r.ThreadID != "" {
				data["thread_id"] = r.ThreadID
			}
			byType[r.Type][r.UserID] = data
		}
		if len(content) > 0 {
			ev, _ := json.Marshal(map[string]any{"type": "m.receipt", "content": content})
			out = append(out, ev)
		}
	}
	return out, nil
}

// presence fills the top-level presence section.
func (b *builder) presence() error {
	if !b.f.presenceWanted() {
		return nil
	}
	ps, err := b.rd.Presence(b.req.User, b.sincePos(), b.to.Pos)
	if err != nil {
		return err
	}
	now := b.s.now().UnixMilli()
	var evs []json.RawMessage
	for _, p := range ps {
		if !b.f.presenceAllowed(p.UserID) {
			continue
		}
		evs = append(evs, PresenceEvent(p, now))
	}
	if len(evs) > 0 {
		b.resp.Presence = &EventList{Events: evs}
	}
	return nil
}

// PresenceEvent formats a stored presence as an m.presence event.
func PresenceEvent(p Presence, now int64) json.RawMessage {
	content := map[string]any{
		"presence":         p.State,
		"last_active_ago":  max(now-p.LastActiveTS, 0),
		"currently_active": p.State == "online" && now-p.LastActiveTS < currentlyActiveWindow.Milliseconds(),
	}
	if p.StatusMsg != nil {
		content["status_msg"] = *p.StatusMsg
	}
	ev, _ := json.Marshal(map[string]any{"type": "m.presence", "sender": p.UserID, "content": content})
	return ev
}

// currentlyActiveWindow is how recent the last activity must be for
// currently_active.
const currentlyActiveWindow = 5 * time.Minute

// formatAll formats events for the client (or as PDUs, with event_format
// federation), keeping only the filter's event_fields.
func (b *builder) formatAll(evs []*room.Event) []json.RawMessage {
	return b.format(evs, nil)
}

// formatTimeline formats timeline events; the syncing device's own sends
// carry their transaction ID in unsigned, so the client can match them to
// its local echoes.
func (b *builder) formatTimeline(evs []*room.Event) ([]json.RawMessage, error) {
	var own []id.EventID
	for _, e := range evs {
		if e.PDU.Sender == b.req.User {
			own = append(own, e.ID)
		}
	}
	var txns map[id.EventID]string
	if len(own) > 0 && b.req.Device != "" {
		// Another device of the user gets these without the IDs.
		b.deviceOnly = true
		var err error
		if txns, err = b.rd.TxnIDs(b.req.User, b.req.Device, own); err != nil {
			return nil, err
		}
	}
	return b.format(evs, txns), nil
}

func (b *builder) format(evs []*room.Event, txns map[id.EventID]string) []json.RawMessage {
	out := make([]json.RawMessage, 0, len(evs))
	for _, e := range evs {
		var raw []byte
		var err error
		if b.f.federationFormat() {
			raw, err = json.Marshal(e.PDU)
		} else {
			ce := b.s.rooms.ToClient(e)
			ce.RoomID = ""
			if txn, ok := txns[e.ID]; ok {
				ce.Unsigned["transaction_id"] = room.ClientTxnID(txn)
			}
			raw, err = json.Marshal(ce)
		}
		if err != nil {
			b.s.log.Error("formatting event", "event_id", e.ID, "err", err)
			continue
		}
		out = append(out, b.f.onlyFields(raw))
	}
	return out
}
