// Package account is the domain of users, devices, access tokens,
// user-interactive auth, profiles, account data and filters. It knows nothing
// of HTTP or SQL: api calls it, and storage implements the Store it declares.
package account

import (
	"context"
	"log/slog"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"
)

// Config is the part of the server configuration this package uses.
type Config struct {
	ServerName string

	RegistrationMode   string // disabled, open, token
	SharedSecret       string
	AllowGuests        bool
	ReservedLocalparts []string

	Password PasswordPolicy

	AccessTokenLifetime time.Duration
	MaxLoginFailures    int
	FailureWindow       time.Duration
	LockDuration        time.Duration

	JWT              *JWTValidator // nil: JWT login off
	JWTAutoProvision bool

	SearchAllUsers bool
	UIASessionTTL  time.Duration
}

// Service implements the account operations.
type Service struct {
	cfg   Config
	store Store
	log   *slog.Logger
	now   func() time.Time
	cache *tokenCache
	// hooks tell the room domain about profile changes and deactivations;
	// set once by the wiring before the server serves (SetHooks).
	hooks Hooks
	// dummyHash is compared against when a login names no known user, so a
	// failed login takes as long whether or not the user exists.
	dummyHash string
	// presence tracks in-flight /syncs and the presence timeouts (presence.go).
	presence presenceTracker
	// keyCounts caches devices' one-time key counts (keycounts.go).
	keyCounts keyCountCache
}

// New builds the service. now may be nil (time.Now).
func New(cfg Config, store Store, log *slog.Logger, now func() time.Time) *Service {
	if now == nil {
		now = time.Now
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if cfg.UIASessionTTL == 0 {
		cfg.UIASessionTTL = 30 * time.Minute
	}
	s := &Service{cfg: cfg, store: store, log: log, now: now, cache: newTokenCache()}
	s.dummyHash, _ = hashPassword("weft-dummy-password", cfg.Password.bcryptCost())
	return s
}

// Hooks are called after account changes that other domains react to.
type Hooks struct {
	// ProfileChanged sends new member events into the user's rooms.
	ProfileChanged func(ctx context.Context, userID id.UserID) error
	// Deactivated makes the user leave every room.
	Deactivated func(ctx context.Context, userID id.UserID) error
}

// SetHooks installs the hooks. Call it before serving requests.
func (s *Service) SetHooks(h Hooks) { s.hooks = h }

// Requester is who is making an authenticated request.
type Requester struct {
	UserID   id.UserID
	DeviceID id.DeviceID
	IsGuest  bool
	IsAdmin  bool
}

// ServerName is the server's name.
func (s *Service) ServerName() string { return s.cfg.ServerName }

// UserIDFor builds a user ID on this server.
func (s *Service) UserIDFor(localpart string) id.UserID {
	return id.NewUserID(localpart, s.cfg.ServerName)
}

// isLocal reports whether userID belongs to this server.
func (s *Service) isLocal(userID id.UserID) bool {
	_, server, err := userID.Parse()
	return err == nil && server == s.cfg.ServerName
}

func errForbidden(msg string) error { return mautrix.MForbidden.WithMessage(msg) }
func errNotFound(msg string) error  { return mautrix.MNotFound.WithMessage(msg) }
func errBadJSON(msg string) error   { return mautrix.MBadJSON.WithMessage(msg) }
func errInvalidParam(msg string) error {
	return mautrix.MInvalidParam.WithMessage(msg)
}
func errMissingParam(msg string) error {
	return mautrix.RespError{ErrCode: "M_MISSING_PARAM", Err: msg}
}

func errTooLarge(msg string) error { return mautrix.MTooLarge.WithMessage(msg) }
