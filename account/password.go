package account

import (
	"context"
	"errors"
	"fmt"
	"unicode"

	"golang.org/x/crypto/bcrypt"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"
)

// PasswordPolicy is the minimum strength of new passwords.
type PasswordPolicy struct {
	MinLength     int
	RequireDigit  bool
	RequireSymbol bool
	RequireLower  bool
	RequireUpper  bool
	BcryptCost    int
}

func (p PasswordPolicy) bcryptCost() int {
	if p.BcryptCost == 0 {
		return bcrypt.DefaultCost
	}
	return p.BcryptCost
}

// maxPasswordBytes is bcrypt's input limit; longer passwords would be
// silently truncated by other implementations, so they are refused.
const maxPasswordBytes = 72

func errWeakPassword(msg string) error {
	return mautrix.RespError{ErrCode: "M_WEAK_PASSWORD", Err: msg}
}

// Check refuses a password that does not meet the policy.
func (p PasswordPolicy) Check(pw string) error {
	if len(pw) > maxPasswordBytes {
		return errInvalidParam(fmt.Sprintf("Password is longer than %d bytes", maxPasswordBytes))
	}
	if len([]rune(pw)) < p.MinLength {
		return errWeakPassword(fmt.Sprintf("Password must be at least %d characters", p.MinLength))
	}
	var digit, symbol, lower, upper bool
	for _, r := range pw {
		switch {
		case unicode.IsDigit(r):
			digit = true
		case unicode.IsLower(r):
			lower = true
		case unicode.IsUpper(r):
			upper = true
		case unicode.IsPunct(r) || unicode.IsSymbol(r) || unicode.IsSpace(r):
			symbol = true
		}
	}
	switch {
	case p.RequireDigit && !digit:
		return errWeakPassword("Password must contain a digit")
	case p.RequireSymbol && !symbol:
		return errWeakPassword("Password must contain a symbol")
	case p.RequireLower && !lower:
		return errWeakPassword("Password must contain a lowercase letter")
	case p.RequireUpper && !upper:
		return errWeakPassword("Password must contain an uppercase letter")
	}
	return nil
}

func hashPassword(pw string, cost int) (string, error) {
	h, err := bcrypt.GenerateFromPassword([]byte(pw), cost)
	if err != nil {
		return "", fmt.Errorf("hashing password: %w", err)
	}
	return string(h), nil
}

// passwordMatches compares in constant time for the hash's cost.
func passwordMatches(hash, pw string) bool {
	return hash != "" && bcrypt.CompareHashAndPassword([]byte(hash), []byte(pw)) == nil
}

// ChangePassword sets a new password. With logoutDevices, every other device
// of the user is deleted (and its tokens with it); keep is the device making
// the request, which stays logged in.
func (s *Service) ChangePassword(ctx context.Context, userID id.UserID, newPassword string, logoutDevices bool, keep id.DeviceID) error {
	if err := s.cfg.Password.Check(newPassword); err != nil {
		return err
	}
	hash, err := hashPassword(newPassword, s.cfg.Password.bcryptCost())
	if err != nil {
		return err
	}
	removed, err := s.store.SetPassword(ctx, userID, hash, !logoutDevices, keep)
	if err != nil {
		return fmt.Errorf("storing password: %w", err)
	}
	for _, d := range removed {
		s.cache.dropDevice(userID, d)
	}
	if len(removed) > 0 {
		s.deviceListChanged(ctx, userID)
	}
	s.log.Info("password changed", "user_id", userID, "devices_logged_out", len(removed))
	return nil
}

// SetPasswordByOperator is the CLI's reset-password: no policy bypass, all
// sessions end.
func (s *Service) SetPasswordByOperator(ctx context.Context, userID id.UserID, newPassword string) error {
	if _, err := s.userByID(ctx, userID); err != nil {
		return err
	}
	return s.ChangePassword(ctx, userID, newPassword, true, "")
}

// Deactivate closes an account for ever: no login, no profile, no devices,
// out of the user directory. (Leaving rooms comes with the rooms domain.)
func (s *Service) Deactivate(ctx context.Context, userID id.UserID) error {
	// Leave rooms first, while the member events can still be signed as
	// this user's; a crash after this point leaves the rest to a retry.
	if s.hooks.Deactivated != nil {
		if err := s.hooks.Deactivated(ctx, userID); err != nil {
			return fmt.Errorf("leaving rooms: %w", err)
		}
	}
	if err := s.store.Deactivate(ctx, userID); err != nil {
		if errors.Is(err, ErrNotFound) {
			return errNotFound("Unknown user")
		}
		return fmt.Errorf("deactivating %s: %w", userID, err)
	}
	s.cache.dropUser(userID)
	s.deviceListChanged(ctx, userID)
	s.log.Info("account deactivated", "user_id", userID)
	return nil
}

func (s *Service) userByID(ctx context.Context, userID id.UserID) (*User, error) {
	localpart, server, err := userID.Parse()
	if err != nil || server != s.cfg.ServerName {
		return nil, errNotFound("Unknown user")
	}
	u, err := s.store.UserByLocalpart(ctx, localpart)
	if errors.Is(err, ErrNotFound) || (err == nil && u.UserID != userID) {
		return nil, errNotFound("Unknown user")
	}
	if err != nil {
		return nil, fmt.Errorf("looking up %s: %w", userID, err)
	}
	return u, nil
}

// SetAdmin grants or revokes server admin (the CLI's set-admin).
func (s *Service) SetAdmin(ctx context.Context, userID id.UserID, admin bool) error {
	if _, err := s.userByID(ctx, userID); err != nil {
		return err
	}
	if err := s.store.SetAdmin(ctx, userID, admin); err != nil {
		return fmt.Errorf("setting admin: %w", err)
	}
	s.cache.dropUser(userID)
	return nil
}
