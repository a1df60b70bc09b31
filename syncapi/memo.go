package syncapi

import (
	"sync"
	"time"
)

// memo remembers the results of reads that never change (results for
// fixed stream positions), shared by every request, so that a thousand
// devices woken by one message read it once. Concurrent misses of one key
// wait for a single load. Entries expire after ttl; when the memo holds
// max entries it starts afresh (a crude bound, cheap to keep).
type memo[K comparable, V any] struct {
	mu  sync.Mutex
	m   map[K]*memoEntry[V]
	ttl time.Duration
	max int
}

type memoEntry[V any] struct {
	done chan struct{} // closed when v and err are set
	v    V
	err  error
	at   time.Time
}

func newMemo[K comparable, V any](ttl time.Duration, max int) *memo[K, V] {
	return &memo[K, V]{m: map[K]*memoEntry[V]{}, ttl: ttl, max: max}
}

// get returns the value for k, loading it with load on a miss.
func (c *memo[K, V]) get(k K, load func() (V, error)) (V, error) {
	return c.getOrLoad(k, false, load)
}

// getOrLoad is get, except that with noWait, when another caller is
// loading k, it does not wait for that load but loads for itself (and
// keeps the result to itself): see shared.
func (c *memo[K, V]) getOrLoad(k K, noWait bool, load func() (V, error)) (V, error) {
	now := time.Now()
	c.mu.Lock()
	e, ok := c.m[k]
	if ok && now.Sub(e.at) > c.ttl {
		ok = false
	}
	if !ok {
		if len(c.m) >= c.max {
			clear(c.m)
		}
		e = &memoEntry[V]{done: make(chan struct{}), at: now}
		c.m[k] = e
		c.mu.Unlock()
		e.v, e.err = load()
		if e.err != nil {
			// Do not remember failures: the next request tries again.
			c.mu.Lock()
			if c.m[k] == e {
				delete(c.m, k)
			}
			c.mu.Unlock()
		}
		close(e.done)
		return e.v, e.err
	}
	c.mu.Unlock()
	if noWait {
		select {
		case <-e.done:
		default:
			return load()
		}
	}
	<-e.done
	return e.v, e.err
}

// peek returns a loaded, unexpired value without loading.
func (c *memo[K, V]) peek(k K) (V, bool) {
	c.mu.Lock()
	e, ok := c.m[k]
	c.mu.Unlock()
	var zero V
	if !ok || time.Since(e.at) > c.ttl {
		return zero, false
	}
	select {
	case <-e.done:
		return e.v, e.err == nil
	default:
		return zero, false
	}
}

// put stores a loaded value.
func (c *memo[K, V]) put(k K, v V) {
	e := &memoEntry[V]{done: make(chan struct{}), v: v, at: time.Now()}
	close(e.done)
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.m) >= c.max {
		clear(c.m)
	}
	c.m[k] = e
}

// latest keeps, per key, the value put with the highest position, for
// values that can be carried forward from an older position (unread
// counts: unread.go). Entries expire after ttl; when it holds max entries
// it starts afresh.
type latest[K comparable, V any] struct {
	mu  sync.Mutex
	m   map[K]latestEntry[V]
	ttl time.Duration
	max int
}

type latestEntry[V any] struct {
	pos int64
	v   V
	at  time.Time
}

func newLatest[K comparable, V any](ttl time.Duration, max int) *latest[K, V] {
	return &latest[K, V]{m: map[K]latestEntry[V]{}, ttl: ttl, max: max}
}

// get returns the value for k and the position it was put with.
func (c *latest[K, V]) get(k K) (pos int64, v V, ok bool) {
	c.mu.Lock()
	e, ok := c.m[k]
	c.mu.Unlock()
	if !ok || time.Since(e.at) > c.ttl {
		return 0, v, false
	}
	return e.pos, e.v, true
}

// put stores v for k at pos, unless a value at a higher position is
// there: concurrent requests may finish out of order.
func (c *latest[K, V]) put(k K, pos int64, v V) {
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.m[k]; ok && e.pos > pos && now.Sub(e.at) <= c.ttl {
		return
	}
	if len(c.m) >= c.max {
		clear(c.m)
	}
	c.m[k] = latestEntry[V]{pos: pos, v: v, at: now}
}
