package syncapi

import "runtime"

// workers runs long-poll steps on goroutines that live as long as the
// process. A step builds and encodes a response through deep call chains;
// on a fresh goroutine each one would first grow its stack by copying (a
// tenth of the server's CPU in a fan-out to a thousand devices). Work that
// may block for long (writing to a client, waiting for its next request)
// does not belong here: the caller's callback hands it to a goroutine of
// its own.
//
// The workers never stop, so a step queued during shutdown still runs.
type workers struct {
	queue chan func()
}

// newWorkers starts n workers.
func newWorkers(n int) *workers {
	w := &workers{queue: make(chan func(), 4096)}
	for range n {
		go w.loop()
	}
	return w
}

// defaultWorkers is enough that steps waiting on a shared database read
// do not hold up the others for long.
func defaultWorkers() int { return max(16, 8*runtime.GOMAXPROCS(0)) }

func (w *workers) loop() {
	for fn := range w.queue {
		fn()
	}
}

// run queues fn, or runs it on a new goroutine when the queue is full: a
// step is never dropped and run never blocks.
func (w *workers) run(fn func()) {
	select {
	case w.queue <- fn:
	default:
		go fn()
	}
}
