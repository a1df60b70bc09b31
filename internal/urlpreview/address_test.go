package urlpreview_test

import (
	"errors"
	"net/netip"
	"testing"

	"github.com/weftchat/weft/internal/urlpreview"
)

func TestPolicyBuiltinRanges(t *testing.T) {
	denied := []string{
		// IPv4 special-purpose ranges, both ends where it matters.
		"0.0.0.0", "0.1.2.3", "0.255.255.255",
		"10.0.0.1", "10.255.255.255",
		"100.64.0.1", "100.127.255.255",
		"127.0.0.1", "127.255.255.254",
		"169.254.0.1", "169.254.169.254",
		"172.16.0.1", "172.31.255.255",
		"192.0.0.8",
		"192.0.2.1", "198.51.100.7", "203.0.113.9",
		"192.88.99.1",
		"192.168.0.1", "192.168.255.255",
		"198.18.0.1", "198.19.255.255",
		"224.0.0.1", "239.255.255.250",
		"240.0.0.1", "255.255.255.255",
		// IPv6 outside global unicast.
		"::", "::1", "::7f00:1", "100::1",
		"fe80::1", "fe80::1%eth0", "febf::1", "fec0::1",
		"fc00::1", "fd12:3456:789a::1",
		"ff02::1", "ff0e::1",
		"4000::1", "5f00::1", "::ffff:0:7f00:1",
		// Non-global ranges inside 2000::/3.
		"2001:db8::1", "3fff::1", "2001:2::1", "2001:10::1", "2001:20::1",
		// IPv4-mapped: judged as the IPv4 address.
		"::ffff:127.0.0.1", "::ffff:10.0.0.1", "::ffff:169.254.169.254", "::ffff:0.0.0.0", "::ffff:192.168.1.1",
		// NAT64, well-known and local-use prefixes, embedding private IPv4.
		"64:ff9b::7f00:1", "64:ff9b::a00:1", "64:ff9b::a9fe:a9fe", "64:ff9b::c0a8:101",
		"64:ff9b:1::a00:1", "64:ff9b:1:abcd::7f00:1",
		// 6to4 of 127.0.0.1, 10.0.0.1, 192.168.1.1.
		"2002:7f00:1::1", "2002:a00:1::", "2002:c0a8:101:1::1",
		// Teredo whose (inverted) client address is 127.0.0.1 / 10.0.0.1.
		"2001:0:5ef5:79fd::80ff:fffe", "2001:0:5ef5:79fd::f5ff:fffe",
	}
	allowed := []string{
		"8.8.8.8", "1.1.1.1", "9.9.9.9", "93.184.215.14",
		"11.0.0.1", "100.63.255.255", "100.128.0.1", "126.255.255.255", "128.0.0.1",
		"169.253.255.255", "172.15.255.255", "172.32.0.1", "192.0.3.1", "192.167.255.255",
		"192.169.0.1", "198.17.255.255", "198.20.0.1", "223.255.255.255",
		"2001:4860:4860::8888", "2606:4700:4700::1111", "2a00:1450:4001::200e",
		"::ffff:8.8.8.8",
		"64:ff9b::808:808", "64:ff9b:1::808:808",
		"2002:808:808::1",
		"2001:0:5ef5:79fd::f7f7:f7f7", // Teredo client 8.8.8.8
	}
	var p *urlpreview.Policy // nil: built-in list only
	for _, s := range denied {
		err := p.Check(netip.MustParseAddr(s))
		var refused *urlpreview.RefusedError
		if !errors.Is(err, urlpreview.ErrRefused) || !errors.As(err, &refused) || refused.Reason == "" {
			t.Errorf("%s: Check = %v, want a refusal with a reason", s, err)
		}
	}
	for _, s := range allowed {
		if err := p.Check(netip.MustParseAddr(s)); err != nil {
			t.Errorf("%s: Check = %v, want allowed", s, err)
		}
	}
}

func TestPolicyAllowAndDenyLists(t *testing.T) {
	p := urlpreview.NewPolicy(
		[]netip.Prefix{
			netip.MustParsePrefix("127.0.0.1/32"),
			netip.MustParsePrefix("10.1.0.0/16"),
			netip.MustParsePrefix("::ffff:192.168.7.0/120"), // mapped form, normalised
			netip.MustParsePrefix("fd00:1::5/64"),           // unmasked, normalised
		},
		[]netip.Prefix{
			netip.MustParsePrefix("8.8.4.0/24"),
			netip.MustParsePrefix("10.1.2.0/24"), // inside an allowed range: allow wins
			netip.MustParsePrefix("2606:4700::/32"),
		},
	)
	cases := []struct {
		addr string
		ok   bool
	}{
		{"127.0.0.1", true},
		{"::ffff:127.0.0.1", true},
		{"127.0.0.2", false},
		{"10.1.2.3", true},
		{"10.2.0.1", false},
		{"192.168.7.9", true},
		{"192.168.8.1", false},
		{"fd00:1::1", true},
		{"fd00:1::1%eth0", true},
		{"fd00:2::1", false},
		{"8.8.4.4", false},
		{"::ffff:8.8.4.4", false},
		{"64:ff9b::808:404", false}, // NAT64 of an extra-denied address
		{"8.8.8.8", true},
		{"2606:4700:4700::1111", false},
		// The allow-list matches the dialled address, not the IPv4 address
		// a NAT64 address embeds.
		{"64:ff9b::a01:203", false},
		{"64:ff9b::7f00:1", false},
		{"::1", false},
	}
	for _, c := range cases {
		err := p.Check(netip.MustParseAddr(c.addr))
		if c.ok && err != nil {
			t.Errorf("%s: Check = %v, want allowed", c.addr, err)
		}
		if !c.ok && !errors.Is(err, urlpreview.ErrRefused) {
			t.Errorf("%s: Check = %v, want refused", c.addr, err)
		}
	}
	if err := p.Check(netip.Addr{}); !errors.Is(err, urlpreview.ErrRefused) {
		t.Errorf("zero Addr: Check = %v, want refused", err)
	}
}
