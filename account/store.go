package account

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	"maunium.net/go/mautrix/id"
)

// ErrUserExists is returned by Store.CreateUser for a taken localpart.
var ErrUserExists = errors.New("user exists")

// ErrNotFound is returned by Store lookups that find nothing.
var ErrNotFound = errors.New("not found")

// User is a stored account.
type User struct {
	UserID       id.UserID
	Localpart    string
	PasswordHash string // "" when the account has no password
	IsAdmin      bool
	IsGuest      bool
	Deactivated  bool
	LockedUntil  time.Time // zero: not locked
	CreatedAt    time.Time
}

// NewSession is a device plus the tokens to issue for it. Hashes only: the
// tokens themselves are never stored.
type NewSession struct {
	DeviceID         id.DeviceID
	DisplayName      *string // nil: keep an existing device's name
	AccessTokenHash  []byte
	AccessExpiresAt  time.Time // zero: never
	RefreshTokenHash []byte    // nil: no refresh token
	RefreshParentID  int64     // the refresh token this one replaces (0: none)
	RemoteIP         string
}

// TokenInfo is what an access token resolves to.
type TokenInfo struct {
	UserID   id.UserID
	DeviceID id.DeviceID
	IsGuest  bool
	IsAdmin  bool
	// Deactivated accounts' tokens are deleted, but this guards the race.
	Deactivated bool
	ExpiresAt   time.Time // zero: never
	// RefreshParentID is the refresh token to revoke on first use of this
	// access token (0: nothing pending).
	RefreshParentID int64
	RefreshTokenID  int64
}

// Device is a stored device.
type Device struct {
	DeviceID    id.DeviceID
	DisplayName string
	LastSeenAt  time.Time
	LastSeenIP  string
}

// Profile is a user's public profile.
type Profile struct {
	DisplayName string
	AvatarURL   string
}

// DirectoryEntry is one user directory result.
type DirectoryEntry struct {
	UserID id.UserID
	Profile
}

// UIASession is a user-interactive auth session.
type UIASession struct {
	ID        string
	Operation string
	UserID    id.UserID // "" for registration
	Completed []string
	RegToken  string
	ExpiresAt time.Time
}

// RegistrationToken is an operator-issued registration token.
type RegistrationToken struct {
	Token       string
	UsesAllowed *int
	Pending     int
	Completed   int
	ExpiryTime  time.Time // zero: never
}

// Store is the persistence the account domain needs. storage implements it;
// every method is one transaction.
type Store interface {
	// CreateUser creates user, its empty profile and, if sess is not nil, a
	// device with tokens; consumeRegToken (if set) moves one pending use of
	// that token to completed in the same transaction. ErrUserExists if the
	// localpart is taken (case-insensitively).
	CreateUser(ctx context.Context, u User, displayName string, sess *NewSession, consumeRegToken string) error
	UserByLocalpart(ctx context.Context, localpart string) (*User, error) // case-insensitive; ErrNotFound
	ListUsers(ctx context.Context) ([]User, error)
	SetAdmin(ctx context.Context, userID id.UserID, admin bool) error
	// SetPassword stores a new hash; unless keepAll, deletes every device
	// but keep ("" deletes all). Returns the deleted device IDs.
	SetPassword(ctx context.Context, userID id.UserID, hash string, keepAll bool, keep id.DeviceID) ([]id.DeviceID, error)
	// Deactivate clears password and profile, deletes every device and
	// marks the account deactivated for ever.
	Deactivate(ctx context.Context, userID id.UserID) error
	// RecordLoginFailure counts a failure in the current window and, at
	// max, locks the account until lockUntil. Returns the lock end (zero if
	// not locked now).
	RecordLoginFailure(ctx context.Context, userID id.UserID, now time.Time, window time.Duration, max int, lockUntil time.Time) (time.Time, error)
	ClearLoginFailures(ctx context.Context, userID id.UserID) error

	CreateSession(ctx context.Context, userID id.UserID, sess NewSession) error
	AccessToken(ctx context.Context, hash []byte) (*TokenInfo, error) // ErrNotFound
	// RevokeRefreshParent deletes refresh token parentID once its child (or
	// the child's access token) has been used.
	RevokeRefreshParent(ctx context.Context, childRefreshID, parentID int64) error
	// RefreshToken finds a refresh token: its id, owner and device.
	RefreshToken(ctx context.Context, hash []byte) (int64, id.UserID, id.DeviceID, error)
	// ReplaceRefreshSession issues sess (whose RefreshParentID is the used
	// token) and deletes the access tokens issued with the used token.
	ReplaceRefreshSession(ctx context.Context, userID id.UserID, sess NewSession) error
	TouchDevice(ctx context.Context, userID id.UserID, deviceID id.DeviceID, ip string, at time.Time) error

	Devices(ctx context.Context, userID id.UserID) ([]Device, error)
	Device(ctx context.Context, userID id.UserID, deviceID id.DeviceID) (*Device, error) // ErrNotFound
	RenameDevice(ctx context.Context, userID id.UserID, deviceID id.DeviceID, name string) error
	// DeleteDevices deletes devices and, with them, their tokens.
	DeleteDevices(ctx context.Context, userID id.UserID, deviceIDs []id.DeviceID) error
	DeleteAllDevices(ctx context.Context, userID id.UserID) error

	Profile(ctx context.Context, userID id.UserID) (*Profile, error) // ErrNotFound for unknown users
	SetDisplayName(ctx context.Context, userID id.UserID, name string) error
	SetAvatarURL(ctx context.Context, userID id.UserID, url string) error
	SearchUsers(ctx context.Context, searcher id.UserID, term string, all bool, limit int) ([]DirectoryEntry, bool, error)

	// SetAccountData stores content with a new stream position.
	SetAccountData(ctx context.Context, userID id.UserID, roomID id.RoomID, typ string, content json.RawMessage) (int64, error)
	AccountData(ctx context.Context, userID id.UserID, roomID id.RoomID, typ string) (json.RawMessage, error) // ErrNotFound

	CreateFilter(ctx context.Context, userID id.UserID, filter json.RawMessage) (string, error)
	Filter(ctx context.Context, userID id.UserID, filterID string) (json.RawMessage, error) // ErrNotFound

	CreateUIASession(ctx context.Context, s UIASession) error
	UIASession(ctx context.Context, id string) (*UIASession, error) // ErrNotFound (also when expired)
	// CompleteUIAStage records stage as done; regToken, if set, is reserved
	// (pending + 1) in the same transaction, failing with ErrNotFound if
	// the token is no longer valid at now.
	CompleteUIAStage(ctx context.Context, sessionID, stage, regToken string, now time.Time) error
	DeleteUIASession(ctx context.Context, id string) error

	RegistrationToken(ctx context.Context, token string) (*RegistrationToken, error) // ErrNotFound
	CreateRegistrationToken(ctx context.Context, t RegistrationToken) error

	// UseNonce consumes a shared-secret registration nonce; false if it is
	// unknown, used or expired.
	CreateNonce(ctx context.Context, nonce string, expires time.Time) error
	UseNonce(ctx context.Context, nonce string, now time.Time) (bool, error)
}
