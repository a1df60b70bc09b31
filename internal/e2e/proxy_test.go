package e2e

import (
	"net/http"
	"strings"
	"testing"
)

// Behind a trusted proxy each client has its own login bucket; without the
// setting, X-Forwarded-For is ignored and a forged header buys nothing.
func TestRateLimitsBehindTrustedProxy(t *testing.T) {
	login := func(srv *Server, xff string) int {
		req, _ := http.NewRequest("POST", srv.URL+"/_matrix/client/v3/login",
			strings.NewReader(`{"type":"m.login.password","identifier":{"type":"m.id.user","user":"nobody"},"password":"x"}`))
		req.Header.Set("X-Forwarded-For", xff)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	limits := map[string]string{
		"WEFT_RATE_LIMITS_ENABLED": "true", "WEFT_RATE_LIMITS_LOGIN_PER_SECOND": "0.001", "WEFT_RATE_LIMITS_LOGIN_BURST": "1",
	}
	proxied := startAccounts(t, mergeEnv(limits, map[string]string{"WEFT_HTTP_TRUSTED_PROXIES": "127.0.0.1"}))
	if got := login(proxied, "203.0.113.1"); got != 403 {
		t.Fatalf("first client: %d", got)
	}
	if got := login(proxied, "203.0.113.2"); got != 403 {
		t.Fatalf("second client shares the first one's bucket: %d", got)
	}
	if got := login(proxied, "203.0.113.1"); got != 429 {
		t.Fatalf("first client again: %d, want 429", got)
	}

	direct := startAccounts(t, limits)
	if got := login(direct, "203.0.113.1"); got != 403 {
		t.Fatalf("first request: %d", got)
	}
	if got := login(direct, "203.0.113.2"); got != 429 {
		t.Fatalf("a forged X-Forwarded-For escaped the limit: %d", got)
	}
}

func mergeEnv(a, b map[string]string) map[string]string {
	out := map[string]string{}
	for k, v := range a {
		out[k] = v
	}
	for k, v := range b {
		out[k] = v
	}
	return out
}
