package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"go.yaml.in/yaml/v3"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// Helpers shared by the end-to-end tests. Keep them general; test files add
// their own helpers, with names specific to their area, for what only they
// need.

// --- servers and accounts ---------------------------------------------------

// accountsEnv is the environment of a server for account tests: open
// registration, a cheap bcrypt cost so tests stay fast, rate limits off.
// Tests that exercise limits or lockout override these.
func accountsEnv(extra map[string]string) map[string]string {
	env := map[string]string{
		"WEFT_REGISTRATION_MODE":     "open",
		"WEFT_PASSWORDS_BCRYPT_COST": "4",
		"WEFT_RATE_LIMITS_ENABLED":   "false",
	}
	for k, v := range extra {
		env[k] = v
	}
	return env
}

// startAccounts starts a server with accountsEnv(extra).
func startAccounts(t *testing.T, extra map[string]string) *Server {
	t.Helper()
	return Start(t, Options{Env: accountsEnv(extra)})
}

// registerUser registers localpart through the dummy UIA flow with mautrix
// and returns a client holding its access token.
func registerUser(t *testing.T, srv *Server, localpart, password string) *mautrix.Client {
	t.Helper()
	cli := srv.Client()
	resp, err := cli.RegisterDummy(context.Background(), &mautrix.ReqRegister[any]{Username: localpart, Password: password})
	if err != nil {
		t.Fatalf("registering %s: %v", localpart, err)
	}
	cli.SetCredentials(resp.UserID, resp.AccessToken)
	cli.DeviceID = resp.DeviceID
	return cli
}

// loginWith logs user in with a password through mautrix and returns a
// client holding the new session.
func loginWith(t *testing.T, srv *Server, user, password string) *mautrix.Client {
	t.Helper()
	cli := srv.Client()
	_, err := cli.Login(context.Background(), &mautrix.ReqLogin{
		Type:             mautrix.AuthTypePassword,
		Identifier:       mautrix.UserIdentifier{Type: mautrix.IdentifierTypeUser, User: user},
		Password:         password,
		StoreCredentials: true,
	})
	if err != nil {
		t.Fatalf("login as %s: %v", user, err)
	}
	return cli
}

// whoami calls /account/whoami with token as a bearer token.
func whoami(t *testing.T, srv *Server, token string) rawResponse {
	t.Helper()
	return doJSON(t, "GET", srv.URL+"/_matrix/client/v3/account/whoami", token, nil)
}

// withDB runs f with a connection to the server's database at dbURL, closed
// when f returns.
func withDB(t *testing.T, dbURL string, f func(ctx context.Context, conn *pgx.Conn)) {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	f(ctx, conn)
}

// --- rooms --------------------------------------------------------------------

// createRoom creates a room with mautrix.
func createRoom(t *testing.T, cli *mautrix.Client, req *mautrix.ReqCreateRoom) id.RoomID {
	t.Helper()
	resp, err := cli.CreateRoom(context.Background(), req)
	if err != nil {
		t.Fatalf("%s creating a room: %v", cli.UserID, err)
	}
	return resp.RoomID
}

// createRoomRaw creates a room from a raw request body, for the fields whose
// exact JSON matters (initial_state, creation_content,
// power_level_content_override).
func createRoomRaw(t *testing.T, srv *Server, cli *mautrix.Client, body map[string]any) id.RoomID {
	t.Helper()
	r := doJSON(t, "POST", clientURL(srv, "v3", "createRoom"), cli.AccessToken, body)
	r.wantOK(t)
	rid, _ := r.Body["room_id"].(string)
	if rid == "" {
		t.Fatalf("createRoom answered no room_id: %s", r.Raw)
	}
	return id.RoomID(rid)
}

// joinRoom joins roomID (by ID) and fails the test on error.
func joinRoom(t *testing.T, cli *mautrix.Client, roomID id.RoomID) {
	t.Helper()
	if _, err := cli.JoinRoomByID(context.Background(), roomID); err != nil {
		t.Fatalf("%s joining %s: %v", cli.UserID, roomID, err)
	}
}

// bodies are the bodies of the m.room.message events among evs, in order.
func bodies(evs []*event.Event) []string {
	var out []string
	for _, e := range evs {
		if e.Type == event.EventMessage {
			b, _ := e.Content.Raw["body"].(string)
			out = append(out, b)
		}
	}
	return out
}

// wantIDs fails unless got is want (event, room or user IDs), in order.
func wantIDs[T ~string](t *testing.T, what string, got []T, want ...T) {
	t.Helper()
	if !slices.Equal(got, want) {
		t.Fatalf("%s: got %v, want %v", what, got, want)
	}
}

// --- raw HTTP -----------------------------------------------------------------

// clientURL joins the client API base (/_matrix/client/ and version: v3, r0,
// v1...) with path segments, escaping each. An empty last segment leaves a
// trailing slash.
func clientURL(srv *Server, version string, segments ...string) string {
	u := srv.URL + "/_matrix/client/" + version
	for _, s := range segments {
		u += "/" + url.PathEscape(s)
	}
	return u
}

// rawResponse is a status and decoded JSON body.
type rawResponse struct {
	Status int
	Header http.Header
	Body   map[string]any
	Raw    []byte
}

// doJSON sends body (marshalled unless it is a string or []byte) with an
// optional bearer token and decodes the JSON answer.
func doJSON(t *testing.T, method, url, token string, body any) rawResponse {
	t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = bytes.NewReader([]byte(b))
	case []byte:
		rd = bytes.NewReader(b)
	default:
		raw, err := json.Marshal(b)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(raw)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out := rawResponse{Status: resp.StatusCode, Header: resp.Header}
	out.Raw, _ = io.ReadAll(resp.Body)
	if len(out.Raw) > 0 && out.Raw[0] == '{' {
		if err := json.Unmarshal(out.Raw, &out.Body); err != nil {
			t.Fatalf("%s %s: invalid JSON %q", method, url, out.Raw)
		}
	}
	return out
}

// wantErr fails unless r is status with errcode.
func (r rawResponse) wantErr(t *testing.T, status int, errcode string) {
	t.Helper()
	if r.Status != status || r.Body["errcode"] != errcode {
		t.Fatalf("got %d %s, want %d %s", r.Status, r.Raw, status, errcode)
	}
}

// wantOK fails unless r is 200.
func (r rawResponse) wantOK(t *testing.T) {
	t.Helper()
	if r.Status != http.StatusOK {
		t.Fatalf("got %d %s, want 200", r.Status, r.Raw)
	}
}

// wantHTTPErr fails unless err, from a mautrix call, is a Matrix error answer
// with status and errcode.
func wantHTTPErr(t *testing.T, err error, status int, errcode string) {
	t.Helper()
	var he mautrix.HTTPError
	if !errors.As(err, &he) || he.Response == nil {
		t.Fatalf("got error %v, want HTTP %d %s", err, status, errcode)
	}
	got := ""
	if he.RespError != nil {
		got = he.RespError.ErrCode
	}
	if he.Response.StatusCode != status || got != errcode {
		t.Fatalf("got %d %s (%s), want %d %s", he.Response.StatusCode, got, he.ResponseBody, status, errcode)
	}
}

// dig walks nested JSON objects; it is nil where a key is missing or a value
// on the way is not an object.
func dig(v any, keys ...string) any {
	for _, k := range keys {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = m[k]
	}
	return v
}

// --- the Matrix specification -------------------------------------------------

// matrixSpecEnv names the data directory of a matrix-spec checkout, for runs
// where it is not at ../shared/matrix-spec beside the repository. Best given
// as an absolute path: a relative one is taken from internal/e2e, where go
// test runs these tests.
const matrixSpecEnv = "WEFT_MATRIX_SPEC_DIR"

// matrixSpecDir is the data directory of the Matrix specification
// (matrix-org/matrix-spec): $WEFT_MATRIX_SPEC_DIR if set, else
// ../shared/matrix-spec/data from the repository root, as CI lays it out. The
// test fails, never skips, when the spec is not there.
func matrixSpecDir(t *testing.T) string {
	t.Helper()
	if dir := os.Getenv(matrixSpecEnv); dir != "" {
		if _, err := os.Stat(filepath.Join(dir, "api", "client-server")); err != nil {
			t.Fatalf("%s=%s is not the data directory of a matrix-spec checkout (no api/client-server in it): %v", matrixSpecEnv, dir, err)
		}
		return dir
	}
	root := repoRoot(t)
	dir := filepath.Join(filepath.Dir(root), "shared", "matrix-spec", "data")
	if _, err := os.Stat(filepath.Join(dir, "api", "client-server")); err != nil {
		t.Fatalf("the Matrix spec is not at %s (a matrix-org/matrix-spec checkout is expected at ../shared/matrix-spec beside the repository %s; or set %s to its data directory): %v",
			dir, root, matrixSpecEnv, err)
	}
	return dir
}

// repoRoot is the directory of weft's go.mod, found from the working directory
// (go test runs a package's tests in the package's directory).
func repoRoot(t *testing.T) string {
	t.Helper()
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for dir := wd; ; dir = filepath.Dir(dir) {
		if mod, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil {
			if !regexp.MustCompile(`(?m)^module\s+github\.com/weftchat/weft\s*$`).Match(mod) {
				t.Fatalf("%s/go.mod is not weft's: the repository root was not found from %s", dir, wd)
			}
			return dir
		}
		if filepath.Dir(dir) == dir {
			t.Fatalf("no go.mod at or above %s: the repository root was not found", wd)
		}
	}
}

// Response shapes against the spec's OpenAPI: a small checker for what the
// client-server files use: $ref (to other files and to #/ fragments such as
// #/components/...), allOf, type (one or a list), enum, pattern, required,
// properties and items.

// specValidate checks body against the response schema of method (get,
// post...) path for status in file of the client-server API.
func specValidate(t *testing.T, body map[string]any, file, path, method, status string) {
	t.Helper()
	dir := filepath.Join(matrixSpecDir(t), "api", "client-server")
	doc := loadYAML(t, filepath.Join(dir, file))
	schema, ok := dig(doc, "paths", path, method, "responses", status, "content", "application/json", "schema").(map[string]any)
	if !ok {
		t.Fatalf("%s: no %s schema for %s %s", file, status, strings.ToUpper(method), path)
	}
	if errs := specCheck(t, specDoc{dir: dir, root: doc}, schema, body, "$"); len(errs) > 0 {
		t.Fatalf("%s %s does not match %s:\n%s\nbody: %v", strings.ToUpper(method), path, file, strings.Join(errs, "\n"), body)
	}
}

// specValidateErr checks an error answer against the spec's error schema.
func specValidateErr(t *testing.T, r rawResponse) {
	t.Helper()
	dir := filepath.Join(matrixSpecDir(t), "api", "client-server", "definitions", "errors")
	schema := loadYAML(t, filepath.Join(dir, "error.yaml"))
	if errs := specCheck(t, specDoc{dir: dir, root: schema}, schema, r.Body, "$"); len(errs) > 0 {
		t.Fatalf("error answer %s: %v", r.Raw, errs)
	}
}

// specDoc is the spec file a schema stands in: its directory, against which
// file $refs resolve, and its root, against which #/ fragments resolve.
type specDoc struct {
	dir  string
	root map[string]any
}

func loadYAML(t *testing.T, path string) map[string]any {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := yaml.Unmarshal(raw, &doc); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return doc
}

// specCheck lists where v, at path at, breaks schema of d.
func specCheck(t *testing.T, d specDoc, schema map[string]any, v any, at string) []string {
	t.Helper()
	if ref, ok := schema["$ref"].(string); ok {
		file, frag, _ := strings.Cut(ref, "#")
		nd := d
		if file != "" {
			p := filepath.Join(d.dir, file)
			nd = specDoc{dir: filepath.Dir(p), root: loadYAML(t, p)}
		}
		target := nd.root
		if frag = strings.Trim(frag, "/"); frag != "" {
			target, _ = dig(nd.root, strings.Split(frag, "/")...).(map[string]any)
		}
		if target == nil {
			return []string{at + ": unresolvable $ref " + ref}
		}
		return specCheck(t, nd, target, v, at)
	}
	var errs []string
	if all, ok := schema["allOf"].([]any); ok {
		for _, sub := range all {
			errs = append(errs, specCheck(t, d, sub.(map[string]any), v, at)...)
		}
	}
	if typ, ok := schema["type"]; ok {
		types := specStrings(typ)
		if !slices.ContainsFunc(types, func(ty string) bool { return specIsType(v, ty) }) {
			return append(errs, fmt.Sprintf("%s: %v is not %s", at, v, strings.Join(types, " or ")))
		}
	}
	if enum, ok := schema["enum"].([]any); ok && !slices.ContainsFunc(enum, func(e any) bool { return fmt.Sprint(e) == fmt.Sprint(v) }) {
		errs = append(errs, fmt.Sprintf("%s: %v not in %v", at, v, enum))
	}
	if pat, ok := schema["pattern"].(string); ok {
		if s, isStr := v.(string); isStr && !regexp.MustCompile(pat).MatchString(s) {
			errs = append(errs, fmt.Sprintf("%s: %q does not match %s", at, s, pat))
		}
	}
	switch val := v.(type) {
	case map[string]any:
		for _, req := range specStrings(schema["required"]) {
			if _, ok := val[req]; !ok {
				errs = append(errs, fmt.Sprintf("%s: required %s missing", at, req))
			}
		}
		props, _ := schema["properties"].(map[string]any)
		for k, sub := range props {
			if x, ok := val[k]; ok {
				if sm, ok := sub.(map[string]any); ok {
					errs = append(errs, specCheck(t, d, sm, x, at+"."+k)...)
				}
			}
		}
	case []any:
		if items, ok := schema["items"].(map[string]any); ok {
			for i, x := range val {
				errs = append(errs, specCheck(t, d, items, x, fmt.Sprintf("%s[%d]", at, i))...)
			}
		}
	}
	return errs
}

// specStrings is a schema value that is one string or a list of them (type,
// required) as a list.
func specStrings(v any) []string {
	switch vv := v.(type) {
	case string:
		return []string{vv}
	case []any:
		out := make([]string, 0, len(vv))
		for _, x := range vv {
			out = append(out, fmt.Sprint(x))
		}
		return out
	}
	return nil
}

// specIsType reports whether v, decoded from JSON, is of the JSON schema type
// typ; a type it does not know matches nothing.
func specIsType(v any, typ string) bool {
	switch typ {
	case "object":
		_, ok := v.(map[string]any)
		return ok
	case "array":
		_, ok := v.([]any)
		return ok
	case "string":
		_, ok := v.(string)
		return ok
	case "boolean":
		_, ok := v.(bool)
		return ok
	case "integer":
		f, ok := v.(float64)
		return ok && f == float64(int64(f))
	case "number":
		_, ok := v.(float64)
		return ok
	case "null":
		return v == nil
	}
	return false
}
