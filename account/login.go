package account

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"
)

func errBadLogin() error { return errForbidden("Invalid username or password") }

func errUserLocked(until time.Time) error {
	return mautrix.RespError{
		ErrCode: "M_USER_LOCKED",
		Err:     "Too many failed logins: this account refuses logins until " + until.UTC().Format(time.RFC3339),
	}.WithExtraField("soft_logout", true)
}

func errDeactivated() error {
	return mautrix.MUserDeactivated.WithMessage("This account has been deactivated")
}

// localpartFor turns what a user typed (alice, @alice:server, @Alice:server)
// into a localpart on this server, or "" if it names another server.
func (s *Service) localpartFor(user string) string {
	if strings.HasPrefix(user, "@") {
		lp, server, err := id.UserID(user).Parse()
		if err != nil || !strings.EqualFold(server, s.cfg.ServerName) {
			return ""
		}
		return lp
	}
	return user
}

// LoginPassword checks a password login and starts a session. Unknown users,
// wrong passwords and other servers' users all get the same answer, in about
// the same time. Repeated failures lock the account for password logins.
func (s *Service) LoginPassword(ctx context.Context, user, password string, dev DeviceParams) (*Credentials, error) {
	lp := s.localpartFor(user)
	if lp == "" || password == "" {
		passwordMatches(s.dummyHash, password)
		return nil, errBadLogin()
	}
	u, err := s.store.UserByLocalpart(ctx, lp)
	if errors.Is(err, ErrNotFound) {
		passwordMatches(s.dummyHash, password)
		return nil, errBadLogin()
	}
	if err != nil {
		return nil, fmt.Errorf("looking up user: %w", err)
	}
	if u.Deactivated {
		return nil, errDeactivated()
	}
	now := s.now()
	if !u.LockedUntil.IsZero() {
		if now.Before(u.LockedUntil) {
			return nil, errUserLocked(u.LockedUntil)
		}
		s.log.Info("login lock expired", "user_id", u.UserID, "locked_until", u.LockedUntil)
	}
	if !passwordMatches(u.PasswordHash, password) {
		if s.cfg.MaxLoginFailures > 0 {
			until, err := s.store.RecordLoginFailure(ctx, u.UserID, now, s.cfg.FailureWindow, s.cfg.MaxLoginFailures, now.Add(s.cfg.LockDuration))
			if err != nil {
				return nil, fmt.Errorf("recording login failure: %w", err)
			}
			if !until.IsZero() {
				s.log.Warn("account locked after repeated failed logins", "user_id", u.UserID,
					"failures", s.cfg.MaxLoginFailures, "locked_until", until, "remote_ip", dev.RemoteIP)
				return nil, errUserLocked(until)
			}
		}
		return nil, errBadLogin()
	}
	if !u.LockedUntil.IsZero() || s.cfg.MaxLoginFailures > 0 {
		if err := s.store.ClearLoginFailures(ctx, u.UserID); err != nil {
			return nil, fmt.Errorf("clearing login failures: %w", err)
		}
	}
	return s.startSession(ctx, u.UserID, dev)
}

// JWTEnabled reports whether org.matrix.login.jwt is offered.
func (s *Service) JWTEnabled() bool { return s.cfg.JWT != nil }

// LoginJWT validates a token from the organisation's identity provider and
// starts a session for its subject, creating the account first when
// auto-provisioning is on.
func (s *Service) LoginJWT(ctx context.Context, token string, dev DeviceParams) (*Credentials, error) {
	if s.cfg.JWT == nil {
		return nil, mautrix.MUnknown.WithMessage("JWT login is not enabled").WithStatus(400)
	}
	if token == "" {
		return nil, errForbidden("Missing JWT token")
	}
	sub, err := s.cfg.JWT.Subject(token, s.now())
	if err != nil {
		return nil, err
	}
	lp := strings.ToLower(s.localpartFor(sub))
	if lp == "" {
		return nil, errForbidden("JWT subject is a user of another server")
	}
	u, err := s.store.UserByLocalpart(ctx, lp)
	switch {
	case errors.Is(err, ErrNotFound):
		if !s.cfg.JWTAutoProvision {
			return nil, errForbidden("No account for this JWT subject")
		}
		if err := s.validLocalpart(lp); err != nil {
			return nil, errForbidden("JWT subject is not a valid user ID: " + err.Error())
		}
		sess, creds := s.newSession(dev)
		userID := s.UserIDFor(lp)
		err := s.store.CreateUser(ctx, User{UserID: userID, Localpart: lp}, lp, &sess, "")
		if errors.Is(err, ErrUserExists) {
			// Two first logins raced; the other one created the account.
			return s.startSession(ctx, userID, dev)
		}
		if err != nil {
			return nil, fmt.Errorf("provisioning %s: %w", userID, err)
		}
		s.log.Info("account provisioned from JWT", "user_id", userID)
		creds.UserID = userID
		return &creds, nil
	case err != nil:
		return nil, fmt.Errorf("looking up user: %w", err)
	case u.Deactivated:
		return nil, errDeactivated()
	}
	return s.startSession(ctx, u.UserID, dev)
}

// Logout ends the requester's session: the device and its tokens go.
func (s *Service) Logout(ctx context.Context, r *Requester) error {
	return s.DeleteDevices(ctx, r.UserID, []id.DeviceID{r.DeviceID})
}

// LogoutAll ends every session of the user.
func (s *Service) LogoutAll(ctx context.Context, userID id.UserID) error {
	if err := s.store.DeleteAllDevices(ctx, userID); err != nil {
		return fmt.Errorf("logging out all devices: %w", err)
	}
	s.cache.dropUser(userID)
	// Their keys went with them (foreign keys): tell those who share a
	// room, so they stop encrypting for the devices.
	s.deviceListChanged(ctx, userID)
	return nil
}
