package syncapi

import (
	"sync"
	"time"

	"maunium.net/go/mautrix/id"
)

// activeFor is how long after its last response a device still counts as
// syncing: a client loops from one long-poll to the next, so between two
// of them it has no request in flight for a moment.
const activeFor = 30 * time.Second

// activity knows which devices are syncing now, for push: a device with a
// /sync in flight (a parked long-poll included) or answered within
// activeFor is online, and pushing to it would only duplicate what its
// /sync shows. One mutex over a map: an update is a map write, far below
// the cost of the request it accompanies. Entries of devices idle for
// longer than activeFor are dropped by a sweep at most every activeFor, so
// the map holds the devices active in the last two periods at most.
//
// Another process serving the same users keeps its own: a device syncing
// there counts as not syncing here.
type activity struct {
	mu        sync.Mutex
	m         map[deviceKey]*deviceActivity
	lastSweep time.Time
	now       func() time.Time
}

type deviceActivity struct {
	inFlight int
	last     time.Time // the last answered request's end
}

func newActivity(now func() time.Time) *activity {
	return &activity{m: map[deviceKey]*deviceActivity{}, now: now, lastSweep: now()}
}

// begin records a request of the device starting; the returned end records
// it ending, answered or not (a client that went away is not known to be
// online). end may be called more than once: only the first counts.
func (a *activity) begin(user id.UserID, device id.DeviceID) (end func(answered bool)) {
	if device == "" {
		return func(bool) {}
	}
	k := deviceKey{user, device}
	a.mu.Lock()
	now := a.now()
	if now.Sub(a.lastSweep) > activeFor {
		a.lastSweep = now
		for dk, d := range a.m {
			if d.inFlight == 0 && now.Sub(d.last) > activeFor {
				delete(a.m, dk)
			}
		}
	}
	d := a.m[k]
	if d == nil {
		d = &deviceActivity{}
		a.m[k] = d
	}
	d.inFlight++
	a.mu.Unlock()
	var once sync.Once
	return func(answered bool) {
		once.Do(func() {
			a.mu.Lock()
			defer a.mu.Unlock()
			// The sweep never drops an entry with a request in flight, so
			// d is still the map's entry.
			d.inFlight--
			if answered {
				d.last = a.now()
			}
		})
	}
}

// syncing reports whether the device has a /sync in flight or was
// answered within activeFor.
func (a *activity) syncing(user id.UserID, device id.DeviceID) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	d := a.m[deviceKey{user, device}]
	return d != nil && (d.inFlight > 0 || a.now().Sub(d.last) <= activeFor)
}

// DeviceSyncing reports whether the device is online by /sync: it has a
// request in flight (a waiting long-poll included) or got a response in
// the last 30 seconds. Pushers skip such devices.
func (s *Service) DeviceSyncing(user id.UserID, device id.DeviceID) bool {
	return s.active.syncing(user, device)
}
