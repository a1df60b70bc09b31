package urlpreview_test

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"

	"golang.org/x/net/dns/dnsmessage"
)

// startDNSStub serves A and AAAA answers for the given names (without the
// trailing dot) over UDP on 127.0.0.1 and returns a pure-Go resolver that
// sends every query there, so no test reaches a real DNS server. Unknown
// names are NXDOMAIN; a known name without records of the asked type is an
// empty NOERROR answer.
func startDNSStub(t *testing.T, records map[string][]string) *net.Resolver {
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
			resp, err := answerDNS(buf[:n], zone)
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

func answerDNS(query []byte, zone map[string][]netip.Addr) ([]byte, error) {
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

// TestDNSStubAnswers checks the stub itself, so a refusal in the SSRF tests
// cannot come from a name that simply failed to resolve.
func TestDNSStubAnswers(t *testing.T) {
	r := startDNSStub(t, map[string][]string{
		"four.weft.test": {"127.0.0.1"},
		"six.weft.test":  {"64:ff9b::a00:1"},
	})
	ctx := context.Background()
	got, err := r.LookupNetIP(ctx, "ip", "four.weft.test")
	if err != nil || len(got) != 1 || got[0].Unmap() != netip.MustParseAddr("127.0.0.1") {
		t.Errorf("four.weft.test = %v, %v", got, err)
	}
	got, err = r.LookupNetIP(ctx, "ip", "six.weft.test")
	if err != nil || len(got) != 1 || got[0] != netip.MustParseAddr("64:ff9b::a00:1") {
		t.Errorf("six.weft.test = %v, %v", got, err)
	}
	_, err = r.LookupNetIP(ctx, "ip", "absent.weft.test")
	var dnsErr *net.DNSError
	if !errors.As(err, &dnsErr) || !dnsErr.IsNotFound {
		t.Errorf("absent.weft.test: err = %v, want not found", err)
	}
}
