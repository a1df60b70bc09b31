// Package e2e starts the real weft binary against a fresh database and lets
// tests drive it over HTTP, with mautrix's client or raw requests.
package e2e

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"maunium.net/go/mautrix"

	"github.com/weftchat/weft/storage/pgtest"
)

// build compiles cmd/weft once per test binary.
var build struct {
	once sync.Once
	path string
	err  error
}

// Binary returns the path of a freshly built weft binary.
func Binary(t testing.TB) string {
	t.Helper()
	build.once.Do(func() {
		_, file, _, _ := runtime.Caller(0)
		root := filepath.Join(filepath.Dir(file), "..", "..")
		dir, err := os.MkdirTemp("", "weft-e2e-bin-")
		if err != nil {
			build.err = err
			return
		}
		build.path = filepath.Join(dir, "weft")
		cmd := exec.Command("go", "build", "-o", build.path, "./cmd/weft")
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "GOTOOLCHAIN=auto")
		if out, err := cmd.CombinedOutput(); err != nil {
			build.err = fmt.Errorf("go build ./cmd/weft: %v\n%s", err, out)
		}
	})
	if build.err != nil {
		t.Fatal(build.err)
	}
	return build.path
}

// Options configures one server.
type Options struct {
	// Env adds environment variables (WEFT_...). WEFT_LISTEN, WEFT_SERVER_NAME
	// and WEFT_DATABASE_URL get defaults unless set here; set
	// WEFT_DATABASE_URL to "" to use the embedded default.
	Env map[string]string
	// Config, when not empty, is written to a file passed with -c.
	Config string
	// DataDir defaults to a fresh temporary directory.
	DataDir string
}

// Server is a running weft process.
type Server struct {
	t       testing.TB
	cmd     *exec.Cmd
	URL     string
	Addr    string
	DataDir string
	out     *syncBuffer
	exited  chan struct{}
	exitErr error
}

// Start runs the binary and waits until /health answers 200.
func Start(t testing.TB, opts Options) *Server {
	t.Helper()
	s, err := StartErr(t, opts)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// StartErr is Start returning start-up failure instead of failing the test.
func StartErr(t testing.TB, opts Options) (*Server, error) {
	t.Helper()
	bin := Binary(t)
	addr := freeAddr(t)
	dataDir := opts.DataDir
	if dataDir == "" {
		dataDir = TempDir(t)
	}
	env := map[string]string{
		"WEFT_LISTEN":       addr,
		"WEFT_SERVER_NAME":  "localhost",
		"WEFT_DATA_DIR":     dataDir,
		"WEFT_DATABASE_URL": "",
	}
	if _, ok := opts.Env["WEFT_DATABASE_URL"]; !ok {
		env["WEFT_DATABASE_URL"] = pgtest.NewDatabase(t)
	}
	for k, v := range opts.Env {
		env[k] = v
	}
	args := []string{"serve"}
	if opts.Config != "" {
		p := filepath.Join(t.TempDir(), "weft.yaml")
		if err := os.WriteFile(p, []byte(opts.Config), 0o600); err != nil {
			return nil, err
		}
		args = append(args, "-c", p)
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = cleanEnv()
	for k, v := range env {
		if v != "" {
			cmd.Env = append(cmd.Env, k+"="+v)
		}
	}
	out := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	s := &Server{t: t, cmd: cmd, URL: "http://" + addr, Addr: addr, DataDir: dataDir, out: out, exited: make(chan struct{})}
	go func() {
		s.exitErr = cmd.Wait()
		close(s.exited)
	}()
	t.Cleanup(func() {
		s.Stop()
		if t.Failed() {
			t.Logf("weft output:\n%s", s.Output())
		}
	})
	if err := s.waitHealthy(90 * time.Second); err != nil {
		return s, err
	}
	return s, nil
}

// cleanEnv is the test's environment without WEFT_ settings, so a developer's
// own WEFT_* variables cannot change what a test starts.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "WEFT_") {
			env = append(env, kv)
		}
	}
	return env
}

func (s *Server) waitHealthy(limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		select {
		case <-s.exited:
			return fmt.Errorf("weft exited during start-up (%v):\n%s", s.exitErr, s.Output())
		default:
		}
		resp, err := http.Get(s.URL + "/health")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("weft not healthy after %s:\n%s", limit, s.Output())
}

// Client returns an unauthenticated mautrix client for this server.
func (s *Server) Client() *mautrix.Client {
	s.t.Helper()
	c, err := mautrix.NewClient(s.URL, "", "")
	if err != nil {
		s.t.Fatal(err)
	}
	return c
}

// Signal sends sig to the process.
func (s *Server) Signal(sig os.Signal) { _ = s.cmd.Process.Signal(sig) }

// Wait waits for the process to exit and returns its exit code (-1 if it was
// killed by a signal, or did not exit within limit).
func (s *Server) Wait(limit time.Duration) int {
	select {
	case <-s.exited:
	case <-time.After(limit):
		return -1
	}
	if s.cmd.ProcessState == nil {
		return -1
	}
	return s.cmd.ProcessState.ExitCode()
}

// Exited reports whether the process has ended.
func (s *Server) Exited() bool {
	select {
	case <-s.exited:
		return true
	default:
		return false
	}
}

// Stop ends the server gracefully, killing it if it takes over 30 s.
func (s *Server) Stop() {
	if s.Exited() {
		return
	}
	s.Signal(syscall.SIGTERM)
	if s.Wait(30*time.Second) == -1 && !s.Exited() {
		_ = s.cmd.Process.Kill()
		<-s.exited
	}
}

// Output is everything the process printed so far.
func (s *Server) Output() string { return s.out.String() }

// TempDir makes a directory the embedded cluster's account can enter (t.TempDir
// is 0700 under a root-owned parent, which postgres cannot traverse).
func TempDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "weft-e2e-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	return dir
}

func freeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// Run runs the binary with args and env to completion (for CLI subcommands
// and start-up failures), returning its combined output and exit code.
func Run(t testing.TB, env map[string]string, args ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, Binary(t), args...)
	cmd.Env = cleanEnv()
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	out, _ := cmd.CombinedOutput()
	return string(out), cmd.ProcessState.ExitCode()
}

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
