// Package memrelease gives memory the Go heap no longer uses back to the
// operating system after a burst.
//
// The runtime keeps freed heap memory mapped for reuse and returns it
// slowly: after a burst (every client reconnecting at once after a
// restart, thousands of long-polls answered together) a server that then
// sits idle holds several times its live heap in RSS for minutes. Weft
// is meant to hold thousands of idle clients cheaply, so once a minute or
// so a Releaser compares the free memory the heap holds with what the
// server allocated since its last look: when the free memory is more than
// the allocations could use again before the next look, it is released
// (runtime/debug.FreeOSMemory, which collects first). Under steady load
// the heap reuses its free memory and nothing is released, so the forced
// collection never runs when it would only be paid back with page faults.
package memrelease

import (
	"context"
	"log/slog"
	"runtime/debug"
	"runtime/metrics"
	"time"
)

// minRelease is the least free memory worth a forced collection.
const minRelease = 32 << 20

const (
	freeMetric   = "/memory/classes/heap/free:bytes" // free, still mapped
	allocsMetric = "/gc/heap/allocs:bytes"           // cumulative
)

// Releaser decides, at each look, whether to release.
type Releaser struct {
	log        *slog.Logger
	samples    []metrics.Sample
	lastAllocs uint64
	// release is debug.FreeOSMemory (a field for tests).
	release func()
}

// New returns a Releaser whose first look counts allocations from now.
func New(log *slog.Logger) *Releaser {
	r := &Releaser{log: log, release: debug.FreeOSMemory, samples: []metrics.Sample{{Name: freeMetric}, {Name: allocsMetric}}}
	_, r.lastAllocs = r.read()
	return r
}

func (r *Releaser) read() (free, allocs uint64) {
	metrics.Read(r.samples)
	return r.samples[0].Value.Uint64(), r.samples[1].Value.Uint64()
}

// Look releases the heap's free memory if the allocations since the last
// look could not have used it, and reports how much was free.
func (r *Releaser) Look() (released uint64) {
	free, allocs := r.read()
	allocated := allocs - r.lastAllocs
	r.lastAllocs = allocs
	if !ShouldRelease(free, allocated) {
		return 0
	}
	start := time.Now()
	r.release()
	// The forced collection allocates nothing of note; start the next
	// window after it.
	_, r.lastAllocs = r.read()
	r.log.Debug("released free heap memory to the system", "bytes", free, "allocated_since_last_look", allocated, "took", time.Since(start))
	return free
}

// ShouldRelease: free memory the heap holds (mapped, unused) is worth
// releasing when there is at least minRelease of it and the server
// allocated less than that in the last interval, so it would not be
// needed again soon.
func ShouldRelease(free, allocatedLastInterval uint64) bool {
	return free >= minRelease && allocatedLastInterval < free
}

// Run looks every interval until ctx ends.
func (r *Releaser) Run(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			r.Look()
		}
	}
}
