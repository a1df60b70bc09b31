package api

import (
	"net"
	"net/http"
	"net/netip"
	"strings"
)

// realIP replaces a request's RemoteAddr with the client's address when the
// request came through one of the trusted reverse proxies. It walks
// X-Forwarded-For from the right (the entry the nearest proxy appended) and
// takes the first address that is not itself a trusted proxy: entries to
// the left of it were written by the client and prove nothing. With no
// trusted proxies the header is ignored entirely.
func realIP(trusted []netip.Prefix) func(http.Handler) http.Handler {
	isTrusted := func(a netip.Addr) bool {
		for _, p := range trusted {
			if p.Contains(a) {
				return true
			}
		}
		return false
	}
	return func(next http.Handler) http.Handler {
		if len(trusted) == 0 {
			return next
		}
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			peer, err := netip.ParseAddr(clientIP(r))
			if err != nil || !isTrusted(peer.Unmap()) {
				next.ServeHTTP(w, r)
				return
			}
			var hops []string
			for _, v := range r.Header.Values("X-Forwarded-For") {
				hops = append(hops, strings.Split(v, ",")...)
			}
			client := ""
			for i := len(hops) - 1; i >= 0; i-- {
				a, err := netip.ParseAddr(strings.TrimSpace(hops[i]))
				if err != nil {
					break // garbage: trust nothing further left
				}
				client = a.Unmap().String()
				if !isTrusted(a.Unmap()) {
					break
				}
			}
			if client != "" {
				r2 := r.Clone(r.Context())
				r2.RemoteAddr = net.JoinHostPort(client, "0")
				r = r2
			}
			next.ServeHTTP(w, r)
		})
	}
}
