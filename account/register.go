package account

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha1"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"slices"
	"strings"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"
)

// RegisterParams is a registration request.
type RegisterParams struct {
	Username     string
	Password     string
	Device       DeviceParams
	InhibitLogin bool
	Guest        bool
	Auth         json.RawMessage
}

func errInvalidUsername(msg string) error { return mautrix.MInvalidUsername.WithMessage(msg) }

// validLocalpart applies the spec's grammar for new user IDs and Weft's
// reservations: a leading underscore is kept for bridges and application
// services, and the operator's reserved names are never handed out.
func (s *Service) validLocalpart(lp string) error {
	if lp == "" {
		return errInvalidUsername("User ID cannot be empty")
	}
	if err := id.ValidateUserLocalpart(lp); err != nil {
		return errInvalidUsername("User ID may only contain a-z, 0-9, and . _ = - / +")
	}
	if len(s.UserIDFor(lp)) > id.UserIDMaxLength {
		return errInvalidUsername("User ID is longer than 255 characters")
	}
	if strings.HasPrefix(lp, "_") {
		return mautrix.MExclusive.WithMessage("User IDs starting with _ are reserved for bridges and application services")
	}
	if slices.Contains(s.cfg.ReservedLocalparts, lp) {
		return mautrix.MUserInUse.WithMessage("This user ID is reserved")
	}
	return nil
}

// UsernameAvailable answers GET /register/available.
func (s *Service) UsernameAvailable(ctx context.Context, username string) error {
	lp := strings.ToLower(username)
	if err := s.validLocalpart(lp); err != nil {
		return err
	}
	_, err := s.store.UserByLocalpart(ctx, lp)
	switch {
	case errors.Is(err, ErrNotFound):
		return nil
	case err != nil:
		return fmt.Errorf("checking username: %w", err)
	}
	return mautrix.MUserInUse.WithMessage("User ID already taken")
}

// registrationFlows are the UIA flows for the configured mode.
func (s *Service) registrationFlows() [][]string {
	switch s.cfg.RegistrationMode {
	case "open":
		return [][]string{{StageDummy}}
	case "token":
		return [][]string{{StageRegistrationToken}}
	}
	return nil
}

// Register creates an account through user-interactive auth (or a guest
// account, when guests are allowed) and, unless inhibited, logs it in.
func (s *Service) Register(ctx context.Context, p RegisterParams) (*Credentials, error) {
	if p.Guest {
		return s.registerGuest(ctx, p)
	}
	flows := s.registrationFlows()
	if flows == nil {
		return nil, errForbidden("Registration is disabled on this server")
	}
	// Validate before UIA, so that a client learns of a taken name or weak
	// password before spending a registration token on it.
	lp := strings.ToLower(p.Username)
	if p.Username == "" {
		lp = randomLocalpart()
	} else if err := s.UsernameAvailable(ctx, lp); err != nil {
		return nil, err
	}
	if p.Password == "" {
		return nil, errMissingParam("A password is required")
	}
	if err := s.cfg.Password.Check(p.Password); err != nil {
		return nil, err
	}
	if err := validDeviceID(p.Device.DeviceID); err != nil {
		return nil, err
	}
	sess, err := s.checkUIA(ctx, uiaRequest{op: "register", flows: flows}, p.Auth)
	if err != nil {
		return nil, err
	}
	creds, err := s.createAccount(ctx, lp, p.Password, false, p.InhibitLogin, p.Device, sess.RegToken)
	if err != nil {
		return nil, err
	}
	s.finishUIA(ctx, sess)
	return creds, nil
}

func (s *Service) registerGuest(ctx context.Context, p RegisterParams) (*Credentials, error) {
	if !s.cfg.AllowGuests {
		return nil, mautrix.RespError{ErrCode: "M_GUEST_ACCESS_FORBIDDEN", Err: "Guest access is disabled on this server"}
	}
	// Guests always get a generated ID and a new device (spec).
	p.Device.DeviceID = ""
	lp := randomLocalpart()
	sess, creds := s.newSession(p.Device)
	userID := s.UserIDFor(lp)
	if err := s.store.CreateUser(ctx, User{UserID: userID, Localpart: lp, IsGuest: true}, lp, &sess, ""); err != nil {
		return nil, fmt.Errorf("creating guest: %w", err)
	}
	creds.UserID = userID
	return &creds, nil
}

// createAccount stores a new user (and session unless inhibited).
func (s *Service) createAccount(ctx context.Context, lp, password string, admin, inhibitLogin bool, dev DeviceParams, regToken string) (*Credentials, error) {
	hash, err := hashPassword(password, s.cfg.Password.bcryptCost())
	if err != nil {
		return nil, err
	}
	userID := s.UserIDFor(lp)
	u := User{UserID: userID, Localpart: lp, PasswordHash: hash, IsAdmin: admin}
	var sessp *NewSession
	creds := &Credentials{UserID: userID}
	if !inhibitLogin {
		sess, c := s.newSession(dev)
		sessp, creds = &sess, &c
		creds.UserID = userID
	}
	err = s.store.CreateUser(ctx, u, lp, sessp, regToken)
	if errors.Is(err, ErrUserExists) {
		return nil, mautrix.MUserInUse.WithMessage("User ID already taken")
	}
	if err != nil {
		return nil, fmt.Errorf("creating user %s: %w", userID, err)
	}
	s.log.Info("account registered", "user_id", userID, "admin", admin)
	return creds, nil
}

// CreateUserByOperator is `weft user create`: no UIA, no registration mode.
func (s *Service) CreateUserByOperator(ctx context.Context, username, password string, admin bool) (id.UserID, error) {
	lp := strings.ToLower(s.localpartFor(username))
	if err := s.UsernameAvailable(ctx, lp); err != nil {
		return "", err
	}
	if err := s.cfg.Password.Check(password); err != nil {
		return "", err
	}
	creds, err := s.createAccount(ctx, lp, password, admin, true, DeviceParams{}, "")
	if err != nil {
		return "", err
	}
	return creds.UserID, nil
}

func randomLocalpart() string {
	n, _ := rand.Int(rand.Reader, big.NewInt(1e12))
	return fmt.Sprintf("u%012d", n)
}

// RegistrationTokenValid answers the token validity endpoint: the token
// exists, has not expired and has uses left (counting pending ones).
func (s *Service) RegistrationTokenValid(ctx context.Context, token string) (bool, error) {
	t, err := s.store.RegistrationToken(ctx, token)
	if errors.Is(err, ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("looking up registration token: %w", err)
	}
	if !t.ExpiryTime.IsZero() && !s.now().Before(t.ExpiryTime) {
		return false, nil
	}
	if t.UsesAllowed != nil && t.Pending+t.Completed >= *t.UsesAllowed {
		return false, nil
	}
	return true, nil
}

// CreateRegistrationToken is the operator's way to issue a token.
func (s *Service) CreateRegistrationToken(ctx context.Context, t RegistrationToken) (string, error) {
	if t.Token == "" {
		var b [12]byte
		_, _ = rand.Read(b[:])
		t.Token = hex.EncodeToString(b[:])
	}
	if err := s.store.CreateRegistrationToken(ctx, t); err != nil {
		return "", fmt.Errorf("creating registration token: %w", err)
	}
	return t.Token, nil
}

// SharedSecretEnabled reports whether /_synapse/admin/v1/register is on.
func (s *Service) SharedSecretEnabled() bool { return s.cfg.SharedSecret != "" }

// NewRegistrationNonce starts a shared-secret registration (valid 60 s, once).
func (s *Service) NewRegistrationNonce(ctx context.Context) (string, error) {
	var b [16]byte
	_, _ = rand.Read(b[:])
	nonce := hex.EncodeToString(b[:])
	if err := s.store.CreateNonce(ctx, nonce, s.now().Add(time.Minute)); err != nil {
		return "", fmt.Errorf("storing nonce: %w", err)
	}
	return nonce, nil
}

// SharedSecretParams is Synapse's admin registration request.
type SharedSecretParams struct {
	Nonce, Username, DisplayName, Password, MAC string
	Admin                                       bool
}

// RegisterWithSharedSecret is Synapse's admin registration: the MAC is
// HMAC-SHA1(secret, nonce \0 username \0 password \0 admin|notadmin), hex.
// It works whatever the registration mode, since only the operator has the secret.
func (s *Service) RegisterWithSharedSecret(ctx context.Context, p SharedSecretParams) (*Credentials, error) {
	if !s.SharedSecretEnabled() {
		return nil, mautrix.RespError{ErrCode: "M_UNRECOGNIZED", Err: "Shared-secret registration is not enabled", StatusCode: 400}
	}
	if p.Nonce == "" || p.Username == "" || p.Password == "" || p.MAC == "" {
		return nil, errMissingParam("nonce, username, password and mac are required")
	}
	ok, err := s.store.UseNonce(ctx, p.Nonce, s.now())
	if err != nil {
		return nil, fmt.Errorf("checking nonce: %w", err)
	}
	if !ok {
		return nil, errForbidden("Unrecognised or used nonce")
	}
	m := hmac.New(sha1.New, []byte(s.cfg.SharedSecret))
	m.Write([]byte(p.Nonce + "\x00" + p.Username + "\x00" + p.Password + "\x00"))
	if p.Admin {
		m.Write([]byte("admin"))
	} else {
		m.Write([]byte("notadmin"))
	}
	want := m.Sum(nil)
	got, err := hex.DecodeString(p.MAC)
	if err != nil || !hmac.Equal(want, got) {
		return nil, errForbidden("HMAC incorrect")
	}
	lp := strings.ToLower(p.Username)
	if err := s.UsernameAvailable(ctx, lp); err != nil {
		return nil, err
	}
	if err := s.cfg.Password.Check(p.Password); err != nil {
		return nil, err
	}
	creds, err := s.createAccount(ctx, lp, p.Password, p.Admin, false, DeviceParams{}, "")
	if err != nil {
		return nil, err
	}
	if p.DisplayName != "" {
		if err := s.store.SetDisplayName(ctx, creds.UserID, p.DisplayName); err != nil {
			return nil, fmt.Errorf("setting display name: %w", err)
		}
	}
	return creds, nil
}
