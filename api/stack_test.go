package api_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"maunium.net/go/mautrix/id"

	"github.com/weftchat/weft/account"
	"github.com/weftchat/weft/api"
	"github.com/weftchat/weft/push"
	"github.com/weftchat/weft/room"
	"github.com/weftchat/weft/storage"
	"github.com/weftchat/weft/storage/pgtest"
	"github.com/weftchat/weft/syncapi"
)

// stack is the whole API over real Postgres, wired as weft serve wires it:
// accounts, rooms, /sync with its notifier, push rules, the router. Tests
// that write notifications themselves leave push evaluation off.
type stack struct {
	srv      *httptest.Server
	db       *storage.DB
	raw      *pgxpool.Pool // to look at tables
	dbURL    string
	key      ed25519.PrivateKey
	accounts *account.Service
	rooms    *room.Service
	syncs    *syncapi.Service
}

type stackOpts struct {
	// park serves on an api.Listener, so idle long-polls park their
	// connections as under weft serve.
	park bool
	// readHeaderTimeout, when set, is the HTTP server's.
	readHeaderTimeout time.Duration
	// keyCounts and toDeviceBacklog are the sync service's.
	keyCounts       func(context.Context, id.UserID, id.DeviceID) (map[id.KeyAlgorithm]int, []id.KeyAlgorithm, error)
	toDeviceBacklog int
	// push turns on the evaluation of push rules for new events (the push
	// rules API is served either way).
	push bool
	// restartOf, when set, is a stack whose database (and signing key)
	// this one serves, as a server restarted over it would: a new
	// notifier, new caches.
	restartOf *stack
}

func newStack(t testing.TB, o stackOpts) *stack {
	t.Helper()
	ctx := context.Background()
	st := &stack{}
	if o.restartOf != nil {
		st.dbURL, st.key = o.restartOf.dbURL, o.restartOf.key
	} else {
		st.dbURL = pgtest.NewDatabase(t)
		var err error
		if _, st.key, err = ed25519.GenerateKey(rand.Reader); err != nil {
			t.Fatal(err)
		}
	}
	var err error
	if st.db, err = storage.Open(ctx, st.dbURL, storage.Options{MaxConns: 20}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.db.Close)
	if st.raw, err = pgxpool.New(ctx, st.dbURL); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.raw.Close)
	st.accounts = account.New(account.Config{
		ServerName: syncTestServer, RegistrationMode: "open",
		Password:            account.PasswordPolicy{MinLength: 8, BcryptCost: 4},
		AccessTokenLifetime: time.Hour,
	}, st.db.Accounts(), nil, nil)
	st.rooms = room.New(room.Config{Signer: room.Signer{ServerName: syncTestServer, KeyID: "ed25519:t", Key: st.key}}, st.db.Rooms(), noProfiles{}, nil)
	pushRules := push.NewService(st.db.PushRules(), nil)
	if o.push {
		st.rooms.SetPushRules(pushRules)
	}
	n := syncapi.NewNotifier(0, time.Now())
	st.db.SetStreamListener(n.Committed)
	pos, err := st.db.MaxStreamPos(ctx)
	if err != nil {
		t.Fatal(err)
	}
	n.Start(pos)
	accounts := st.accounts
	st.syncs = syncapi.New(syncapi.Config{
		LoadFilter: func(ctx context.Context, user id.UserID, filterID string) (json.RawMessage, error) {
			return accounts.Filter(ctx, &account.Requester{UserID: user}, user, filterID)
		},
		ValidateFilter:  account.ValidateFilter,
		KeyCounts:       o.keyCounts,
		ServerName:      syncTestServer,
		ToDeviceBacklog: o.toDeviceBacklog,
	}, st.db.Sync(), st.rooms, n, nil)
	reg := prometheus.NewRegistry()
	st.srv = httptest.NewUnstartedServer(nil)
	var ln *api.Listener
	if o.park {
		ln = api.NewListener(st.srv.Listener)
		st.srv.Listener = ln
	}
	st.srv.Config.Handler = api.NewRouter(api.Options{
		ServerName: syncTestServer, MaxBodyBytes: 1 << 20, Accounts: st.accounts, Rooms: st.rooms, Sync: st.syncs,
		Push: pushRules, RegistrationMode: "open", Health: st.db, Listener: ln, Metrics: reg, Gatherer: reg,
	})
	st.srv.Config.ReadHeaderTimeout = o.readHeaderTimeout
	st.srv.Start()
	t.Cleanup(func() { st.syncs.Stop(); st.srv.Close() })
	return st
}
