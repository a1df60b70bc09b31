package api_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/weftchat/weft/api"
	"github.com/weftchat/weft/storage/pgtest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

type failingDB struct{}

func (failingDB) Ping(context.Context) error { return errors.New("connection refused") }

// /health reflects the real database through the real router.
func TestHealth(t *testing.T) {
	db := pgtest.NewDB(t)
	ok := httptest.NewServer(api.NewRouter(api.Options{Health: db, MaxBodyBytes: 1 << 20}))
	defer ok.Close()
	resp, err := http.Get(ok.URL + "/health")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("healthy db: %v %v", resp.StatusCode, err)
	}
	resp.Body.Close()

	db.Close() // the pool is gone: health must say so
	resp, err = http.Get(ok.URL + "/health")
	if err != nil {
		t.Fatal(err)
	}
	var e struct{ Errcode string }
	_ = json.NewDecoder(resp.Body).Decode(&e)
	resp.Body.Close()
	if resp.StatusCode != 503 || e.Errcode != "M_UNKNOWN" {
		t.Fatalf("closed db: %d %s", resp.StatusCode, e.Errcode)
	}

	bad := httptest.NewServer(api.NewRouter(api.Options{Health: failingDB{}, MaxBodyBytes: 1 << 20}))
	defer bad.Close()
	resp, _ = http.Get(bad.URL + "/health")
	resp.Body.Close()
	if resp.StatusCode != 503 {
		t.Fatalf("failing db: %d", resp.StatusCode)
	}
}

func TestVersionsShape(t *testing.T) {
	srv := httptest.NewServer(api.NewRouter(api.Options{MaxBodyBytes: 1 << 20}))
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/_matrix/client/versions")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Fatalf("content type %q", ct)
	}
	var raw map[string]json.RawMessage
	if err := json.NewDecoder(resp.Body).Decode(&raw); err != nil {
		t.Fatal(err)
	}
	// Required by the spec: versions is an array (never null).
	if string(raw["versions"]) == "null" || raw["versions"][0] != '[' {
		t.Fatalf("versions must be an array: %s", raw["versions"])
	}
	if raw["unstable_features"][0] != '{' {
		t.Fatalf("unstable_features must be an object: %s", raw["unstable_features"])
	}
	// Clients use authenticated media only when v1.11 is advertised.
	var versions []string
	if err := json.Unmarshal(raw["versions"], &versions); err != nil || !slices.Contains(versions, "v1.11") {
		t.Fatalf("versions %v (%v): v1.11 (authenticated media) is missing", versions, err)
	}
}
