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

// TestLookReleasesAfterABurst: memory freed by a burst of allocations is
// free but mapped; a look after a quiet interval gives it back, and a look
// right after another burst of the same size does not.
func TestLookReleasesAfterABurst(t *testing.T) {
	burst := func() {
		for range 256 {
			b := make([]byte, 512<<10)
			for i := 0; i < len(b); i += 4096 {
				b[i] = 1 // touch every page
			}
			sink = append(sink, b)
		}
		sink = nil
		runtime.GC()
	}
	r := New(slog.New(slog.DiscardHandler))
	burst() // 2 × 128 MiB allocated, at most 128 MiB of it free at once
	burst()
	released := 0
	r.release = func() { released++ }
	if r.Look() != 0 || released != 0 {
		t.Fatalf("released right after allocating 128 MiB: the heap may need it again")
	}

	// Quiet: the next look releases, for real this time.
	burst()
	_, r.lastAllocs = r.read() // the burst belongs to the last window
	r.release = func() { released++; debug.FreeOSMemory() }
	free, _ := r.read()
	if free < minRelease {
		t.Fatalf("only %d bytes free after freeing 128 MiB: the test cannot see a release", free)
	}
	if r.Look() == 0 || released != 1 {
		t.Fatalf("did not release %d free bytes after a quiet interval", free)
	}
	if after, _ := r.read(); after >= minRelease {
		t.Fatalf("%d bytes still free after the release (%d before)", after, free)
	}
}
