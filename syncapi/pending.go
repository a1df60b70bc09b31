package syncapi

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// Pending is a long-poll with nothing to answer yet. It holds no goroutine
// while it waits: a notifier wake-up, its timer or the service stopping
// starts a goroutine for its next step, so ten thousand idle long-polls
// cost ten thousand small structs, not ten thousand stacks.
//
// Ownership: until Then, the goroutine that called Start owns it. After,
// the fields below mu belong to whoever holds the running flag (one step
// goroutine at a time) and everything under mu is shared with the wake-up
// paths.
type Pending struct {
	s *Service
	// ctx is the request's context without its cancellation: reads fill
	// caches that other requests share.
	ctx      context.Context
	req      Request
	f        *filter
	since    Token // the client's token: a response covers (since, to]
	seen     Token // changes at or below seen were read and filtered out
	deadline time.Time
	l        *Listener // the current registration, nil between steps
	// endPresence ends the user's "syncing" for presence, once, when
	// the long-poll answers or is cancelled.
	endPresence func()
	// endActive ends the device's request for DeviceSyncing (activity.go):
	// answered when finished, not when cancelled.
	endActive func(answered bool)

	mu       sync.Mutex
	done     func(*Response, error)
	timer    *time.Timer
	woken    bool // a wake-up, the timeout or shutdown arrived
	running  bool // a step is running or about to
	finished bool // answered or cancelled: done is never called again
}

// expired reports whether the long-poll must answer now, with or without
// changes.
func (p *Pending) expired() bool {
	select {
	case <-p.s.stopping:
		return true
	default:
		return !time.Now().Before(p.deadline)
	}
}

// listen registers for changes after seen, reporting whether there
// already are some.
func (p *Pending) listen() (bool, error) {
	joined, err := p.s.joinedRooms(p.ctx, p.req.User)
	if err != nil {
		return false, fmt.Errorf("listing joined rooms: %w", err)
	}
	// Register before sampling: a change after this point wakes us.
	var changed bool
	p.l, changed = p.s.n.Listen(p.req.User, joined, p.seen, p.signal)
	return changed, nil
}

// answer reads what changed. again means everything that changed was
// filtered out and the caller should listen again, past what was seen.
func (p *Pending) answer(expired bool) (resp *Response, again bool, err error) {
	p.s.n.Close(p.l)
	p.l = nil
	to := p.s.n.Current()
	if expired && to == p.seen {
		resp = &Response{NextBatch: to.String()}
	} else {
		resp, err = p.s.readShared(p.ctx, p.req, p.f, p.since, to)
		if err != nil {
			return nil, false, err
		}
		if resp.empty() && !expired {
			p.seen = to
			return nil, true, nil
		}
	}
	return resp, false, p.s.complete(p.ctx, p.req, resp)
}

// signal is the wake-up of the notifier, the timer and shutdown. The
// notifier calls it under its lock, so it only schedules.
func (p *Pending) signal() {
	p.mu.Lock()
	p.woken = true
	run := p.done != nil && !p.running && !p.finished
	p.running = p.running || run
	p.mu.Unlock()
	if run {
		p.s.workers.run(p.step)
	}
}

// step answers, or registers again when a wake-up found only changes the
// request's filter drops. Wake-ups during a step are not lost: they set
// woken, which the step checks before giving up the running flag.
func (p *Pending) step() {
	for {
		p.mu.Lock()
		p.woken = false
		cancelled := p.finished
		p.mu.Unlock()
		if cancelled {
			p.finish(nil, nil)
			return
		}
		resp, again, err := p.answer(p.expired())
		if again {
			var changed bool
			if changed, err = p.listen(); err == nil {
				// Shutdown wakes registered listeners only: check it
				// after registering.
				expired := p.expired()
				p.mu.Lock()
				idle := !changed && !p.woken && !p.finished && !expired
				p.running = !idle
				p.mu.Unlock()
				if idle {
					return
				}
				continue
			}
		}
		p.finish(resp, err)
		return
	}
}

// finish answers once, unless the request was cancelled, and unregisters.
func (p *Pending) finish(resp *Response, err error) {
	p.mu.Lock()
	done, cancelled := p.done, p.finished
	p.finished = true
	if p.timer != nil {
		p.timer.Stop()
	}
	p.mu.Unlock()
	if p.l != nil {
		p.s.n.Close(p.l)
		p.l = nil
	}
	if !cancelled {
		// A cancelled poll's presence and activity ended with Cancel.
		p.endPresence()
		p.endActive(err == nil)
		done(resp, err)
	}
}

// Then hands the long-poll a callback and lets the caller's goroutine go.
// done is called once, on another goroutine, with the response.
func (p *Pending) Then(done func(*Response, error)) {
	p.mu.Lock()
	p.done = done
	p.timer = time.AfterFunc(time.Until(p.deadline), p.signal)
	run := p.woken
	p.running = run
	p.mu.Unlock()
	if run {
		p.s.workers.run(p.step)
	}
}

// Wait holds the caller's goroutine until the answer or ctx's end.
func (p *Pending) Wait(ctx context.Context) (*Response, error) {
	type result struct {
		resp *Response
		err  error
	}
	ch := make(chan result, 1)
	p.Then(func(resp *Response, err error) { ch <- result{resp, err} })
	select {
	case r := <-ch:
		return r.resp, r.err
	case <-ctx.Done():
		p.Cancel()
		return nil, ctx.Err()
	}
}

// Cancel drops the long-poll: its callback is not called. A step already
// running finishes its read and then cleans up.
func (p *Pending) Cancel() {
	p.mu.Lock()
	if p.finished {
		p.mu.Unlock()
		return
	}
	p.finished = true
	p.endPresence()
	p.endActive(false)
	owner := !p.running
	p.running = true // no step may start now
	if p.timer != nil {
		p.timer.Stop()
	}
	p.mu.Unlock()
	if owner {
		if p.l != nil {
			p.s.n.Close(p.l)
			p.l = nil
		}
	}
}
