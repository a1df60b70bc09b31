package push

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
	"maunium.net/go/mautrix/pushrules"
	"maunium.net/go/mautrix/pushrules/pushgateway"
)

// Delivery sends each pusher its user's notifications (the rows of
// event_push_actions), oldest first, one at a time, to the pusher's push
// gateway.
//
// What is queued lives in Postgres: the rows and each pusher's cursor
// (last_pos). The cursor moves past a notification only once it was
// delivered, skipped (the pusher's device was syncing) or given up on, so
// a restart resumes exactly after the last notification dealt with. A
// notification whose delivery succeeded but whose cursor move was lost
// (crash in between, or the request cancelled at shutdown after the
// gateway took it) is sent again: gateways deduplicate by event_id, as the
// push gateway API asks them to.
//
// Work is per user: a user's pushers are delivered by one worker at a
// time, in order, and at most Workers users are worked on at once. A
// pusher whose gateway fails waits (exponential backoff, remembered in
// memory) without holding a worker, while the user's other pushers go on.
//
// Limit: one process delivers. Two processes sharing the database would
// each deliver every pusher; that needs a claim on the pusher row (a lease
// column, or SELECT ... FOR UPDATE SKIP LOCKED) when the server runs as
// several processes.

// DeviceActivity tells whether a device is online: a device with a /sync
// in flight or just answered gets no pushes (its user is looking at it).
type DeviceActivity interface {
	DeviceSyncing(user id.UserID, device id.DeviceID) bool
}

// Gateway sends one notification to a push gateway's notify URL and
// returns the pushkeys the gateway rejected. Any error (no connection, a
// status outside 2xx, a timeout) is worth retrying.
type Gateway interface {
	Notify(ctx context.Context, url string, n *pushgateway.PushNotification) (rejected []string, err error)
}

// PendingNotification is a notification of a user after a pusher's cursor.
type PendingNotification struct {
	StreamPos int64
	RoomID    id.RoomID
	EventID   id.EventID
	// EventType is the event's type (an encrypted event is pushed with
	// high priority whatever its rule said).
	EventType string
	Highlight bool
	// Actions are the matched rule's actions as the spec writes them.
	Actions json.RawMessage
}

// PushEvent is what the full notification format tells of an event and
// its room. Empty strings are not known (and are left out).
type PushEvent struct {
	Type     string
	Sender   id.UserID
	StateKey *string
	// Content is the event's content; nil when the event was redacted.
	Content json.RawMessage
	// SenderDisplayName, RoomName and RoomAlias are the room's current
	// state: the sender's display name, m.room.name, m.room.canonical_alias.
	SenderDisplayName string
	RoomName          string
	RoomAlias         id.RoomAlias
}

// DeliveryStore is what delivery reads and writes.
type DeliveryStore interface {
	// PendingPushers lists the pushers with notifications after their
	// cursor.
	PendingPushers(ctx context.Context) ([]Pusher, error)
	// PendingPushersIn lists the pushers with notifications after their
	// cursor in rooms, of the users joined to or invited to rooms and of
	// users.
	PendingPushersIn(ctx context.Context, rooms []id.RoomID, users []id.UserID) ([]Pusher, error)
	// Pushers lists the user's pushers, ordered by app ID and pushkey.
	Pushers(ctx context.Context, user id.UserID) ([]Pusher, error)
	// NotificationsAfter lists at most limit of the user's notifications
	// after the stream position after, oldest first.
	NotificationsAfter(ctx context.Context, user id.UserID, after int64, limit int) ([]PendingNotification, error)
	// PushEvent describes the event for the full format; false when the
	// event is not stored.
	PushEvent(ctx context.Context, eventID id.EventID) (PushEvent, bool, error)
	// UnreadCount is the user's number of unread notifications across
	// the rooms they are joined to.
	UnreadCount(ctx context.Context, user id.UserID) (int, error)
	// AdvancePusher moves the pusher's cursor forward to pos (never back)
	// and clears its failing state.
	AdvancePusher(ctx context.Context, user id.UserID, appID, pushKey string, pos int64) error
	// MarkPusherFailing records since (unix ms) as the first failure of
	// the pusher's current notification, unless one is recorded.
	MarkPusherFailing(ctx context.Context, user id.UserID, appID, pushKey string, since int64) error
	// DeletePusher deletes the user's pusher.
	DeletePusher(ctx context.Context, user id.UserID, appID, pushKey string) error
}

// DeliveryConfig tunes delivery. Zero fields take the defaults.
type DeliveryConfig struct {
	// Workers is how many users' notifications are delivered at once.
	Workers int
	// MinBackoff and MaxBackoff bound the wait before retrying a failing
	// gateway; the wait doubles from one to the other.
	MinBackoff, MaxBackoff time.Duration
	// GiveUpAfter: a notification still failing this long after its first
	// attempt is given up on (logged) and the next one is tried.
	GiveUpAfter time.Duration
	// Sweep is how often every pusher is checked for waiting
	// notifications, whether or not a commit was announced (rows written
	// by another process, a check that failed, a pusher set again while
	// it waited to retry).
	Sweep time.Duration
	// Settle is the least time between two checks prompted by commits:
	// under a stream of commits they are batched, at this much latency.
	Settle time.Duration
}

// Defaults of DeliveryConfig.
const (
	DefaultDeliveryWorkers = 8
	DefaultMinBackoff      = time.Second
	DefaultMaxBackoff      = 10 * time.Minute
	DefaultGiveUpAfter     = 24 * time.Hour
	DefaultSweep           = 30 * time.Second
	DefaultSettle          = 50 * time.Millisecond
)

// deliveryBatch is how many notifications one read of a pusher's queue
// returns.
const deliveryBatch = 32

// maxAnnounced bounds the rooms and users announced commits gather
// between two checks; past it the next check looks at every pusher.
const maxAnnounced = 10_000

// Deliverer delivers notifications to push gateways; Run drives it.
type Deliverer struct {
	store    DeliveryStore
	gw       Gateway
	activity DeviceActivity
	log      *slog.Logger
	cfg      DeliveryConfig
	now      func() time.Time

	// announced gathers the rooms and users of the commits announced
	// since the last check; wake holds at most one pending announcement.
	announcedMu sync.Mutex
	announced   announcement
	wake        chan struct{}
	// rescheduled tells the scheduler that retryAt gained an entry.
	rescheduled chan struct{}

	mu   sync.Mutex
	cond *sync.Cond
	// queue is the users waiting for a worker; state says whether a user
	// is queued or being worked on, and whether they were asked for again
	// while being worked on (then they are queued again after).
	queue   []id.UserID
	state   map[id.UserID]userState
	retryAt map[pusherKey]time.Time
	stopped bool
}

// announcement is what the commits since the last check touched.
type announcement struct {
	rooms map[id.RoomID]struct{}
	users map[id.UserID]struct{}
	// all: too much to list, or a pusher needs looking at whatever
	// its rooms: check every pusher.
	all bool
}

type userState uint8

const (
	userQueued userState = iota + 1
	userRunning
	userRunAgain
)

type pusherKey struct {
	user           id.UserID
	appID, pushKey string
}

func keyOf(p Pusher) pusherKey { return pusherKey{p.UserID, p.AppID, p.PushKey} }

// NewDeliverer builds delivery over store, sending through gw. activity
// may be nil (every device is offline).
func NewDeliverer(cfg DeliveryConfig, store DeliveryStore, gw Gateway, activity DeviceActivity, log *slog.Logger) *Deliverer {
	if cfg.Workers <= 0 {
		cfg.Workers = DefaultDeliveryWorkers
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = DefaultMinBackoff
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = DefaultMaxBackoff
	}
	cfg.MaxBackoff = max(cfg.MaxBackoff, cfg.MinBackoff)
	if cfg.GiveUpAfter <= 0 {
		cfg.GiveUpAfter = DefaultGiveUpAfter
	}
	if cfg.Sweep <= 0 {
		cfg.Sweep = DefaultSweep
	}
	if cfg.Settle <= 0 {
		cfg.Settle = DefaultSettle
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	d := &Deliverer{
		store: store, gw: gw, activity: activity, log: log, cfg: cfg, now: time.Now,
		wake: make(chan struct{}, 1), rescheduled: make(chan struct{}, 1),
		state: map[id.UserID]userState{}, retryAt: map[pusherKey]time.Time{},
	}
	d.cond = sync.NewCond(&d.mu)
	return d
}

// Notify announces a commit of room events: the rooms it appended to and
// the users of its member events (an invitee is notified without being
// joined). It never blocks long: it is called from storage's commit path.
func (d *Deliverer) Notify(rooms []id.RoomID, users []id.UserID) {
	d.announcedMu.Lock()
	a := &d.announced
	if !a.all {
		if a.rooms == nil {
			a.rooms, a.users = map[id.RoomID]struct{}{}, map[id.UserID]struct{}{}
		}
		for _, r := range rooms {
			a.rooms[r] = struct{}{}
		}
		for _, u := range users {
			a.users[u] = struct{}{}
		}
		if len(a.rooms)+len(a.users) > maxAnnounced {
			*a = announcement{all: true}
		}
	}
	d.announcedMu.Unlock()
	signal(d.wake)
}

// takeAnnounced returns what was announced since the last call.
func (d *Deliverer) takeAnnounced() announcement {
	d.announcedMu.Lock()
	defer d.announcedMu.Unlock()
	a := d.announced
	d.announced = announcement{}
	return a
}

func signal(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// Run delivers until ctx ends, then waits for the workers to stop. The
// requests in flight are cancelled with ctx and their notifications stay
// queued.
func (d *Deliverer) Run(ctx context.Context) {
	var wg sync.WaitGroup
	for range d.cfg.Workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d.work(ctx)
		}()
	}
	d.schedule(ctx)
	d.mu.Lock()
	d.stopped = true
	d.cond.Broadcast()
	d.mu.Unlock()
	wg.Wait()
}

// schedule finds the users with work and queues them: every Sweep all
// pushers; after announced commits the pushers of the users of the rooms
// they touched (an announcement's rooms are taken before the check reads:
// a commit announced during the check is checked again); pushers whose
// backoff ended.
func (d *Deliverer) schedule(ctx context.Context) {
	sweep := time.NewTicker(d.cfg.Sweep)
	defer sweep.Stop()
	retry := time.NewTimer(time.Hour)
	defer retry.Stop()
	what := announcement{all: true} // the first check looks at everything
	for {
		if err := d.check(ctx, what); err != nil {
			if ctx.Err() != nil {
				return
			}
			d.log.Error("push: finding pushers with notifications", "err", err)
		}
		for {
			d.resetRetry(retry)
			select {
			case <-ctx.Done():
				return
			case <-sweep.C:
				what = announcement{all: true}
			case <-d.wake:
				// Let a burst of commits gather into one check.
				select {
				case <-ctx.Done():
					return
				case <-time.After(d.cfg.Settle):
				}
				what = d.takeAnnounced()
			case <-retry.C:
				d.dispatchDue()
				continue
			case <-d.rescheduled:
				continue
			}
			break
		}
	}
}

// check queues the users of the pushers with notifications waiting, among
// all pushers or those what names.
func (d *Deliverer) check(ctx context.Context, what announcement) error {
	var pushers []Pusher
	var err error
	switch {
	case what.all:
		pushers, err = d.store.PendingPushers(ctx)
	case len(what.rooms) == 0 && len(what.users) == 0:
		return nil
	default:
		rooms := make([]id.RoomID, 0, len(what.rooms))
		for r := range what.rooms {
			rooms = append(rooms, r)
		}
		users := make([]id.UserID, 0, len(what.users))
		for u := range what.users {
			users = append(users, u)
		}
		pushers, err = d.store.PendingPushersIn(ctx, rooms, users)
	}
	if err != nil {
		return err
	}
	now := d.now()
	for _, p := range pushers {
		d.mu.Lock()
		t, waiting := d.retryAt[keyOf(p)]
		if waiting && p.FailingSince == 0 {
			// A pusher waits only after its failure was recorded; with
			// none recorded it was set again (POST /pushers/set clears
			// it, perhaps with a fixed URL): try it now.
			delete(d.retryAt, keyOf(p))
			waiting = false
		}
		d.mu.Unlock()
		if !waiting || !t.After(now) {
			d.dispatch(p.UserID)
		}
	}
	return nil
}

// resetRetry sets the timer to the earliest retry.
func (d *Deliverer) resetRetry(t *time.Timer) {
	d.mu.Lock()
	var next time.Time
	for _, at := range d.retryAt {
		if next.IsZero() || at.Before(next) {
			next = at
		}
	}
	d.mu.Unlock()
	wait := time.Hour
	if !next.IsZero() {
		wait = max(next.Sub(d.now()), 0)
	}
	t.Reset(wait)
}

// dispatchDue queues the users of pushers whose backoff is over (their
// entries go: the timer must not fire for them again).
func (d *Deliverer) dispatchDue() {
	now := d.now()
	var users []id.UserID
	d.mu.Lock()
	for k, at := range d.retryAt {
		if !at.After(now) {
			users = append(users, k.user)
			delete(d.retryAt, k)
		}
	}
	d.mu.Unlock()
	for _, u := range users {
		d.dispatch(u)
	}
}

// dispatch queues the user, or asks for another pass if a worker is on
// them now (what it read may predate the commit that prompted this).
func (d *Deliverer) dispatch(user id.UserID) {
	d.mu.Lock()
	defer d.mu.Unlock()
	switch d.state[user] {
	case userQueued, userRunAgain:
	case userRunning:
		d.state[user] = userRunAgain
	default:
		d.state[user] = userQueued
		d.queue = append(d.queue, user)
		d.cond.Signal()
	}
}

// next takes the next user off the queue, waiting for one; false once
// the deliverer stopped.
func (d *Deliverer) next() (id.UserID, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for len(d.queue) == 0 && !d.stopped {
		d.cond.Wait()
	}
	if d.stopped {
		return "", false
	}
	u := d.queue[0]
	d.queue[0] = ""
	d.queue = d.queue[1:]
	d.state[u] = userRunning
	return u, true
}

// finished ends a worker's pass over user.
func (d *Deliverer) finished(user id.UserID) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.state[user] == userRunAgain {
		d.state[user] = userQueued
		d.queue = append(d.queue, user)
		d.cond.Signal()
		return
	}
	delete(d.state, user)
}

func (d *Deliverer) work(ctx context.Context) {
	for {
		user, ok := d.next()
		if !ok {
			return
		}
		d.deliverUser(ctx, user)
		d.finished(user)
	}
}

// deliverUser runs each of the user's pushers not in backoff until it
// has nothing left or its gateway fails.
func (d *Deliverer) deliverUser(ctx context.Context, user id.UserID) {
	pushers, err := d.store.Pushers(ctx, user)
	if err != nil {
		if ctx.Err() == nil {
			d.log.Error("push: reading pushers", "user", user, "err", err)
		}
		return
	}
	for _, p := range pushers {
		if ctx.Err() != nil {
			return
		}
		now := d.now()
		d.mu.Lock()
		at, waiting := d.retryAt[keyOf(p)]
		if waiting && !at.After(now) {
			delete(d.retryAt, keyOf(p))
			waiting = false
		}
		d.mu.Unlock()
		if waiting {
			continue
		}
		if err := d.deliverPusher(ctx, p); err != nil && ctx.Err() == nil {
			d.log.Error("push: delivering", "user", user, "app_id", p.AppID, "err", err)
		}
	}
}

// outcome of one attempt at one notification.
type outcome uint8

const (
	delivered outcome = iota
	rejected
	failed
)

// deliverPusher sends p its notifications after its cursor, in order,
// until none is left (nil), its gateway fails (a retry is scheduled, nil)
// or the pusher is rejected and deleted (nil). Errors are the store's.
func (d *Deliverer) deliverPusher(ctx context.Context, p Pusher) error {
	// skipped is a cursor position reached by skipping notifications (the
	// device was syncing) not yet written: written before anything else
	// is, and at the end.
	skipped := int64(0)
	flush := func() error {
		if skipped == 0 {
			return nil
		}
		if err := d.store.AdvancePusher(ctx, p.UserID, p.AppID, p.PushKey, skipped); err != nil {
			return fmt.Errorf("advancing the cursor past skipped notifications: %w", err)
		}
		skipped, p.FailingSince = 0, 0
		return nil
	}
	for {
		batch, err := d.store.NotificationsAfter(ctx, p.UserID, p.LastPos, deliveryBatch)
		if err != nil {
			return fmt.Errorf("reading notifications: %w", err)
		}
		for _, n := range batch {
			if ctx.Err() != nil {
				return flush()
			}
			if d.activity != nil && d.activity.DeviceSyncing(p.UserID, p.DeviceID) {
				p.LastPos, skipped = n.StreamPos, n.StreamPos
				continue
			}
			if err := flush(); err != nil {
				return err
			}
			res, sendErr := d.send(ctx, p, n)
			if ctx.Err() != nil {
				return nil // shutting down: the notification stays queued
			}
			switch res {
			case rejected:
				d.log.Info("push: the gateway rejected the pushkey; pusher deleted",
					"user", p.UserID, "app_id", p.AppID, "device_id", p.DeviceID)
				if err := d.store.DeletePusher(ctx, p.UserID, p.AppID, p.PushKey); err != nil {
					return fmt.Errorf("deleting rejected pusher: %w", err)
				}
				return nil
			case delivered:
				if err := d.store.AdvancePusher(ctx, p.UserID, p.AppID, p.PushKey, n.StreamPos); err != nil {
					return fmt.Errorf("advancing the cursor: %w", err)
				}
				p.LastPos, p.FailingSince = n.StreamPos, 0
				continue
			}
			// failed
			now := d.now()
			if p.FailingSince == 0 {
				p.FailingSince = now.UnixMilli()
				d.log.Warn("push: gateway failed; retrying with backoff",
					"user", p.UserID, "app_id", p.AppID, "event_id", n.EventID, "err", sendErr)
				if err := d.store.MarkPusherFailing(ctx, p.UserID, p.AppID, p.PushKey, p.FailingSince); err != nil {
					return fmt.Errorf("recording the failure: %w", err)
				}
			}
			failingFor := now.Sub(time.UnixMilli(p.FailingSince))
			if failingFor >= d.cfg.GiveUpAfter {
				d.log.Warn("push: giving up on a notification", "user", p.UserID, "app_id", p.AppID,
					"event_id", n.EventID, "failing_for", failingFor.Round(time.Second), "err", sendErr)
				if err := d.store.AdvancePusher(ctx, p.UserID, p.AppID, p.PushKey, n.StreamPos); err != nil {
					return fmt.Errorf("advancing the cursor past a notification given up on: %w", err)
				}
				p.LastPos, p.FailingSince = n.StreamPos, 0
				continue
			}
			d.retryLater(p, d.backoff(failingFor))
			return nil
		}
		if len(batch) < deliveryBatch {
			return flush()
		}
	}
}

// backoff is the wait before the next attempt when the notification has
// been failing for failingFor. Waiting as long as it has been failing
// doubles the total each time (1 s, 1 s, 2 s, 4 s, ...) and needs no
// attempt count, so it carries over a restart, which keeps failing_since.
func (d *Deliverer) backoff(failingFor time.Duration) time.Duration {
	return min(max(failingFor, d.cfg.MinBackoff), d.cfg.MaxBackoff)
}

func (d *Deliverer) retryLater(p Pusher, wait time.Duration) {
	d.mu.Lock()
	d.retryAt[keyOf(p)] = d.now().Add(wait)
	d.mu.Unlock()
	signal(d.rescheduled)
}

// send makes one attempt at delivering n to p's gateway.
func (d *Deliverer) send(ctx context.Context, p Pusher, n PendingNotification) (outcome, error) {
	body, url, err := d.notification(ctx, p, n)
	if err != nil {
		return failed, err
	}
	rej, err := d.gw.Notify(ctx, url, body)
	if err != nil {
		return failed, err
	}
	if slices.Contains(rej, p.PushKey) {
		return rejected, nil
	}
	return delivered, nil
}

// notification builds the request body for n (push_notifier.yaml) and
// returns the gateway URL. Fields not known are left out, never null.
func (d *Deliverer) notification(ctx context.Context, p Pusher, n PendingNotification) (*pushgateway.PushNotification, string, error) {
	var data map[string]any
	dec := json.NewDecoder(bytes.NewReader(p.Data))
	dec.UseNumber() // custom keys are forwarded exactly, numbers included
	if err := dec.Decode(&data); err != nil {
		return nil, "", fmt.Errorf("pusher data: %w", err)
	}
	url, _ := data["url"].(string)
	if url == "" {
		return nil, "", errors.New("pusher data has no url")
	}
	format, _ := data["format"].(string)
	// The gateway gets data without url (pusher.yaml: "excluding url").
	delete(data, "url")
	unread, err := d.store.UnreadCount(ctx, p.UserID)
	if err != nil {
		return nil, "", fmt.Errorf("counting unread notifications: %w", err)
	}
	tweaks := gatewayTweaks(n.Actions)
	prio := pushgateway.PushPriorityLow
	if _, sound := tweaks[pushrules.TweakSound]; n.Highlight || sound || n.EventType == event.EventEncrypted.Type {
		prio = pushgateway.PushPriorityHigh
	}
	out := &pushgateway.PushNotification{
		EventID:  n.EventID,
		RoomID:   n.RoomID,
		Priority: prio,
		// missed_calls is left out: nothing tells whether a call was
		// answered (an unread m.call.invite is not a missed call).
		Counts: &pushgateway.NotificationCounts{Unread: unread},
		Devices: []pushgateway.Device{{
			BaseDevice: pushgateway.BaseDevice{
				AppID: pushgateway.PusherAppID(p.AppID), PushKey: p.PushKey,
				// The gateway API counts this in seconds; stored in ms.
				PushKeyTS: p.PushKeyTS / 1000,
				Data:      data,
			},
			Tweaks: tweaks,
		}},
	}
	if format == FormatEventIDOnly {
		return out, url, nil
	}
	ev, ok, err := d.store.PushEvent(ctx, n.EventID)
	if err != nil {
		return nil, "", fmt.Errorf("reading the event: %w", err)
	}
	if ok {
		out.Type = ev.Type
		out.Sender = ev.Sender
		out.SenderDisplayName = ev.SenderDisplayName
		out.RoomName = ev.RoomName
		out.RoomAlias = ev.RoomAlias
		out.Content = ev.Content
		out.UserIsTarget = ev.Type == event.StateMember.Type && ev.StateKey != nil && *ev.StateKey == p.UserID.String()
	}
	return out, url, nil
}

// gatewayTweaks are the tweaks of actions as mautrix's gateway types
// spell them; nil when there are none (the key is then left out).
func gatewayTweaks(actions json.RawMessage) map[pushrules.PushActionTweak]any {
	tweaks := Tweaks(actions)
	if len(tweaks) == 0 {
		return nil
	}
	out := make(map[pushrules.PushActionTweak]any, len(tweaks))
	for k, v := range tweaks {
		out[pushrules.PushActionTweak(k)] = v
	}
	return out
}
