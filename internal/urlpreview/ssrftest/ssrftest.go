// Package ssrftest is the kit of the tests that prove URL previews reach
// no private address: a DNS stub that resolves names to chosen addresses
// and a trap listener that counts the connections reaching it. Tests only.
package ssrftest

import (
	"context"
	"net"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"
)

// DNS serves A and AAAA answers for the given names (without the
// trailing dot) over UDP on 127.0.0.1 and returns a pure-Go resolver that
// sends every query there, so no test reaches a real DNS server. Unknown
// names are NXDOMAIN; a known name without records of the asked type is an
// empty NOERROR answer.
func DNS(t testing.TB, records map[string][]string) *net.Resolver {
	t.Helper()
	zone := map[string][]netip.Addr{}
	for name, addrs := range records {
		fqdn := strings.ToLower(name) + "."
		for _, a := range addrs {
			zone[fqdn] = append(zone[fqdn], netip.MustParseAddr(a))
		}
	}
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("DNS stub: %v", err)
	}
	done := make(chan struct{})
	t.Cleanup(func() { pc.Close(); <-done })
	go func() {
		defer close(done)
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			resp, err := answer(buf[:n], zone)
			if err != nil {
				t.Errorf("DNS stub: %v", err)
				continue
			}
			_, _ = pc.WriteTo(resp, from)
		}
	}()
	addr := pc.LocalAddr().String()
	return &net.Resolver{
		PreferGo: true,
		Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "udp", addr)
		},
	}
}

func answer(query []byte, zone map[string][]netip.Addr) ([]byte, error) {
	var p dnsmessage.Parser
	hdr, err := p.Start(query)
	if err != nil {
		return nil, err
	}
	q, err := p.Question()
	if err != nil {
		return nil, err
	}
	addrs, known := zone[strings.ToLower(q.Name.String())]
	rcode := dnsmessage.RCodeSuccess
	if !known {
		rcode = dnsmessage.RCodeNameError
	}
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{
		ID: hdr.ID, Response: true, Authoritative: true, RecursionDesired: hdr.RecursionDesired,
		RecursionAvailable: true, RCode: rcode,
	})
	b.EnableCompression()
	if err := b.StartQuestions(); err != nil {
		return nil, err
	}
	if err := b.Question(q); err != nil {
		return nil, err
	}
	if err := b.StartAnswers(); err != nil {
		return nil, err
	}
	rh := dnsmessage.ResourceHeader{Name: q.Name, Class: dnsmessage.ClassINET, TTL: 1}
	for _, a := range addrs {
		switch {
		case q.Type == dnsmessage.TypeA && a.Is4():
			err = b.AResource(rh, dnsmessage.AResource{A: a.As4()})
		case q.Type == dnsmessage.TypeAAAA && a.Is6():
			err = b.AAAAResource(rh, dnsmessage.AAAAResource{AAAA: a.As16()})
		}
		if err != nil {
			return nil, err
		}
	}
	return b.Finish()
}

// Trap is a listener that counts the connections reaching it: a refused
// fetch must not connect at all.
type Trap struct {
	ln       net.Listener
	accepted atomic.Int64
}

// NewTrap listens on addr until the test ends.
func NewTrap(t testing.TB, network, addr string) *Trap {
	t.Helper()
	ln, err := net.Listen(network, addr)
	if err != nil {
		t.Fatalf("trap listener on %s: %v", addr, err)
	}
	tr := &Trap{ln: ln}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			tr.accepted.Add(1)
			c.Close()
		}
	}()
	t.Cleanup(func() { ln.Close(); <-done })
	return tr
}

// Port is the trap's TCP port.
func (tr *Trap) Port() int { return tr.ln.Addr().(*net.TCPAddr).Port }

// Addr is the trap's address.
func (tr *Trap) Addr() net.Addr { return tr.ln.Addr() }

// Accepted is how many connections reached the trap.
func (tr *Trap) Accepted() int64 { return tr.accepted.Load() }

// WantReachable proves a zero count means something: the trap does count
// a connection that is made.
func (tr *Trap) WantReachable(t testing.TB) {
	t.Helper()
	before := tr.accepted.Load()
	c, err := net.Dial(tr.ln.Addr().Network(), tr.ln.Addr().String())
	if err != nil {
		t.Fatalf("dialling the trap: %v", err)
	}
	c.Close()
	deadline := time.Now().Add(5 * time.Second)
	for tr.accepted.Load() == before {
		if time.Now().After(deadline) {
			t.Fatal("the trap did not count a direct connection")
		}
		time.Sleep(5 * time.Millisecond)
	}
}
