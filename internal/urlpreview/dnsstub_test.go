package urlpreview_test

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"testing"

	"github.com/weftchat/weft/internal/urlpreview/ssrftest"
)

// TestDNSStubAnswers checks the stub itself, so a refusal in the SSRF tests
// cannot come from a name that simply failed to resolve.
func TestDNSStubAnswers(t *testing.T) {
	r := ssrftest.DNS(t, map[string][]string{
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
