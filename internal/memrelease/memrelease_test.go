package memrelease

import (
	"log/slog"
	"runtime"
	"runtime/debug"
	"testing"
)

func TestShouldRelease(t *testing.T) {
	for _, c := range []struct {
		free, allocated uint64
		want            bool
	}{
		{0, 0, false},
		{minRelease - 1, 0, false},              // too little to be worth a collection
		{minRelease, 0, true},                   // idle after a burst
		{200 << 20, 10 << 20, true},             // a little traffic
		{200 << 20, 200 << 20, false},           // busy: it would be reused
		{200 << 20, 5 << 30, false},             // very busy
		{minRelease, minRelease - 1, true},      // just below
		{minRelease + 1, minRelease + 1, false}, // equal: reused
	} {
		if got := ShouldRelease(c.free, c.allocated); got != c.want {
			t.Errorf("ShouldRelease(%d, %d) = %v, want %v", c.free, c.allocated, got, c.want)
		}
	}
}

var sink [][]byte

// burst allocates 128 MiB, touching every page, and drops it; with
// collect, it is collected (free memory), else mostly garbage.
func burst(collect bool) {
	for range 256 {
		b := make([]byte, 512<<10)
		for i := 0; i < len(b); i += 4096 {
			b[i] = 1
		}
		sink = append(sink, b)
	}
	sink = nil
	if collect {
		runtime.GC()
	}
}

// burstUncollected is burst with the collector off, as on a server whose
// heap goal is far above what the burst allocated: all of it is garbage.
func burstUncollected() {
	defer debug.SetGCPercent(debug.SetGCPercent(-1))
	burst(false)
}

// TestLookReleasesAfterABurst: memory a burst leaves behind, as free memory
// or as garbage, is given back by a look after a quiet interval, and not by
// a look right after allocating more than it.
func TestLookReleasesAfterABurst(t *testing.T) {
	r := New(slog.New(slog.DiscardHandler))
	burst(true) // 2 × 128 MiB allocated, at most about 128 MiB to give back
	burst(true)
	released := 0
	r.release = func() { released++ }
	if r.Look() != 0 || released != 0 {
		t.Fatalf("released right after allocating 256 MiB: the heap may need it again")
	}

	for _, collect := range []bool{true, false} {
		if collect {
			burst(true)
		} else {
			burstUncollected()
		}
		_, r.lastAllocs = r.read() // the burst belongs to the last window: now quiet
		r.release = func() { released++; debug.FreeOSMemory() }
		before, _ := r.read()
		if before < minRelease {
			t.Fatalf("collected %v: only %d bytes to give back after dropping 128 MiB: the test cannot see a release", collect, before)
		}
		n := released
		if r.Look() == 0 || released != n+1 {
			t.Fatalf("collected %v: did not release %d bytes after a quiet interval", collect, before)
		}
		if after, _ := r.read(); after >= minRelease {
			t.Fatalf("collected %v: %d bytes still to give back after the release (%d before)", collect, after, before)
		}
	}
}
