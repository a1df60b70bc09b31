package storage

import (
	"sync"

	"maunium.net/go/mautrix/federation/pdu"
	"maunium.net/go/mautrix/id"
)

// pduCache keeps decoded PDUs by event ID. PDUs never change once stored
// (a redaction is recorded beside the event, not in it), so entries never
// go stale; the cache only bounds its size, emptying itself when full. The
// cached PDUs are shared: callers must not modify them.
type pduCache struct {
	mu  sync.Mutex
	max int
	m   map[id.EventID]*pdu.PDU
}

func newPDUCache(max int) *pduCache {
	return &pduCache{max: max, m: make(map[id.EventID]*pdu.PDU)}
}

func (c *pduCache) get(eid id.EventID) *pdu.PDU {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.m[eid]
}

func (c *pduCache) put(eid id.EventID, p *pdu.PDU) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.m) >= c.max {
		clear(c.m)
	}
	c.m[eid] = p
}
