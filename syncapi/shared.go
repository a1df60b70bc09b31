package syncapi

import (
	"context"
	"sync"

	"maunium.net/go/mautrix/id"
)

// Shared responses.
//
// A user's devices that wait with the same token and filter are woken by
// the same change and answer with the same window: the same response,
// but for what only one device gets (its to-device messages, the
// transaction IDs of its own sends, its one-time key counts). One of them
// builds it and encodes it once; the others take a copy that shares the
// encoding and add their key counts (Service.complete). A response with
// something for its device alone is not shared: the others build their
// own.
//
// Only the newest window is kept: a wake-up at a newer position drops the
// older responses, so what is held is at most one response per user woken
// by the last change. Waiting for another device's build holds no
// database connection (the wait comes before the read opens one), so it
// cannot starve the builder of the pool.

// sharedKey names a response every device of a user gets alike.
type sharedKey struct {
	user  id.UserID
	f     *filter // parsed filters are cached: one text, one pointer
	since Token
	to    Token
}

type sharedEntry struct {
	done chan struct{} // closed when resp is set
	resp *Response     // nil: not shareable (device-only content or an error)
}

// maxShared bounds the responses of one window.
const maxShared = 100_000

type sharedResponses struct {
	mu sync.Mutex
	to Token // the window the entries are for
	m  map[sharedKey]*sharedEntry
}

// begin finds k's entry, or makes one the caller must finish (owner).
// nil: k is for an older window than the newest seen, or the window is
// full; the caller reads for itself.
func (c *sharedResponses) begin(k sharedKey) (e *sharedEntry, owner bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if k.to != c.to {
		// Tokens sampled later are at or after earlier ones in both
		// parts: the notifier's position and the typing serial only grow.
		if k.to.Pos < c.to.Pos || k.to.Pos == c.to.Pos && k.to.Typing < c.to.Typing {
			return nil, false
		}
		c.to, c.m = k.to, map[sharedKey]*sharedEntry{}
	}
	if e := c.m[k]; e != nil {
		return e, false
	}
	if len(c.m) >= maxShared {
		return nil, false
	}
	e = &sharedEntry{done: make(chan struct{})}
	c.m[k] = e
	return e, true
}

// readShared is read for a long-poll with a token: it builds the response
// once for all the user's devices waiting with the same token and filter.
// The result is the caller's own copy.
func (s *Service) readShared(ctx context.Context, req Request, f *filter, since Token, to Token) (*Response, error) {
	if req.Device == "" || s.n.userChangedAfter(req.User, KindToDevice, since.Pos) {
		// To-device messages are per device.
		return s.read(ctx, req, f, &since, to)
	}
	e, owner := s.shared.begin(sharedKey{user: req.User, f: f, since: since, to: to})
	switch {
	case e == nil:
		return s.read(ctx, req, f, &since, to)
	case owner:
		var resp *Response
		defer func() {
			e.resp = resp
			close(e.done)
		}()
		own, deviceOnly, err := s.readFor(ctx, req, f, &since, to)
		if err != nil || deviceOnly {
			return own, err
		}
		own.body = &encodedBody{}
		resp = own
		return own.copy(), nil
	default:
		<-e.done
		if e.resp == nil {
			return s.read(ctx, req, f, &since, to)
		}
		s.sharedAnswers.Add(1)
		return e.resp.copy(), nil
	}
}

// SharedAnswers counts the answers taken from another device's build.
func (s *Service) SharedAnswers() uint64 { return s.sharedAnswers.Load() }

// copy is a response to hand to one device: the device's fields are its
// own, everything else (and its encoding) is shared and must not change.
func (r *Response) copy() *Response {
	c := *r
	c.DeviceOneTimeKeysCount, c.DeviceUnusedFallbackKeyTypes = nil, nil
	return &c
}
