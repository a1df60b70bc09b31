// Package pgtest gives every test its own freshly migrated PostgreSQL
// database, cloned from a template that is migrated once.
//
// The server is WEFT_TEST_DATABASE_URL (a role allowed to CREATE DATABASE) or,
// when that is unset, a throwaway cluster started like Weft's embedded default
// for the life of the test binary. Packages using it call Main from TestMain:
//
//	func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }
package pgtest

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/user"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/weftchat/weft/storage"
	"github.com/weftchat/weft/storage/pgserver"
)

// EnvURL names the variable pointing at an existing test server.
const EnvURL = "WEFT_TEST_DATABASE_URL"

// harness is the per-test-binary server. Test binaries are single processes
// and Main runs before any test, so one instance guarded by mu is the whole
// state; it is set up in Main and torn down when Main returns.
type harness struct {
	mu       sync.Mutex
	adminURL string // database used to CREATE/DROP the test databases
	template string
	cluster  *pgserver.Server
	dir      string
	err      error
	inMain   bool
}

var h harness

// Main runs the package's tests with a test PostgreSQL available, then stops
// the throwaway cluster, if one was started, and removes its files.
func Main(m *testing.M) int {
	h.mu.Lock()
	h.inMain = true
	h.mu.Unlock()
	code := m.Run()
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.cluster != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		_ = h.cluster.Stop(ctx)
		cancel()
	}
	if h.dir != "" {
		_ = os.RemoveAll(h.dir)
	}
	return code
}

// setup starts or finds the server and creates the template, once.
func (h *harness) setup(ctx context.Context) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.inMain {
		return errors.New("pgtest: call pgtest.Main from this package's TestMain")
	}
	if h.adminURL != "" || h.err != nil {
		return h.err
	}
	h.err = h.start(ctx)
	return h.err
}

func (h *harness) start(ctx context.Context) error {
	if u := os.Getenv(EnvURL); u != "" {
		h.adminURL = u
	} else {
		dir, err := os.MkdirTemp("", "weft-pgtest-")
		if err != nil {
			return err
		}
		h.dir = dir
		// The cluster account (postgres, when tests run as root) must be
		// able to enter the directory.
		if err := os.Chmod(dir, 0o755); err != nil {
			return err
		}
		c, err := pgserver.Start(ctx, pgserver.Options{Dir: dir + "/data", RunAs: runAsAccount(), Database: "weft_test_admin"})
		if err != nil {
			return fmt.Errorf("pgtest: starting a throwaway cluster (or set %s): %w", EnvURL, err)
		}
		h.cluster = c
		h.adminURL = c.URL()
	}
	tpl, err := ensureTemplate(ctx, h.adminURL)
	if err != nil {
		return err
	}
	h.template = tpl
	return nil
}

func runAsAccount() string {
	if os.Geteuid() != 0 {
		return ""
	}
	if _, err := user.Lookup("postgres"); err == nil {
		return "postgres"
	}
	return "nobody"
}

// ensureTemplate creates weft_tpl_<hash of schema version> if missing. Test
// binaries of several packages may race here against one shared server, so
// creation happens under an advisory lock and is checked again inside it.
func ensureTemplate(ctx context.Context, adminURL string) (string, error) {
	sum := sha256.Sum256([]byte("schema" + storage.MigrationsDigest()))
	name := "weft_tpl_" + hex.EncodeToString(sum[:6])
	conn, err := pgx.Connect(ctx, adminURL)
	if err != nil {
		return "", fmt.Errorf("pgtest: connecting to %s: %w", EnvURL, err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "SELECT pg_advisory_lock(7331)"); err != nil {
		return "", err
	}
	defer conn.Exec(ctx, "SELECT pg_advisory_unlock(7331)") //nolint:errcheck
	var ready bool
	err = conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1 AND datistemplate)", name).Scan(&ready)
	if err != nil || ready {
		return name, err
	}
	_, _ = conn.Exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)") // a half-built one from a killed run
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		return "", fmt.Errorf("pgtest: creating template: %w", err)
	}
	db, err := storage.Open(ctx, withDatabase(adminURL, name), storage.Options{MaxConns: 2})
	if err != nil {
		return "", fmt.Errorf("pgtest: migrating template: %w", err)
	}
	db.Close()
	if _, err := conn.Exec(ctx, "ALTER DATABASE "+name+" WITH IS_TEMPLATE true"); err != nil {
		return "", err
	}
	return name, nil
}

func withDatabase(rawURL, db string) string {
	u, err := url.Parse(rawURL)
	if err != nil {
		return rawURL
	}
	u.Path = "/" + db
	return u.String()
}

// NewDatabase creates a fresh, migrated database for t, dropped when t ends,
// and returns its URL.
func NewDatabase(t testing.TB) string {
	t.Helper()
	return newDatabase(t, true)
}

// NewEmptyDatabase creates a database with no schema at all, for tests of
// migration itself.
func NewEmptyDatabase(t testing.TB) string {
	t.Helper()
	return newDatabase(t, false)
}

func newDatabase(t testing.TB, migrated bool) string {
	t.Helper()
	ctx := context.Background()
	if err := h.setup(ctx); err != nil {
		t.Fatal(err)
	}
	var b [8]byte
	_, _ = rand.Read(b[:])
	name := "weft_t_" + hex.EncodeToString(b[:])
	conn, err := pgx.Connect(ctx, h.adminURL)
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	defer conn.Close(ctx)
	for attempt := 0; ; attempt++ {
		tpl := h.template
		if !migrated {
			tpl = "template0"
		}
		_, err = conn.Exec(ctx, "CREATE DATABASE "+name+" TEMPLATE "+tpl)
		// Two CREATE DATABASE ... TEMPLATE at the same instant can see each
		// other as users of the template; the loser simply retries.
		var pgErr *pgconn.PgError
		if err == nil || attempt > 50 || !errors.As(err, &pgErr) || pgErr.Code != "55006" {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("pgtest: creating test database: %v", err)
	}
	t.Cleanup(func() {
		c, err := pgx.Connect(context.Background(), h.adminURL)
		if err != nil {
			return
		}
		defer c.Close(context.Background())
		_, _ = c.Exec(context.Background(), "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)")
	})
	return withDatabase(h.adminURL, name)
}

// NewDB opens storage on a fresh database for t, closed when t ends.
func NewDB(t testing.TB) *storage.DB {
	t.Helper()
	db, err := storage.Open(context.Background(), NewDatabase(t), storage.Options{MaxConns: 10})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(db.Close)
	return db
}
