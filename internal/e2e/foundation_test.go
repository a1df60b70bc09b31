package e2e

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"maunium.net/go/mautrix"

	"github.com/weftchat/weft/storage/pgtest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// getJSON fetches url and decodes a JSON body into out (if non-nil).
func getJSON(t *testing.T, method, url string, body io.Reader, out any) *http.Response {
	t.Helper()
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			t.Fatalf("%s %s: body %q is not JSON: %v", method, url, raw, err)
		}
	}
	return resp
}

type matrixErr struct {
	Errcode string `json:"errcode"`
	Error   string `json:"error"`
}

func expectError(t *testing.T, method, url string, body io.Reader, status int, errcode string) {
	t.Helper()
	var e matrixErr
	resp := getJSON(t, method, url, body, &e)
	if resp.StatusCode != status || e.Errcode != errcode || e.Error == "" {
		t.Fatalf("%s %s: got %d %+v, want %d %s with a message", method, url, resp.StatusCode, e, status, errcode)
	}
}

func TestVersionsAndDiscovery(t *testing.T) {
	srv := Start(t, Options{Config: `
public_baseurl: https://matrix.example.org/
well_known: {server: "matrix.example.org:443"}
support:
  page: https://help.example.org/
  contacts:
    - {matrix_id: "@admin:example.org", email_address: admin@example.org, role: m.role.admin}
`})
	cli := srv.Client()
	versions, err := cli.Versions(context.Background())
	if err != nil {
		t.Fatalf("mautrix Versions: %v", err)
	}
	if versions.UnstableFeatures == nil {
		t.Fatalf("unstable_features missing: %+v", versions)
	}

	var wk mautrix.ClientWellKnown
	if resp := getJSON(t, "GET", srv.URL+"/.well-known/matrix/client", nil, &wk); resp.StatusCode != 200 {
		t.Fatalf("well-known client status %d", resp.StatusCode)
	}
	if wk.Homeserver.BaseURL != "https://matrix.example.org" {
		t.Fatalf("base_url %q", wk.Homeserver.BaseURL)
	}

	var ws map[string]string
	getJSON(t, "GET", srv.URL+"/.well-known/matrix/server", nil, &ws)
	if ws["m.server"] != "matrix.example.org:443" {
		t.Fatalf("well-known server %v", ws)
	}

	var support struct {
		Contacts []struct {
			MatrixID string `json:"matrix_id"`
			Email    string `json:"email_address"`
			Role     string `json:"role"`
		} `json:"contacts"`
		SupportPage string `json:"support_page"`
	}
	getJSON(t, "GET", srv.URL+"/.well-known/matrix/support", nil, &support)
	if support.SupportPage != "https://help.example.org/" || len(support.Contacts) != 1 ||
		support.Contacts[0].MatrixID != "@admin:example.org" || support.Contacts[0].Email != "admin@example.org" ||
		support.Contacts[0].Role != "m.role.admin" {
		t.Fatalf("support document %+v", support)
	}
}

func TestDiscoveryNotConfigured(t *testing.T) {
	srv := Start(t, Options{})
	expectError(t, "GET", srv.URL+"/.well-known/matrix/support", nil, 404, "M_NOT_FOUND")
	expectError(t, "GET", srv.URL+"/.well-known/matrix/server", nil, 404, "M_NOT_FOUND")
	var wk mautrix.ClientWellKnown
	getJSON(t, "GET", srv.URL+"/.well-known/matrix/client", nil, &wk)
	if wk.Homeserver.BaseURL != srv.URL {
		t.Fatalf("loopback listener should advertise %s, got %q", srv.URL, wk.Homeserver.BaseURL)
	}
}

func TestErrorsAndCORS(t *testing.T) {
	srv := Start(t, Options{Env: map[string]string{"WEFT_HTTP_MAX_BODY_BYTES": "2048"}})

	expectError(t, "GET", srv.URL+"/_matrix/client/v3/no/such/endpoint", nil, 404, "M_UNRECOGNIZED")
	expectError(t, "GET", srv.URL+"/nothing-here", nil, 404, "M_UNRECOGNIZED")
	expectError(t, "POST", srv.URL+"/_matrix/client/versions", strings.NewReader("{}"), 405, "M_UNRECOGNIZED")
	expectError(t, "DELETE", srv.URL+"/health", nil, 405, "M_UNRECOGNIZED")
	expectError(t, "POST", srv.URL+"/_matrix/client/versions", strings.NewReader(strings.Repeat("x", 4096)), 413, "M_TOO_LARGE")

	// Preflight on a known path, an unknown one and one that will need
	// auth: answered by the CORS layer without auth or endpoint logic.
	for _, path := range []string{"/_matrix/client/versions", "/_matrix/client/v3/sync", "/anything"} {
		req, _ := http.NewRequest("OPTIONS", srv.URL+path, nil)
		req.Header.Set("Origin", "https://app.element.io")
		req.Header.Set("Access-Control-Request-Method", "POST")
		req.Header.Set("Access-Control-Request-Headers", "authorization, content-type")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Errorf("OPTIONS %s: status %d", path, resp.StatusCode)
		}
		checkCORS(t, "OPTIONS "+path, resp.Header)
	}
	// Ordinary responses, errors included, carry the headers too.
	resp := getJSON(t, "GET", srv.URL+"/_matrix/client/versions", nil, nil)
	checkCORS(t, "GET /versions", resp.Header)
	resp = getJSON(t, "GET", srv.URL+"/nope", nil, nil)
	checkCORS(t, "GET /nope", resp.Header)
	if resp.Header.Get("X-Request-Id") == "" {
		t.Errorf("no X-Request-Id")
	}
}

func checkCORS(t *testing.T, what string, h http.Header) {
	t.Helper()
	if h.Get("Access-Control-Allow-Origin") != "*" {
		t.Errorf("%s: Access-Control-Allow-Origin %q", what, h.Get("Access-Control-Allow-Origin"))
	}
	methods := h.Get("Access-Control-Allow-Methods")
	for _, m := range []string{"GET", "POST", "PUT", "DELETE", "OPTIONS"} {
		if !strings.Contains(methods, m) {
			t.Errorf("%s: Access-Control-Allow-Methods %q lacks %s", what, methods, m)
		}
	}
	headers := h.Get("Access-Control-Allow-Headers")
	for _, want := range []string{"X-Requested-With", "Content-Type", "Authorization"} {
		if !strings.Contains(headers, want) {
			t.Errorf("%s: Access-Control-Allow-Headers %q lacks %s", what, headers, want)
		}
	}
}

func TestMetricsByRoutePattern(t *testing.T) {
	srv := Start(t, Options{})
	getJSON(t, "GET", srv.URL+"/_matrix/client/versions", nil, nil)
	getJSON(t, "GET", srv.URL+"/some/raw/path/that/is/unknown", nil, nil)
	resp, err := http.Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	body := string(raw)
	for _, want := range []string{
		`weft_http_requests_total{code="200",method="GET",route="/_matrix/client/versions"}`,
		`weft_http_requests_total{code="404",method="GET",route="unmatched"}`,
		`weft_http_request_duration_seconds_bucket{method="GET",route="/_matrix/client/versions"`,
		"weft_db_pool_max_connections",
		"weft_room_batch_stale_heads_total 0",
		"go_goroutines",
		"process_resident_memory_bytes",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if strings.Contains(body, "/some/raw/path") {
		t.Errorf("a raw path leaked into metric labels")
	}
}

// SIGTERM stops accepting connections and the process exits 0 after
// shutting down cleanly.
func TestGracefulShutdown(t *testing.T) {
	srv := Start(t, Options{})
	srv.Signal(syscall.SIGTERM)
	if code := srv.Wait(20 * time.Second); code != 0 {
		t.Fatalf("exit code %d after graceful shutdown:\n%s", code, srv.Output())
	}
	if !strings.Contains(srv.Output(), "shutdown complete") {
		t.Fatalf("no shutdown line:\n%s", srv.Output())
	}
	if _, err := http.Get(srv.URL + "/health"); err == nil {
		t.Errorf("still accepting connections after exit")
	}
}

// With no database configured, weft runs its own PostgreSQL under the data
// directory, stops it on shutdown, and finds the same data on the next start.
func TestEmbeddedPostgres(t *testing.T) {
	dataDir := TempDir(t)
	env := map[string]string{"WEFT_DATABASE_URL": ""}
	srv := Start(t, Options{Env: env, DataDir: dataDir})
	if _, err := os.Stat(filepath.Join(dataDir, "postgres", "PG_VERSION")); err != nil {
		t.Fatalf("no cluster under the data dir: %v", err)
	}
	if _, err := srv.Client().Versions(context.Background()); err != nil {
		t.Fatal(err)
	}
	srv.Signal(syscall.SIGTERM)
	if code := srv.Wait(30 * time.Second); code != 0 {
		t.Fatalf("exit code %d:\n%s", code, srv.Output())
	}
	if _, err := os.Stat(filepath.Join(dataDir, "postgres", "postmaster.pid")); !os.IsNotExist(err) {
		t.Fatalf("embedded PostgreSQL still running after shutdown (postmaster.pid: %v)", err)
	}

	// Same data directory, other server name: the database belongs to
	// "localhost", so start-up must refuse with one clear line.
	env2 := map[string]string{"WEFT_DATABASE_URL": "", "WEFT_SERVER_NAME": "other.example"}
	_, err := StartErr(t, Options{Env: env2, DataDir: dataDir})
	if err == nil || !strings.Contains(err.Error(), `belongs to server_name "localhost"`) {
		t.Fatalf("server name change not refused: %v", err)
	}

	// And the original name starts again on the existing cluster.
	srv = Start(t, Options{Env: env, DataDir: dataDir})
	if _, err := srv.Client().Versions(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// After kill -9 the embedded PostgreSQL must not be left holding the data
// directory: the next start works.
func TestEmbeddedPostgresSurvivesKill(t *testing.T) {
	dataDir := TempDir(t)
	env := map[string]string{"WEFT_DATABASE_URL": ""}
	srv := Start(t, Options{Env: env, DataDir: dataDir})
	srv.Signal(syscall.SIGKILL)
	srv.Wait(10 * time.Second)
	srv = Start(t, Options{Env: env, DataDir: dataDir})
	if _, err := srv.Client().Versions(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func TestStartupFailuresAreOneClearLine(t *testing.T) {
	dir := TempDir(t)
	cases := []struct {
		name string
		env  map[string]string
		args []string
		want string
	}{
		{"unknown key", nil, []string{"serve", "-c", writeConfig(t, dir, "listen: 127.0.0.1:0\nlisten_adress: x\n")}, "listen_adress"},
		{"invalid value", map[string]string{"WEFT_LOG_LEVEL": "loud"}, []string{"serve"}, "log.level"},
		{"unknown env", map[string]string{"WEFT_LISTNE": "x"}, []string{"serve"}, "WEFT_LISTNE"},
		{"missing file", nil, []string{"serve", "-c", filepath.Join(dir, "absent.yaml")}, "absent.yaml"},
		{"no postgres binaries", map[string]string{"WEFT_DATA_DIR": dir, "WEFT_DATABASE_EMBEDDED_BIN_DIR": dir}, []string{"serve"}, "database.embedded.bin_dir"},
		{"database unreachable", map[string]string{"WEFT_DATABASE_URL": "postgres://weft@127.0.0.1:1/weft?connect_timeout=2"}, []string{"serve"}, "connecting to PostgreSQL"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			out, code := Run(t, c.env, c.args...)
			if code != 1 {
				t.Fatalf("exit code %d, want 1; output:\n%s", code, out)
			}
			lines := strings.Split(strings.TrimSpace(out), "\n")
			last := lines[len(lines)-1]
			if !strings.HasPrefix(last, "weft: ") || !strings.Contains(last, c.want) {
				t.Fatalf("last line %q does not name %q", last, c.want)
			}
		})
	}
}

func TestCLI(t *testing.T) {
	out, code := Run(t, nil, "version")
	if code != 0 || !strings.HasPrefix(out, "weft ") {
		t.Fatalf("version: %d %q", code, out)
	}
	out, code = Run(t, nil, "generate-config")
	if code != 0 || !strings.Contains(out, "server_name: localhost") {
		t.Fatalf("generate-config: %d %q", code, out)
	}
	// What generate-config prints must be a config serve accepts.
	p := writeConfig(t, TempDir(t), out)
	if out, code := Run(t, map[string]string{"WEFT_LOG_LEVEL": "nonsense"}, "serve", "-c", p); code != 1 || !strings.Contains(out, "log.level") {
		t.Fatalf("env must still override the generated file: %d %s", code, out)
	}
	if _, code := Run(t, nil, "frobnicate"); code != 2 {
		t.Fatalf("unknown command exit %d", code)
	}
}

func writeConfig(t *testing.T, dir, body string) string {
	t.Helper()
	f, err := os.CreateTemp(dir, "cfg-*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(body); err != nil {
		t.Fatal(err)
	}
	return f.Name()
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached in 10s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
