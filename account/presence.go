package account

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"maunium.net/go/mautrix/id"
)

// Presence states.
const (
	PresenceOnline      = "online"
	PresenceUnavailable = "unavailable"
	PresenceOffline     = "offline"
)

// maxStatusMsg bounds a status message (it is copied to everyone who shares
// a room with the user).
const maxStatusMsg = 4096

// currentlyActiveWindow is how recent the last activity of an online user
// must be for currently_active; the same as /sync's.
const currentlyActiveWindow = 5 * time.Minute

// maxPresenceGranularity is how stale a stored last_active_ts or
// last_sync_ts may get before a /sync writes it again: idle long-polls do
// not write on every request. maxPresenceInterval is how often the
// presence timer runs. Both shrink with short timeouts (tests).
const (
	maxPresenceGranularity = time.Minute
	maxPresenceInterval    = 15 * time.Second
)

// expireBatch is how many users one presence expiry transaction changes.
const expireBatch = 1000

// PresenceTimes are the presence timeouts (config presence.*).
type PresenceTimes struct {
	// IdleAfter: an online user inactive this long becomes unavailable.
	IdleAfter time.Duration
	// OfflineAfter: a user with no client syncing for this long becomes
	// offline.
	OfflineAfter time.Duration
}

// DefaultPresenceTimes are used until SetPresenceTimes is called.
var defaultPresenceTimes = PresenceTimes{IdleAfter: 5 * time.Minute, OfflineAfter: 2 * time.Minute}

// granularity and interval are at most a quarter of the shorter timeout,
// so that a syncing user's stored last_sync_ts, which lags by up to one of
// each, never looks older than OfflineAfter.
func (t PresenceTimes) granularity() time.Duration {
	return min(maxPresenceGranularity, min(t.IdleAfter, t.OfflineAfter)/4)
}

// Interval is how often the presence timer (RunPresence) runs.
func (t PresenceTimes) Interval() time.Duration {
	return min(maxPresenceInterval, min(t.IdleAfter, t.OfflineAfter)/4)
}

// PresenceRecord is a user's stored presence.
type PresenceRecord struct {
	State        string
	StatusMsg    *string
	LastActiveTS int64 // unix ms
	LastSyncTS   int64 // unix ms: the last time a client was seen syncing
}

// PresenceUpdate is a change others see: it takes a stream position and
// wakes the /syncs of everyone sharing a room with the user.
type PresenceUpdate struct {
	UserID id.UserID
	State  string
	// StatusMsg replaces the stored one when SetStatusMsg (nil clears it).
	StatusMsg    *string
	SetStatusMsg bool
	// Now (unix ms) becomes last_sync_ts (unless the stored one is newer)
	// and, with BumpActive or for a new row, last_active_ts.
	Now        int64
	BumpActive bool
}

// PresenceStore keeps presence (table presence). *storage.Accounts
// implements it; the service finds it by type assertion on its Store.
type PresenceStore interface {
	// Presence is the user's stored presence (ErrNotFound: none).
	Presence(ctx context.Context, user id.UserID) (*PresenceRecord, error)
	// SharesRoom reports whether a and b are both joined to some room.
	SharesRoom(ctx context.Context, a, b id.UserID) (bool, error)
	// SetPresence writes u with a new stream position and tells the
	// stream listener about the user and every room they are joined to.
	SetPresence(ctx context.Context, u PresenceUpdate) error
	// TouchPresence sets last_sync_ts to now for the stored users among
	// active and others, and last_active_ts to now for those of active
	// who are online, where either is older than staleBefore. No stream
	// position: nothing others are shown changes (an online user stays
	// currently_active; last_active_ago is computed when read).
	TouchPresence(ctx context.Context, active, others []id.UserID, now, staleBefore int64) error
	// ExpirePresence moves up to limit users to offline (online or
	// unavailable, last_sync_ts before offlineBefore) or to unavailable
	// (online, last_active_ts before idleBefore), with one stream position,
	// and returns how many it found.
	ExpirePresence(ctx context.Context, idleBefore, offlineBefore int64, limit int) (int, error)
}

// presenceTracker counts each user's /sync requests in flight in this
// process: while one is, the user is connected and the timer keeps them
// from drifting offline (a long-poll may last longer than OfflineAfter).
// The zero value is ready.
type presenceTracker struct {
	mu      sync.Mutex
	times   *PresenceTimes
	syncing map[id.UserID]*inflight
	// confirmed remembers, per user, the state a /sync found or wrote and
	// until when that needs no second look: without it every /sync of
	// every device would read the presence row. It is only a shortcut:
	// the timer (or another process) may change the row meanwhile, and
	// the next look after the deadline sets it right.
	confirmed map[id.UserID]confirmedPresence
}

type confirmedPresence struct {
	state string
	until time.Time
}

// fresh reports whether user's presence was confirmed as state recently.
func (p *presenceTracker) fresh(user id.UserID, state string, now time.Time) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	c, ok := p.confirmed[user]
	return ok && c.state == state && now.Before(c.until)
}

// forget drops what confirm recorded for user.
func (p *presenceTracker) forget(user id.UserID) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.confirmed, user)
}

// confirm records that user's presence row holds state, fresh for d.
func (p *presenceTracker) confirm(user id.UserID, state string, now time.Time, d time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.confirmed == nil || len(p.confirmed) > 100_000 {
		p.confirmed = map[id.UserID]confirmedPresence{}
	}
	p.confirmed[user] = confirmedPresence{state: state, until: now.Add(d)}
}

type inflight struct{ online, other int }

func (p *presenceTracker) get() PresenceTimes {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.times == nil {
		return defaultPresenceTimes
	}
	return *p.times
}

func (p *presenceTracker) begin(user id.UserID, online bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.syncing == nil {
		p.syncing = map[id.UserID]*inflight{}
	}
	f := p.syncing[user]
	if f == nil {
		f = &inflight{}
		p.syncing[user] = f
	}
	if online {
		f.online++
	} else {
		f.other++
	}
}

func (p *presenceTracker) end(user id.UserID, online bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	f := p.syncing[user]
	if f == nil {
		return
	}
	if online {
		f.online--
	} else {
		f.other--
	}
	if f.online <= 0 && f.other <= 0 {
		delete(p.syncing, user)
	}
}

// users lists the syncing users: those with an online /sync in flight,
// and the others.
func (p *presenceTracker) users() (online, others []id.UserID) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for u, f := range p.syncing {
		if f.online > 0 {
			online = append(online, u)
		} else {
			others = append(others, u)
		}
	}
	return online, others
}

// SetPresenceTimes sets the presence timeouts. Call it before serving.
func (s *Service) SetPresenceTimes(t PresenceTimes) {
	s.presence.mu.Lock()
	defer s.presence.mu.Unlock()
	s.presence.times = &t
}

func (s *Service) presenceStore() (PresenceStore, error) {
	ps, ok := s.store.(PresenceStore)
	if !ok {
		return nil, errors.New("store keeps no presence")
	}
	return ps, nil
}

// PresenceStatus is GET /presence/{userId}/status.
type PresenceStatus struct {
	Presence        string
	LastActiveAgo   *int64 // nil: never active
	StatusMsg       *string
	CurrentlyActive *bool
}

// Presence is GET /presence/{userId}/status: the user's own presence, or
// that of a user who shares a joined room with them. An unknown (or
// deactivated) user is 404 M_NOT_FOUND; a user who shares no room is 403
// M_FORBIDDEN. A user who never had a presence is offline.
func (s *Service) Presence(ctx context.Context, r *Requester, target id.UserID) (*PresenceStatus, error) {
	ps, err := s.presenceStore()
	if err != nil {
		return nil, err
	}
	u, err := s.userByID(ctx, target)
	if err != nil {
		return nil, err
	}
	if u.Deactivated {
		return nil, errNotFound("Unknown user")
	}
	if r.UserID != target {
		shares, err := ps.SharesRoom(ctx, r.UserID, target)
		if err != nil {
			return nil, fmt.Errorf("checking shared rooms: %w", err)
		}
		if !shares {
			return nil, errForbidden("You are not allowed to see their presence")
		}
	}
	rec, err := ps.Presence(ctx, target)
	if errors.Is(err, ErrNotFound) {
		return &PresenceStatus{Presence: PresenceOffline}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("loading presence: %w", err)
	}
	ago := max(s.now().UnixMilli()-rec.LastActiveTS, 0)
	active := rec.State == PresenceOnline && ago < currentlyActiveWindow.Milliseconds()
	return &PresenceStatus{Presence: rec.State, LastActiveAgo: &ago, StatusMsg: rec.StatusMsg, CurrentlyActive: &active}, nil
}

func validPresence(state string) bool {
	return state == PresenceOnline || state == PresenceUnavailable || state == PresenceOffline
}

// SetPresence is PUT /presence/{userId}/status: only your own. It sets the
// state and the status message (absent: cleared), and counts as activity
// and as a sign of life (the spec: "the activity time is updated"), so a
// client that sets online and never syncs goes offline after OfflineAfter.
func (s *Service) SetPresence(ctx context.Context, r *Requester, target id.UserID, state string, statusMsg *string) error {
	if r.UserID != target {
		return errForbidden("You can only set your own presence")
	}
	if !validPresence(state) {
		return errInvalidParam("presence must be online, unavailable or offline")
	}
	if statusMsg != nil && len(*statusMsg) > maxStatusMsg {
		return errInvalidParam(fmt.Sprintf("status_msg is longer than %d bytes", maxStatusMsg))
	}
	ps, err := s.presenceStore()
	if err != nil {
		return err
	}
	err = ps.SetPresence(ctx, PresenceUpdate{
		UserID: target, State: state, StatusMsg: statusMsg, SetStatusMsg: true,
		Now: s.now().UnixMilli(), BumpActive: true,
	})
	if err != nil {
		return fmt.Errorf("storing presence: %w", err)
	}
	s.presence.forget(target) // the next /sync looks at the row again
	return nil
}

// SyncPresence is /sync's set_presence hook. The user counts as syncing
// until the returned end is called (once, when the request answers).
//
//   - offline: the client does not mark the user online; nothing changes.
//   - online: the user is online and active. A change of state (from
//     offline, from unavailable whether set or drifted) is written with a
//     stream position; an online user's activity is only refreshed when
//     the stored times are staler than the granularity (at most a minute),
//     without a position: an idle long-poll writes nothing.
//   - unavailable: the user is connected but idle: the state is set, the
//     activity time is not bumped (the spec counts only going online as a
//     pro-active event).
func (s *Service) SyncPresence(ctx context.Context, user id.UserID, state string) (end func(), err error) {
	if state == "" {
		state = PresenceOnline
	}
	if !validPresence(state) {
		return nil, errInvalidParam("set_presence must be online, unavailable or offline")
	}
	if state == PresenceOffline {
		return func() {}, nil
	}
	ps, err := s.presenceStore()
	if err != nil {
		return nil, err
	}
	online := state == PresenceOnline
	s.presence.begin(user, online)
	end = func() { s.presence.end(user, online) }
	// The user is syncing even if recording it fails: the caller ends it.
	return end, s.recordSync(ctx, ps, user, state, online)
}

// recordSync writes what SyncPresence learnt, as little as it can.
func (s *Service) recordSync(ctx context.Context, ps PresenceStore, user id.UserID, state string, online bool) (err error) {

	clock := s.now()
	now := clock.UnixMilli()
	// A row confirmed within half the write granularity needs neither a
	// read nor a refresh yet.
	if s.presence.fresh(user, state, clock) {
		return nil
	}
	defer func() {
		if err == nil {
			s.presence.confirm(user, state, clock, s.presence.get().granularity()/2)
		}
	}()
	cur, err := ps.Presence(ctx, user)
	if err != nil && !errors.Is(err, ErrNotFound) {
		return fmt.Errorf("loading presence: %w", err)
	}
	if cur == nil || cur.State != state {
		if err := ps.SetPresence(ctx, PresenceUpdate{UserID: user, State: state, Now: now, BumpActive: online}); err != nil {
			return fmt.Errorf("storing presence: %w", err)
		}
		return nil
	}
	stale := now - s.presence.get().granularity().Milliseconds()
	if cur.LastSyncTS < stale || online && cur.LastActiveTS < stale {
		var active, others []id.UserID
		if online {
			active = []id.UserID{user}
		} else {
			others = []id.UserID{user}
		}
		if err := ps.TouchPresence(ctx, active, others, now, stale); err != nil {
			return fmt.Errorf("refreshing presence: %w", err)
		}
	}
	return nil
}

// ExpirePresence runs the presence timer once: it refreshes the users
// syncing now (so a long-poll does not make its user drift), then moves
// users whose clients stopped syncing to offline and online users idle
// past IdleAfter to unavailable, each change with a stream position so
// that those who share a room see it in /sync.
func (s *Service) ExpirePresence(ctx context.Context) error {
	ps, err := s.presenceStore()
	if err != nil {
		return err
	}
	t := s.presence.get()
	now := s.now().UnixMilli()
	if active, others := s.presence.users(); len(active)+len(others) > 0 {
		if err := ps.TouchPresence(ctx, active, others, now, now-t.granularity().Milliseconds()); err != nil {
			return fmt.Errorf("refreshing syncing users' presence: %w", err)
		}
	}
	for {
		n, err := ps.ExpirePresence(ctx, now-t.IdleAfter.Milliseconds(), now-t.OfflineAfter.Milliseconds(), expireBatch)
		if err != nil {
			return fmt.Errorf("expiring presence: %w", err)
		}
		if n < expireBatch {
			return nil
		}
	}
}

// RunPresence runs the presence timer every PresenceTimes.Interval until
// ctx ends.
func (s *Service) RunPresence(ctx context.Context) {
	tick := time.NewTicker(s.presence.get().Interval())
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			if err := s.ExpirePresence(ctx); err != nil && ctx.Err() == nil {
				s.log.Error("presence timer", "err", err)
			}
		}
	}
}
