package account

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"
)

// Access and refresh tokens are 256 random bits, prefixed so that a leaked
// token is recognisable (secret scanners) and the two kinds cannot be confused.
const (
	accessPrefix  = "wat_"
	refreshPrefix = "wrt_"
)

func newToken(prefix string) (token string, hash []byte) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic("crypto/rand failed: " + err.Error()) // never happens on supported systems
	}
	token = prefix + base64.RawURLEncoding.EncodeToString(b[:])
	return token, hashToken(token)
}

func hashToken(token string) []byte {
	h := sha256.Sum256([]byte(token))
	return h[:]
}

// newDeviceID returns 10 random capital letters, like other homeservers do.
func newDeviceID() id.DeviceID {
	const letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
	var b [10]byte
	_, _ = rand.Read(b[:])
	for i := range b {
		b[i] = letters[int(b[i])%len(letters)]
	}
	return id.DeviceID(b[:])
}

// Credentials are what login and registration hand to the client.
type Credentials struct {
	UserID       id.UserID
	DeviceID     id.DeviceID
	AccessToken  string
	RefreshToken string        // "" unless asked for
	ExpiresIn    time.Duration // 0: the access token does not expire
}

// DeviceParams are the client's wishes for the device of a new session.
type DeviceParams struct {
	DeviceID     id.DeviceID // "": generate
	DisplayName  string      // "": none (or keep an existing device's)
	WantsRefresh bool
	RemoteIP     string
}

// newSession prepares tokens for a session; the returned NewSession holds
// only their hashes.
func (s *Service) newSession(p DeviceParams) (NewSession, Credentials) {
	dev := p.DeviceID
	if dev == "" {
		dev = newDeviceID()
	}
	access, accessHash := newToken(accessPrefix)
	sess := NewSession{DeviceID: dev, AccessTokenHash: accessHash, RemoteIP: p.RemoteIP}
	if p.DisplayName != "" {
		name := p.DisplayName
		sess.DisplayName = &name
	}
	creds := Credentials{DeviceID: dev, AccessToken: access}
	if p.WantsRefresh {
		refresh, refreshHash := newToken(refreshPrefix)
		sess.RefreshTokenHash = refreshHash
		sess.AccessExpiresAt = s.now().Add(s.cfg.AccessTokenLifetime)
		creds.RefreshToken = refresh
		creds.ExpiresIn = s.cfg.AccessTokenLifetime
	}
	return sess, creds
}

// startSession stores a new device/tokens for an existing user.
func (s *Service) startSession(ctx context.Context, userID id.UserID, p DeviceParams) (*Credentials, error) {
	if err := validDeviceID(p.DeviceID); err != nil {
		return nil, err
	}
	if err := s.checkDeviceIDFree(ctx, userID, p.DeviceID); err != nil {
		return nil, err
	}
	sess, creds := s.newSession(p)
	if err := s.store.CreateSession(ctx, userID, sess); err != nil {
		return nil, fmt.Errorf("creating session: %w", err)
	}
	creds.UserID = userID
	return &creds, nil
}

func validDeviceID(d id.DeviceID) error {
	if len(d) > 255 {
		return errInvalidParam("device_id is longer than 255 characters")
	}
	for _, r := range d {
		if r < 0x21 || r > 0x7e {
			return errInvalidParam("device_id must be printable ASCII without spaces")
		}
	}
	return nil
}

// errUnknownToken is the 401 for a token we do not know; soft is true when
// the token was real but has expired, so the client may refresh or log in
// again keeping its keys.
func errUnknownToken(soft bool) error {
	e := mautrix.MUnknownToken.WithMessage("Unknown or expired access token")
	if soft {
		e = e.WithExtraField("soft_logout", true)
	}
	return e
}

// Authenticate resolves an access token. Once warm, it costs no database
// round trip: entries are cached and dropped when their device or user is
// logged out (see tokenCache).
func (s *Service) Authenticate(ctx context.Context, token string) (*Requester, error) {
	if token == "" {
		return nil, mautrix.MMissingToken.WithMessage("Missing access token")
	}
	hash := hashToken(token)
	key := string(hash)
	info, ok := s.cache.get(key, s.now())
	if !ok {
		gen := s.cache.generation()
		ti, err := s.store.AccessToken(ctx, hash)
		if errors.Is(err, ErrNotFound) {
			return nil, errUnknownToken(false)
		}
		if err != nil {
			return nil, fmt.Errorf("looking up access token: %w", err)
		}
		info = *ti
		// Only cache if no invalidation ran while we were reading: else we
		// might cache a token that was deleted after our read.
		s.cache.putIfGeneration(key, info, gen, s.now())
	}
	if info.Deactivated {
		return nil, errUnknownToken(false)
	}
	if !info.ExpiresAt.IsZero() && !s.now().Before(info.ExpiresAt) {
		return nil, errUnknownToken(true)
	}
	if info.RefreshParentID != 0 {
		// First use of an access token issued by /refresh: the refresh token
		// it replaced dies now (spec: "until the new access token is used").
		if err := s.store.RevokeRefreshParent(ctx, info.RefreshTokenID, info.RefreshParentID); err != nil {
			return nil, fmt.Errorf("revoking replaced refresh token: %w", err)
		}
		s.cache.clearRefreshParent(key)
	}
	return &Requester{UserID: info.UserID, DeviceID: info.DeviceID, IsGuest: info.IsGuest, IsAdmin: info.IsAdmin}, nil
}

// Refresh exchanges a refresh token for a new access and refresh token.
func (s *Service) Refresh(ctx context.Context, refreshToken string) (*Credentials, error) {
	if !strings.HasPrefix(refreshToken, refreshPrefix) {
		return nil, errUnknownToken(false)
	}
	refreshID, userID, deviceID, err := s.store.RefreshToken(ctx, hashToken(refreshToken))
	if errors.Is(err, ErrNotFound) {
		return nil, errUnknownToken(false)
	}
	if err != nil {
		return nil, fmt.Errorf("looking up refresh token: %w", err)
	}
	sess, creds := s.newSession(DeviceParams{DeviceID: deviceID, WantsRefresh: true})
	sess.RefreshParentID = refreshID
	if err := s.store.ReplaceRefreshSession(ctx, userID, sess); err != nil {
		return nil, fmt.Errorf("issuing refreshed tokens: %w", err)
	}
	// The old access tokens of that refresh token were deleted.
	s.cache.dropDevice(userID, deviceID)
	creds.UserID = userID
	return &creds, nil
}

// tokenCache maps token hashes to what they resolve to. Every path that
// deletes tokens (logout, device deletion, password change, deactivation,
// refresh) drops the matching entries after its transaction commits, and
// bumps gen so that a lookup racing with the deletion does not re-insert a
// dead token. Changes made by another process (the operator CLI, later
// other workers) are not seen by this one, so an entry is trusted for at
// most tokenCacheTTL before it is read again: that bounds how long a token
// revoked elsewhere keeps working. (LISTEN/NOTIFY can make that immediate
// when Weft runs as several processes.)
type tokenCache struct {
	mu     sync.Mutex
	gen    uint64
	byHash map[string]cachedToken
	byUser map[id.UserID]map[string]struct{}
	// touched is when each device's last-seen time was last written.
	touched map[deviceKey]time.Time
}

type deviceKey struct {
	user   id.UserID
	device id.DeviceID
}

// shouldTouch reports whether a device's last-seen time is due a write, and
// if so marks it written now.
func (c *tokenCache) shouldTouch(user id.UserID, device id.DeviceID, now time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	k := deviceKey{user, device}
	if last, ok := c.touched[k]; ok && now.Sub(last) < lastSeenEvery {
		return false
	}
	if len(c.touched) >= maxCachedTokens {
		c.touched = map[deviceKey]time.Time{}
	}
	c.touched[k] = now
	return true
}

type cachedToken struct {
	TokenInfo
	at time.Time
}

// tokenCacheTTL is how long a cached token is trusted without re-reading it.
const tokenCacheTTL = 30 * time.Second

// maxCachedTokens bounds memory; past it the cache is emptied and refills.
const maxCachedTokens = 200_000

func newTokenCache() *tokenCache {
	return &tokenCache{byHash: map[string]cachedToken{}, byUser: map[id.UserID]map[string]struct{}{}, touched: map[deviceKey]time.Time{}}
}

func (c *tokenCache) get(key string, now time.Time) (TokenInfo, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	ct, ok := c.byHash[key]
	if !ok || now.Sub(ct.at) > tokenCacheTTL {
		return TokenInfo{}, false
	}
	return ct.TokenInfo, true
}

func (c *tokenCache) generation() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.gen
}

func (c *tokenCache) putIfGeneration(key string, ti TokenInfo, gen uint64, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.gen != gen {
		return
	}
	if len(c.byHash) >= maxCachedTokens {
		c.byHash = map[string]cachedToken{}
		c.byUser = map[id.UserID]map[string]struct{}{}
	}
	c.byHash[key] = cachedToken{TokenInfo: ti, at: now}
	set := c.byUser[ti.UserID]
	if set == nil {
		set = map[string]struct{}{}
		c.byUser[ti.UserID] = set
	}
	set[key] = struct{}{}
}

func (c *tokenCache) clearRefreshParent(key string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if ct, ok := c.byHash[key]; ok {
		ct.RefreshParentID = 0
		c.byHash[key] = ct
	}
}

// dropDevice forgets every token of one device ("" = every device).
func (c *tokenCache) dropDevice(userID id.UserID, deviceID id.DeviceID) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen++
	for key := range c.byUser[userID] {
		if deviceID == "" || c.byHash[key].DeviceID == deviceID {
			delete(c.byHash, key)
			delete(c.byUser[userID], key)
		}
	}
	if len(c.byUser[userID]) == 0 {
		delete(c.byUser, userID)
	}
}

// dropUser forgets every token of a user.
func (c *tokenCache) dropUser(userID id.UserID) { c.dropDevice(userID, "") }

// checkDeviceIDFree refuses a client-chosen device ID equal to one of the
// user's cross-signing public keys: clients look keys up by ID in one
// namespace, and the spec forbids the collision.
func (s *Service) checkDeviceIDFree(ctx context.Context, userID id.UserID, d id.DeviceID) error {
	if d == "" {
		return nil
	}
	ks, err := s.keyStore()
	if err != nil {
		return nil // a store without keys has no cross-signing keys
	}
	keys, err := ks.CrossSigningKeys(ctx, []id.UserID{userID})
	if err != nil {
		return fmt.Errorf("reading cross-signing keys of %s: %w", userID, err)
	}
	for _, k := range keys {
		if k.PublicKey == string(d) {
			return errInvalidParam("device_id is one of this user's cross-signing keys")
		}
	}
	return nil
}
