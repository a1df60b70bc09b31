// Package pgserver runs a private PostgreSQL cluster from the server binaries
// installed on the machine: Weft's embedded default when no database URL is
// configured, and the throwaway cluster of storage/pgtest.
//
// The cluster listens on a Unix socket only (listen_addresses is empty), in a
// directory only its owner can enter, so "trust" authentication on that socket
// admits nobody but the cluster's owner and root.
package pgserver

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// Options says where and how to run the cluster.
type Options struct {
	// Dir is the cluster directory (PGDATA). Created and initialised if absent.
	Dir string
	// BinDir holds initdb and postgres. Empty: FindBinDir.
	BinDir string
	// RunAs is the system account used when this process runs as root.
	RunAs string
	// Database is created on first start; URL() points at it.
	Database string
	// Durable false turns off fsync and synchronous_commit: only for tests,
	// where a crash loses nothing anybody wants.
	Durable bool
	// Attach, when a postgres is already running on Dir (a serving Weft's),
	// connects to it instead of waiting for it to stop; Stop then leaves it
	// running. Operator commands use this next to a live server.
	Attach bool
	Logger *slog.Logger
}

// Server is a running cluster.
type Server struct {
	opts    Options
	sockDir string
	cmd     *exec.Cmd
	exited  chan struct{}
	exitErr error
}

// port only names the socket file (.s.PGSQL.<port>); nothing listens on TCP.
const port = 5432

// superuser is the cluster's bootstrap role, independent of the OS account.
const superuser = "weft"

// ErrNoBinaries means no PostgreSQL server binaries were found.
var ErrNoBinaries = errors.New("no PostgreSQL server binaries (initdb, postgres) found: install them (Debian/Ubuntu: apt-get install postgresql; macOS: brew install postgresql@17) or set database.url (WEFT_DATABASE_URL) to an existing server")

// FindBinDir locates initdb and postgres: pg_config --bindir, then the newest
// /usr/lib/postgresql/*/bin (Debian), then Homebrew and PATH.
func FindBinDir() (string, error) {
	var candidates []string
	if out, err := exec.Command("pg_config", "--bindir").Output(); err == nil {
		candidates = append(candidates, strings.TrimSpace(string(out)))
	}
	debian, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(debian, func(i, j int) bool { return pgMajor(debian[i]) > pgMajor(debian[j]) })
	candidates = append(candidates, debian...)
	brew, _ := filepath.Glob("/opt/homebrew/opt/postgresql*/bin")
	brew2, _ := filepath.Glob("/usr/local/opt/postgresql*/bin")
	candidates = append(candidates, brew...)
	candidates = append(candidates, brew2...)
	if p, err := exec.LookPath("postgres"); err == nil {
		candidates = append(candidates, filepath.Dir(p))
	}
	for _, dir := range candidates {
		if isExec(filepath.Join(dir, "initdb")) && isExec(filepath.Join(dir, "postgres")) {
			return dir, nil
		}
	}
	return "", ErrNoBinaries
}

func pgMajor(binDir string) int {
	n, _ := strconv.Atoi(filepath.Base(filepath.Dir(binDir)))
	return n
}

func isExec(p string) bool {
	st, err := os.Stat(p)
	return err == nil && !st.IsDir() && st.Mode()&0o111 != 0
}

// Start initialises the cluster if needed, starts postgres and waits until it
// accepts connections, then makes sure opts.Database exists.
func Start(ctx context.Context, opts Options) (*Server, error) {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Database == "" {
		opts.Database = "weft"
	}
	if opts.BinDir == "" {
		dir, err := FindBinDir()
		if err != nil {
			return nil, err
		}
		opts.BinDir = dir
	} else if !isExec(filepath.Join(opts.BinDir, "initdb")) || !isExec(filepath.Join(opts.BinDir, "postgres")) {
		return nil, fmt.Errorf("%s has no initdb and postgres (config key database.embedded.bin_dir): point it at the PostgreSQL server binaries, leave it empty to search the usual places, or set database.url", opts.BinDir)
	}
	dir, err := filepath.Abs(opts.Dir)
	if err != nil {
		return nil, fmt.Errorf("cluster directory: %w", err)
	}
	opts.Dir = dir
	s := &Server{opts: opts, exited: make(chan struct{})}

	cred, err := credentialFor(opts.RunAs)
	if err != nil {
		return nil, err
	}
	if err := s.initdb(ctx, cred); err != nil {
		return nil, err
	}
	if err := s.prepareSocketDir(cred); err != nil {
		return nil, err
	}
	if opts.Attach && s.alive(ctx) {
		close(s.exited)
		return s, s.ensureDatabase(ctx)
	}
	if err := s.waitForOldPostmaster(ctx); err != nil {
		return nil, err
	}
	if err := s.start(cred); err != nil {
		return nil, err
	}
	if err := s.waitReady(ctx); err != nil {
		_ = s.Stop(context.Background())
		return nil, err
	}
	if err := s.ensureDatabase(ctx); err != nil {
		_ = s.Stop(context.Background())
		return nil, err
	}
	return s, nil
}

// credentialFor returns the account to run PostgreSQL as: nil (this process's
// own) unless we are root, in which case runAs must name an existing account.
func credentialFor(runAs string) (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	if runAs == "" {
		return nil, errors.New("running as root, and PostgreSQL refuses to run as root: set database.embedded.run_as to an unprivileged system account (e.g. postgres)")
	}
	u, err := user.Lookup(runAs)
	if err != nil {
		return nil, fmt.Errorf("running as root, and the account %q that should run the embedded PostgreSQL does not exist: create it (useradd --system %s) or set database.embedded.run_as", runAs, runAs)
	}
	uid, _ := strconv.ParseUint(u.Uid, 10, 32)
	gid, _ := strconv.ParseUint(u.Gid, 10, 32)
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), NoSetGroups: true}, nil
}

func (s *Server) command(cred *syscall.Credential, name string, args ...string) *exec.Cmd {
	cmd := exec.Command(filepath.Join(s.opts.BinDir, name), args...)
	cmd.Env = append(os.Environ(), "LC_ALL=C", "TZ=UTC")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	return cmd
}

// chown gives path to the cluster account (no-op when not root).
func chown(path string, cred *syscall.Credential) error {
	if cred == nil {
		return nil
	}
	if err := os.Chown(path, int(cred.Uid), int(cred.Gid)); err != nil {
		return fmt.Errorf("giving %s to the PostgreSQL account: %w", path, err)
	}
	return nil
}

func (s *Server) initdb(ctx context.Context, cred *syscall.Credential) error {
	if _, err := os.Stat(filepath.Join(s.opts.Dir, "PG_VERSION")); err == nil {
		return nil
	}
	if err := os.MkdirAll(s.opts.Dir, 0o700); err != nil {
		return fmt.Errorf("creating cluster directory: %w", err)
	}
	if err := chown(s.opts.Dir, cred); err != nil {
		return err
	}
	s.opts.Logger.Info("initialising embedded PostgreSQL cluster (first start only)", "dir", s.opts.Dir, "bin_dir", s.opts.BinDir)
	cmd := s.command(cred, "initdb", "-D", s.opts.Dir, "--username="+superuser, "--auth=trust",
		"--encoding=UTF8", "--locale=C", "--no-instructions")
	if !s.opts.Durable {
		cmd.Args = append(cmd.Args, "--no-sync")
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := runCtx(ctx, cmd); err != nil {
		_ = os.RemoveAll(s.opts.Dir) // a half-made cluster would fail every later start
		hint := ""
		if cred != nil {
			hint = " (the account must be able to enter every parent directory of " + s.opts.Dir + ")"
		}
		return fmt.Errorf("initdb failed%s: %w\n%s", hint, err, strings.TrimSpace(out.String()))
	}
	return nil
}

// prepareSocketDir picks the socket directory: <dir>/run, or a short path in
// the temp directory when that would exceed the 107-byte Unix socket path limit.
func (s *Server) prepareSocketDir(cred *syscall.Credential) error {
	sock := filepath.Join(s.opts.Dir, "run")
	if len(sock)+len("/.s.PGSQL.5432") > 100 {
		sum := sha256.Sum256([]byte(s.opts.Dir))
		sock = filepath.Join(os.TempDir(), "weft-pg-"+hex.EncodeToString(sum[:6]))
	}
	if err := os.MkdirAll(sock, 0o700); err != nil {
		return fmt.Errorf("creating socket directory: %w", err)
	}
	if err := os.Chmod(sock, 0o700); err != nil {
		return fmt.Errorf("socket directory: %w", err)
	}
	s.sockDir = sock
	return chown(sock, cred)
}

// waitForOldPostmaster waits for a postgres left over from a previous Weft
// process to finish its shutdown. After a kill -9 of Weft, the kernel sends
// the old postgres SIGINT (Pdeathsig, see start), and its fast shutdown may
// still be running when the new process arrives.
func (s *Server) waitForOldPostmaster(ctx context.Context) error {
	deadline := time.Now().Add(60 * time.Second)
	for {
		pid := postmasterPID(s.opts.Dir)
		if pid <= 0 || syscall.Kill(pid, 0) == syscall.ESRCH {
			return nil // none, or a stale file postgres itself will clean up
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("another PostgreSQL (pid %d) is running on %s: stop that process (or the Weft that owns it) and start again", pid, s.opts.Dir)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// alive reports whether a running postmaster answers on the socket.
func (s *Server) alive(ctx context.Context) bool {
	pid := postmasterPID(s.opts.Dir)
	if pid <= 0 || syscall.Kill(pid, 0) == syscall.ESRCH {
		return false
	}
	conn, err := pgx.Connect(ctx, s.urlFor("postgres"))
	if err != nil {
		return false
	}
	conn.Close(ctx)
	return true
}

// postmasterPID reads the first line of postmaster.pid (0 if absent).
func postmasterPID(dir string) int {
	b, err := os.ReadFile(filepath.Join(dir, "postmaster.pid"))
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	pid, _ := strconv.Atoi(strings.TrimSpace(line))
	return pid
}

func (s *Server) start(cred *syscall.Credential) error {
	logPath := filepath.Join(s.opts.Dir, "postgres.log")
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("opening %s: %w", logPath, err)
	}
	if err := chown(logPath, cred); err != nil {
		logFile.Close()
		return err
	}
	args := []string{"-D", s.opts.Dir, "-p", strconv.Itoa(port),
		"-c", "listen_addresses=", "-c", "unix_socket_directories=" + s.sockDir,
		"-c", "unix_socket_permissions=0700", "-c", "max_connections=200"}
	if !s.opts.Durable {
		args = append(args, "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off")
	}
	cmd := s.command(cred, "postgres", args...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	// If this process dies without stopping the cluster (kill -9), the kernel
	// sends postgres SIGINT, a fast shutdown that keeps committed data, so
	// the next start does not find the directory locked by an orphan.
	cmd.SysProcAttr.Pdeathsig = syscall.SIGINT
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return fmt.Errorf("starting postgres: %w", err)
	}
	s.cmd = cmd
	go func() {
		s.exitErr = cmd.Wait()
		logFile.Close()
		close(s.exited)
	}()
	s.opts.Logger.Info("embedded PostgreSQL started", "pid", cmd.Process.Pid, "socket_dir", s.sockDir)
	return nil
}

func (s *Server) waitReady(ctx context.Context) error {
	deadline := time.After(60 * time.Second)
	for {
		conn, err := pgx.Connect(ctx, s.urlFor("postgres"))
		if err == nil {
			conn.Close(ctx)
			return nil
		}
		select {
		case <-s.exited:
			return fmt.Errorf("postgres exited during start-up (%v); its log says:\n%s", s.exitErr, s.logTail())
		case <-deadline:
			return fmt.Errorf("postgres did not accept connections within 60s: %w\n%s", err, s.logTail())
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func (s *Server) logTail() string {
	b, _ := os.ReadFile(filepath.Join(s.opts.Dir, "postgres.log"))
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return strings.TrimSpace(string(b))
}

func (s *Server) ensureDatabase(ctx context.Context) error {
	conn, err := pgx.Connect(ctx, s.urlFor("postgres"))
	if err != nil {
		return fmt.Errorf("connecting to embedded PostgreSQL: %w", err)
	}
	defer conn.Close(ctx)
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", s.opts.Database).Scan(&exists); err != nil {
		return fmt.Errorf("checking database %s: %w", s.opts.Database, err)
	}
	if exists {
		return nil
	}
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{s.opts.Database}.Sanitize()); err != nil {
		return fmt.Errorf("creating database %s: %w", s.opts.Database, err)
	}
	return nil
}

// URL is the connection URL of the cluster's database.
func (s *Server) URL() string { return s.urlFor(s.opts.Database) }

func (s *Server) urlFor(db string) string {
	q := url.Values{"host": {s.sockDir}, "port": {strconv.Itoa(port)}, "sslmode": {"disable"}}
	return (&url.URL{Scheme: "postgres", User: url.User(superuser), Path: "/" + db, RawQuery: q.Encode()}).String()
}

// Stop asks postgres for a fast shutdown (clients disconnected, committed
// data kept) and waits for it, escalating to an immediate shutdown if ctx ends.
func (s *Server) Stop(ctx context.Context) error {
	if s.cmd == nil {
		return nil
	}
	select {
	case <-s.exited:
		return nil
	default:
	}
	_ = s.cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-s.exited:
		s.opts.Logger.Info("embedded PostgreSQL stopped")
		return nil
	case <-ctx.Done():
		_ = s.cmd.Process.Signal(syscall.SIGQUIT)
		<-s.exited
		return fmt.Errorf("postgres did not stop in time; sent an immediate shutdown: %w", ctx.Err())
	}
}

// runCtx runs cmd, killing it if ctx ends first.
func runCtx(ctx context.Context, cmd *exec.Cmd) error {
	if err := cmd.Start(); err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		_ = cmd.Process.Kill()
		<-done
		return ctx.Err()
	}
}
