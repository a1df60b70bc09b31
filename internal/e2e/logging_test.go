package e2e

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
)

// With log.format json every line is a JSON object, and access lines carry
// the request id that the response header names, and never a query string
// (the deprecated access_token parameter must not reach logs).
func TestJSONAccessLogs(t *testing.T) {
	srv := Start(t, Options{Env: map[string]string{"WEFT_LOG_FORMAT": "json"}})
	resp, err := http.Get(srv.URL + "/_matrix/client/versions?access_token=secret-token-value")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	rid := resp.Header.Get("X-Request-Id")
	waitFor(t, func() bool { return strings.Contains(srv.Output(), rid) })
	found := false
	for _, line := range strings.Split(strings.TrimSpace(srv.Output()), "\n") {
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("log line is not JSON: %q", line)
		}
		if rec["request_id"] == rid {
			found = true
			if rec["path"] != "/_matrix/client/versions" || rec["status"] != float64(200) || rec["route"] != "/_matrix/client/versions" {
				t.Fatalf("access line %v", rec)
			}
		}
	}
	if !found {
		t.Fatal("no access line with the request id")
	}
	if strings.Contains(srv.Output(), "secret-token-value") {
		t.Fatal("a query-string access token reached the logs")
	}
}
