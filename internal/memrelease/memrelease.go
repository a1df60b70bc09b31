// Package memrelease gives memory the Go heap no longer uses back to the
// operating system after a burst.
//
// The runtime keeps freed heap memory mapped for reuse and returns it
// slowly: after a burst (every client reconnecting at once after a
// restart, thousands of long-polls answered together) a server that then
// sits idle holds several times its live heap in RSS for minutes: the
// garbage of the burst waits for a collection that an idle server's few
// allocations do not trigger, and freed memory goes back slowly. Weft is
// meant to hold thousands of idle clients cheaply, so every half minute
// or so a Releaser compares what the heap could give back (its objects and
// free memory beyond the live heap of the last collection) with what the
// server allocated since its last look: when that is more than the
// allocations could use again before the next look, it collects and
// releases (runtime/debug.FreeOSMemory). Under steady load the heap
// reuses its memory and nothing is released, so the forced collection
// never runs when it would only be paid back with page faults.
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
	objectsMetric = "/memory/classes/heap/objects:bytes" // live and garbage
	freeMetric    = "/memory/classes/heap/free:bytes"    // free, still mapped
	liveMetric    = "/gc/heap/live:bytes"                // live at the last collection
	allocsMetric  = "/gc/heap/allocs:bytes"              // cumulative
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
	r := &Releaser{log: log, release: debug.FreeOSMemory, samples: []metrics.Sample{
		{Name: objectsMetric}, {Name: freeMetric}, {Name: liveMetric}, {Name: allocsMetric}}}
	_, r.lastAllocs = r.read()
	return r
}

// read returns what the heap could give back (its objects and free
// memory beyond the last live heap) and the bytes allocated so far.
func (r *Releaser) read() (reclaimable, allocs uint64) {
	metrics.Read(r.samples)
	objects, free, live := r.samples[0].Value.Uint64(), r.samples[1].Value.Uint64(), r.samples[2].Value.Uint64()
	if objects+free > live {
		reclaimable = objects + free - live
	}
	return reclaimable, r.samples[3].Value.Uint64()
}

// Look collects and releases if the allocations since the last look
// could not have used what the heap could give back, and reports how
// much that was (0: nothing done).
func (r *Releaser) Look() (released uint64) {
	reclaimable, allocs := r.read()
	allocated := allocs - r.lastAllocs
	r.lastAllocs = allocs
	if !ShouldRelease(reclaimable, allocated) {
		return 0
	}
	start := time.Now()
	r.release()
	// The forced collection allocates nothing of note; start the next
	// window after it.
	_, r.lastAllocs = r.read()
	r.log.Debug("released heap memory to the system", "reclaimable_bytes", reclaimable, "allocated_since_last_look", allocated, "took", time.Since(start))
	return reclaimable
}

// ShouldRelease: what the heap could give back (garbage and free memory)
// is worth a collection and a release when there is at least minRelease
// of it and the server allocated less than that in the last interval, so
// it would not be needed again soon.
func ShouldRelease(reclaimable, allocatedLastInterval uint64) bool {
	return reclaimable >= minRelease && allocatedLastInterval < reclaimable
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
