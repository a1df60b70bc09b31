package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"maunium.net/go/mautrix/id"

	"github.com/weftchat/weft/account"
	"github.com/weftchat/weft/api"
	"github.com/weftchat/weft/internal/config"
	"github.com/weftchat/weft/internal/pushgateway"
	"github.com/weftchat/weft/push"
	"github.com/weftchat/weft/room"
	"github.com/weftchat/weft/storage"
	"github.com/weftchat/weft/storage/pgserver"
	"github.com/weftchat/weft/syncapi"
)

// reservedLocalparts are never handed out by registration: names users would
// take for the operator's, and the mail role names.
var reservedLocalparts = []string{
	"admin", "administrator", "root", "support", "security", "abuse", "postmaster",
	"hostmaster", "webmaster", "noreply", "no-reply", "system", "server", "notices",
}

// newServices builds the domains over storage and connects them.
func newServices(cfg *config.Config, db *storage.DB, log *slog.Logger) (*account.Service, *room.Service, error) {
	accounts, err := newAccounts(cfg, db, log)
	if err != nil {
		return nil, nil, err
	}
	signer, err := loadOrCreateSigningKey(cfg)
	if err != nil {
		return nil, nil, err
	}
	rooms := room.New(room.Config{Signer: signer}, db.Rooms(), profileSource{accounts}, log)
	accounts.SetHooks(account.Hooks{ProfileChanged: rooms.UpdateProfile, Deactivated: rooms.LeaveAll})
	accounts.SetPresenceTimes(account.PresenceTimes{
		IdleAfter:    time.Duration(cfg.Presence.IdleAfter),
		OfflineAfter: time.Duration(cfg.Presence.OfflineAfter),
	})
	return accounts, rooms, nil
}

// newPushRules builds the push rules service and turns on the evaluation
// of push rules for new events.
func newPushRules(db *storage.DB, rooms *room.Service, log *slog.Logger) *push.Service {
	p := push.NewService(db.PushRules(), log)
	rooms.SetPushRules(p)
	return p
}

// newSync builds /sync and connects its notifier to storage's commits.
func newSync(ctx context.Context, db *storage.DB, accounts *account.Service, rooms *room.Service, log *slog.Logger) (*syncapi.Service, error) {
	// Listen first, then read the highest position: a commit in between
	// is reported to the notifier either way.
	n := syncapi.NewNotifier(0, time.Now())
	db.SetStreamListener(n.Committed)
	pos, err := db.MaxStreamPos(ctx)
	if err != nil {
		return nil, fmt.Errorf("reading the stream position: %w", err)
	}
	n.Start(pos)
	return syncapi.New(syncapi.Config{
		LoadFilter: func(ctx context.Context, user id.UserID, filterID string) (json.RawMessage, error) {
			return accounts.Filter(ctx, &account.Requester{UserID: user}, user, filterID)
		},
		ValidateFilter: account.ValidateFilter,
		Presence:       accounts.SyncPresence,
		ServerName:     accounts.ServerName(),
		KeyCounts:      accounts.OneTimeKeyCounts,
	}, db.Sync(), rooms, n, log), nil
}

// newAccounts builds the account domain over storage.
func newAccounts(cfg *config.Config, db *storage.DB, log *slog.Logger) (*account.Service, error) {
	c := account.Config{
		ServerName:         cfg.ServerName,
		RegistrationMode:   cfg.Registration.Mode,
		SharedSecret:       cfg.Registration.SharedSecret,
		AllowGuests:        cfg.Registration.AllowGuests,
		ReservedLocalparts: reservedLocalparts,
		Password: account.PasswordPolicy{
			MinLength:     cfg.Passwords.MinLength,
			RequireDigit:  cfg.Passwords.RequireDigit,
			RequireSymbol: cfg.Passwords.RequireSymbol,
			RequireLower:  cfg.Passwords.RequireLower,
			RequireUpper:  cfg.Passwords.RequireUpper,
			BcryptCost:    cfg.Passwords.BcryptCost,
		},
		AccessTokenLifetime: time.Duration(cfg.Login.AccessTokenLifetime),
		MaxLoginFailures:    cfg.Login.MaxFailures,
		FailureWindow:       time.Duration(cfg.Login.FailureWindow),
		LockDuration:        time.Duration(cfg.Login.LockDuration),
		JWTAutoProvision:    cfg.JWT.AutoProvision,
		SearchAllUsers:      cfg.UserDirectory.SearchAllUsers,
	}
	if cfg.JWT.Enabled {
		v, err := account.NewJWTValidator(account.JWTConfig{
			Secret:       cfg.JWT.Secret,
			PublicKey:    cfg.JWT.PublicKey,
			Algorithm:    cfg.JWT.Algorithm,
			Issuer:       cfg.JWT.Issuer,
			Audiences:    cfg.JWT.Audiences,
			SubjectClaim: cfg.JWT.SubjectClaim,
		})
		if err != nil {
			return nil, err
		}
		c.JWT = v
	}
	return account.New(c, db.Accounts(), log, nil), nil
}

func rateLimits(c config.RateLimits) api.RateLimits {
	rl := api.RateLimits{
		Enabled:      c.Enabled,
		Login:        api.Bucket{PerSecond: c.Login.PerSecond, Burst: c.Login.Burst},
		Register:     api.Bucket{PerSecond: c.Register.PerSecond, Burst: c.Register.Burst},
		Writes:       api.Bucket{PerSecond: c.Writes.PerSecond, Burst: c.Writes.Burst},
		ExemptAdmins: c.ExemptAdmins,
	}
	for _, u := range c.ExemptUsers {
		rl.ExemptUsers = append(rl.ExemptUsers, id.UserID(u))
	}
	return rl
}

// openDatabase opens storage: database.url, or the embedded cluster under
// data_dir (attaching to a running one when attach is set, as operator
// commands do beside a live server). It migrates and checks the server
// name. The returned func closes the pool and stops a cluster it started.
func openDatabase(ctx context.Context, cfg *config.Config, log *slog.Logger, attach bool) (*storage.DB, func(), error) {
	var pg *pgserver.Server
	stopPG := func() {
		if pg == nil {
			return
		}
		sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := pg.Stop(sctx); err != nil {
			log.Error("stopping embedded PostgreSQL", "err", err)
		}
	}
	dbURL := cfg.Database.URL
	if dbURL == "" {
		if err := os.MkdirAll(cfg.DataDir, 0o755); err != nil {
			return nil, nil, fmt.Errorf("creating data_dir %s: %w", cfg.DataDir, err)
		}
		var err error
		pg, err = pgserver.Start(ctx, pgserver.Options{
			Dir:     filepath.Join(cfg.DataDir, "postgres"),
			BinDir:  cfg.Database.Embedded.BinDir,
			RunAs:   cfg.Database.Embedded.RunAs,
			Durable: true,
			Attach:  attach,
			Logger:  log,
		})
		if err != nil {
			return nil, nil, fmt.Errorf("embedded PostgreSQL: %w", err)
		}
		dbURL = pg.URL()
	}
	db, err := storage.Open(ctx, dbURL, storage.Options{MaxConns: int32(cfg.Database.MaxConns), Logger: log})
	if err != nil {
		stopPG()
		return nil, nil, err
	}
	if err := db.ClaimServerName(ctx, cfg.ServerName); err != nil {
		db.Close()
		stopPG()
		return nil, nil, err
	}
	return db, func() { db.Close(); stopPG() }, nil
}

// profileSource gives the room domain the profile copied into member events.
type profileSource struct{ accounts *account.Service }

func (p profileSource) MemberProfile(ctx context.Context, userID id.UserID) (string, string, error) {
	if userID.Homeserver() != p.accounts.ServerName() {
		return "", "", nil // remote profiles come with federation
	}
	prof, err := p.accounts.Profile(ctx, userID)
	if err != nil {
		return "", "", err // unknown local users cannot be invited
	}
	return prof.DisplayName, prof.AvatarURL, nil
}

// startPushDelivery runs the delivery of notifications to push gateways
// (push.Deliverer) until ctx ends; stop waits for it to finish, so call it
// before the database closes. The stream listener newSync installed is
// wrapped so that every commit of room events (which carries the
// notifications evaluated for it) also wakes delivery for its rooms; the
// deliverer's first check, after the swap, covers commits made before it.
func startPushDelivery(ctx context.Context, cfg *config.Config, db *storage.DB, syncs *syncapi.Service, log *slog.Logger) (stop func(), err error) {
	if !cfg.Push.Enabled {
		return func() {}, nil
	}
	allowed, err := cfg.Push.AllowedPrefixes()
	if err != nil {
		return nil, fmt.Errorf("config key push.gateway_allowed_cidrs: %w", err)
	}
	client := pushgateway.New(pushgateway.Config{Timeout: time.Duration(cfg.Push.GatewayTimeout), AllowedCIDRs: allowed})
	d := push.NewDeliverer(push.DeliveryConfig{
		Workers:     cfg.Push.Workers,
		MaxBackoff:  time.Duration(cfg.Push.MaxBackoff),
		GiveUpAfter: time.Duration(cfg.Push.GiveUpAfter),
	}, db.Pushers(), client, syncs, log)
	n := syncs.Notifier()
	db.SetStreamListener(func(pos int64, kinds syncapi.Kind, rooms []id.RoomID, users []id.UserID) {
		n.Committed(pos, kinds, rooms, users)
		if kinds&syncapi.KindEvents != 0 {
			d.Notify(rooms, users)
		}
	})
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); d.Run(runCtx) }()
	return func() {
		cancel()
		<-done
		client.CloseIdleConnections()
	}, nil
}
