package account

import (
	"sync"
	"time"

	"maunium.net/go/mautrix/id"
)

// keyCountCache keeps each device's one-time key counts, which every /sync
// response reports: without it, one message waking a thousand devices
// would be a thousand count queries. Uploads and claims through this
// service invalidate a device's entry; the TTL bounds what another process
// (which cannot invalidate ours) may leave stale. A stale count only makes
// a client replenish keys late, and claims then fall back to the fallback
// key.
type keyCountCache struct {
	mu  sync.Mutex
	m   map[deviceRef]keyCountEntry
	gen map[deviceRef]uint64 // bumped by invalidate: a read from before it must not be stored
}

type deviceRef struct {
	user   id.UserID
	device id.DeviceID
}

type keyCountEntry struct {
	counts   map[id.KeyAlgorithm]int
	fallback []id.KeyAlgorithm
	at       time.Time
}

const (
	keyCountTTL     = time.Minute
	keyCountEntries = 100_000 // past this the cache starts over
)

// get returns a fresh entry, or the generation to hand to put after
// reading the database.
func (c *keyCountCache) get(ref deviceRef, now time.Time) (keyCountEntry, bool, uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[ref]
	if ok && now.Sub(e.at) < keyCountTTL {
		return e, true, 0
	}
	return keyCountEntry{}, false, c.gen[ref]
}

// put stores what was read at generation gen, unless an invalidation came
// in between (the read may predate the change).
func (c *keyCountCache) put(ref deviceRef, gen uint64, e keyCountEntry) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.gen[ref] != gen {
		return
	}
	if c.m == nil || len(c.m) >= keyCountEntries {
		c.m = map[deviceRef]keyCountEntry{}
	}
	c.m[ref] = e
}

// invalidate forgets a device's counts: call it after a change commits.
func (c *keyCountCache) invalidate(ref deviceRef) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.m, ref)
	if c.gen == nil || len(c.gen) >= keyCountEntries {
		// Starting over is safe: a put whose generation was forgotten
		// compares against 0 and, if it was 0, the entry it stores is
		// at most one TTL stale, as across processes.
		c.gen = map[deviceRef]uint64{}
	}
	c.gen[ref]++
}
