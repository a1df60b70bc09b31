package syncapi

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"maunium.net/go/mautrix/id"
)

// fakeClock is a settable clock.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func TestDeviceActivity(t *testing.T) {
	clock := &fakeClock{t: time.Unix(1_000_000, 0)}
	a := newActivity(clock.now)
	const user, dev = "@bob:x", "PHONE"
	if a.syncing(user, dev) {
		t.Fatal("unknown device syncing")
	}

	// In flight, however long: syncing.
	end := a.begin(user, dev)
	clock.add(5 * time.Minute)
	if !a.syncing(user, dev) {
		t.Fatal("a device with a request in flight is not syncing")
	}
	// Answered: syncing for activeFor after, not longer.
	end(true)
	end(true) // only the first call counts
	clock.add(activeFor)
	if !a.syncing(user, dev) {
		t.Fatal("not syncing right after an answer")
	}
	clock.add(time.Second)
	if a.syncing(user, dev) {
		t.Fatal("still syncing after activeFor without a request")
	}

	// Two requests in flight: syncing until both end. A cancelled one
	// (the client went away) does not count as an answer.
	e1, e2 := a.begin(user, dev), a.begin(user, dev)
	e1(false)
	if !a.syncing(user, dev) {
		t.Fatal("one of two requests still in flight, not syncing")
	}
	e2(false)
	if a.syncing(user, dev) {
		t.Fatal("syncing after every request was cancelled and no recent answer")
	}
	if a.syncing(user, "TABLET") || a.syncing("@carol:x", dev) {
		t.Fatal("activity leaks between devices or users")
	}

	// Entries of idle devices are dropped; those in flight are kept.
	busy := a.begin("@carol:x", "LAPTOP")
	for i := range 100 {
		a.begin(user, id.DeviceID(fmt.Sprint("D", i)))(true)
	}
	clock.add(2*activeFor + time.Second)
	a.begin("@dave:x", "NEW")(true) // sweeps
	a.mu.Lock()
	size := len(a.m)
	a.mu.Unlock()
	if size != 2 {
		t.Fatalf("%d entries after the sweep, want 2 (the one in flight and the new one)", size)
	}
	if !a.syncing("@carol:x", "LAPTOP") {
		t.Fatal("the sweep dropped a device in flight")
	}
	busy(true)
	if !a.syncing("@carol:x", "LAPTOP") {
		t.Fatal("an answer after a sweep is lost")
	}

	// No device: nothing recorded.
	a.begin(user, "")(true)
	if a.syncing(user, "") {
		t.Fatal("an empty device ID is syncing")
	}
}
