package urlpreview

import (
	"errors"
	"fmt"
	"net/netip"
)

// ErrRefused is matched (errors.Is) by every refusal to connect to an address
// the policy does not allow. The concrete error is a *RefusedError.
var ErrRefused = errors.New("urlpreview: address not allowed")

// RefusedError says which address a connection was refused to and why. Its
// message names an internal address, so it belongs in logs, not in a client
// response.
type RefusedError struct {
	Addr   netip.Addr
	Reason string
}

func (e *RefusedError) Error() string {
	return fmt.Sprintf("urlpreview: refusing to connect to %s: %s", e.Addr, e.Reason)
}

// Is makes errors.Is(err, ErrRefused) true for every *RefusedError.
func (e *RefusedError) Is(target error) bool { return target == ErrRefused }

// Policy decides which addresses may be connected to. The zero value (or a nil
// *Policy) applies only the built-in deny list. A Policy is immutable after
// NewPolicy and safe for concurrent use.
type Policy struct {
	allowed []netip.Prefix
	denied  []netip.Prefix
}

// NewPolicy returns a policy with an operator allow-list and extra deny-list.
// An address in allowed is permitted even if the built-in list or denied
// covers it; allowed wins over denied, whatever the prefix lengths.
// Prefixes are masked, and IPv4-mapped IPv6 prefixes (::ffff:10.0.0.0/104)
// are turned into their IPv4 form, so that they match the unmapped addresses
// Check compares them with.
func NewPolicy(allowed, denied []netip.Prefix) *Policy {
	return &Policy{allowed: normalisePrefixes(allowed), denied: normalisePrefixes(denied)}
}

func normalisePrefixes(in []netip.Prefix) []netip.Prefix {
	out := make([]netip.Prefix, 0, len(in))
	for _, p := range in {
		if !p.IsValid() {
			continue
		}
		a := p.Addr().WithZone("")
		bits := p.Bits()
		if a.Is4In6() && bits >= 96 {
			a, bits = a.Unmap(), bits-96
		}
		out = append(out, netip.PrefixFrom(a, bits).Masked())
	}
	return out
}

// Check returns nil if a connection to addr is allowed, else a *RefusedError.
//
// The address is judged as the kernel would route it: an IPv4-mapped IPv6
// address is its IPv4 address, and the IPv4 address embedded in a NAT64,
// 6to4 or Teredo address is judged too, because a translator or relay will
// deliver the packets to it. The allow-list only matches the address itself:
// allowing 10.0.0.0/8 does not allow 64:ff9b::a00:1 (list the NAT64 form to
// allow that). IPv6 zones are ignored (netip prefixes never match a zoned
// address, which would otherwise slip past every range).
func (p *Policy) Check(addr netip.Addr) error {
	a := addr.WithZone("").Unmap()
	if !a.IsValid() {
		return &RefusedError{Addr: addr, Reason: "invalid address"}
	}
	if p.allows(a) {
		return nil
	}
	if reason := builtinDenyReason(a); reason != "" {
		return &RefusedError{Addr: a, Reason: reason}
	}
	if p.denies(a) {
		return &RefusedError{Addr: a, Reason: "in a denied range"}
	}
	kind, v4, ok := embeddedIPv4(a)
	if !ok {
		return nil
	}
	if reason := builtinDenyReason(v4); reason != "" {
		return &RefusedError{Addr: a, Reason: fmt.Sprintf("%s embeds %s, %s", kind, v4, reason)}
	}
	if p.denies(v4) {
		return &RefusedError{Addr: a, Reason: fmt.Sprintf("%s embeds %s, in a denied range", kind, v4)}
	}
	return nil
}

func (p *Policy) allows(a netip.Addr) bool { return p != nil && containsAny(p.allowed, a) }
func (p *Policy) denies(a netip.Addr) bool { return p != nil && containsAny(p.denied, a) }

func containsAny(prefixes []netip.Prefix, a netip.Addr) bool {
	for _, p := range prefixes {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

type namedPrefix struct {
	prefix netip.Prefix
	reason string
}

func mustPrefixes(pairs ...string) []namedPrefix {
	out := make([]namedPrefix, 0, len(pairs)/2)
	for i := 0; i+1 < len(pairs); i += 2 {
		out = append(out, namedPrefix{netip.MustParsePrefix(pairs[i]), pairs[i+1]})
	}
	return out
}

// deniedIPv4 is every IPv4 range that is not globally reachable unicast
// (the IANA special-purpose registry, plus multicast and the reserved class E
// block). 192.0.0.0/24 is refused whole although two of its addresses are
// global anycast: nothing a user links to lives there.
var deniedIPv4 = mustPrefixes(
	"0.0.0.0/8", "this network (unspecified)",
	"10.0.0.0/8", "private (RFC 1918)",
	"100.64.0.0/10", "shared address space (CGNAT)",
	"127.0.0.0/8", "loopback",
	"169.254.0.0/16", "link-local",
	"172.16.0.0/12", "private (RFC 1918)",
	"192.0.0.0/24", "IETF protocol assignments",
	"192.0.2.0/24", "documentation (TEST-NET-1)",
	"192.88.99.0/24", "6to4 relay anycast",
	"192.168.0.0/16", "private (RFC 1918)",
	"198.18.0.0/15", "benchmarking",
	"198.51.100.0/24", "documentation (TEST-NET-2)",
	"203.0.113.0/24", "documentation (TEST-NET-3)",
	"224.0.0.0/4", "multicast",
	"255.255.255.255/32", "broadcast",
	"240.0.0.0/4", "reserved",
)

// globalIPv6 is the only IPv6 space handed out as global unicast; everything
// outside it (loopback, unspecified, link-local, unique-local, multicast,
// site-local, discard, the deprecated IPv4-compatible ::/96) is refused,
// except the NAT64 prefixes, judged by the IPv4 address they embed.
var globalIPv6 = netip.MustParsePrefix("2000::/3")

var (
	nat64WellKnown = netip.MustParsePrefix("64:ff9b::/96")
	nat64Local     = netip.MustParsePrefix("64:ff9b:1::/48")
	sixToFour      = netip.MustParsePrefix("2002::/16")
	teredo         = netip.MustParsePrefix("2001::/32")
)

// deniedIPv6 are ranges inside 2000::/3 that are not globally reachable.
var deniedIPv6 = mustPrefixes(
	"2001:2::/48", "benchmarking",
	"2001:10::/28", "ORCHID",
	"2001:20::/28", "ORCHIDv2",
	"2001:db8::/32", "documentation",
	"3fff::/20", "documentation",
)

// nonGlobalIPv6 names the common ranges outside 2000::/3 for clearer logs.
var nonGlobalIPv6 = mustPrefixes(
	"::/128", "unspecified",
	"::1/128", "loopback",
	"::/96", "IPv4-compatible (deprecated)",
	"100::/64", "discard-only",
	"fc00::/7", "unique-local",
	"fe80::/10", "link-local",
	"fec0::/10", "site-local (deprecated)",
	"ff00::/8", "multicast",
)

// builtinDenyReason says why a (zone-less, unmapped) address is never
// connected to, or "" if it is global unicast. Embedded IPv4 addresses are
// the caller's business.
func builtinDenyReason(a netip.Addr) string {
	if a.Is4() {
		for _, d := range deniedIPv4 {
			if d.prefix.Contains(a) {
				return d.reason
			}
		}
		return ""
	}
	if nat64WellKnown.Contains(a) || nat64Local.Contains(a) {
		return ""
	}
	if !globalIPv6.Contains(a) {
		for _, d := range nonGlobalIPv6 {
			if d.prefix.Contains(a) {
				return d.reason
			}
		}
		return "not global unicast"
	}
	for _, d := range deniedIPv6 {
		if d.prefix.Contains(a) {
			return d.reason
		}
	}
	return ""
}

// embeddedIPv4 returns the IPv4 address that traffic to the IPv6 address a
// ends up at through a translator or tunnel.
//
// Limit: 64:ff9b:1::/48 is for local NAT64 deployments, which may use any RFC
// 6052 prefix length of /48 or longer inside it. Only the /96 layout (IPv4 in
// the last 32 bits, what deployments use in practice) is decoded: decoding
// every layout would refuse most legitimate /96 addresses, whose bits read
// under the /48 layout give 0.0.0.0. A network whose NAT64 uses a shorter
// prefix there should put 64:ff9b:1::/48 in DeniedCIDRs.
func embeddedIPv4(a netip.Addr) (kind string, v4 netip.Addr, ok bool) {
	if !a.Is6() {
		return "", netip.Addr{}, false
	}
	b := a.As16()
	switch {
	case nat64WellKnown.Contains(a), nat64Local.Contains(a):
		return "NAT64 address", addr4(b[12], b[13], b[14], b[15]), true
	case sixToFour.Contains(a):
		return "6to4 address", addr4(b[2], b[3], b[4], b[5]), true
	case teredo.Contains(a):
		// The client's address is stored inverted (RFC 4380 section 4).
		return "Teredo address", addr4(^b[12], ^b[13], ^b[14], ^b[15]), true
	}
	return "", netip.Addr{}, false
}

func addr4(a, b, c, d byte) netip.Addr { return netip.AddrFrom4([4]byte{a, b, c, d}) }
