package account_test

import (
	"context"
	"errors"
	"os"
	"sync"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"

	"github.com/weftchat/weft/account"
	"github.com/weftchat/weft/storage"
	"github.com/weftchat/weft/storage/pgtest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// clock is a settable time source for the service.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func newService(t *testing.T) (*account.Service, *storage.DB, *clock) {
	t.Helper()
	db := pgtest.NewDB(t)
	clk := &clock{t: time.Now()}
	svc := account.New(account.Config{
		ServerName:          "example.org",
		RegistrationMode:    "open",
		Password:            account.PasswordPolicy{MinLength: 8, BcryptCost: 4},
		AccessTokenLifetime: time.Hour,
		MaxLoginFailures:    3,
		FailureWindow:       time.Minute,
		LockDuration:        time.Minute,
	}, db.Accounts(), nil, clk.now)
	return svc, db, clk
}

func errcode(err error) string {
	var re mautrix.RespError
	if errors.As(err, &re) {
		return re.ErrCode
	}
	return ""
}

// A warm token is answered from memory: with the database closed it still
// authenticates. Deleting its device makes it fail at once.
func TestTokenCacheServesWarmTokensAndForgetsDeletedOnes(t *testing.T) {
	svc, db, _ := newService(t)
	ctx := context.Background()
	if _, err := svc.CreateUserByOperator(ctx, "alice", "password1", false); err != nil {
		t.Fatal(err)
	}
	a, err := svc.LoginPassword(ctx, "alice", "password1", account.DeviceParams{})
	if err != nil {
		t.Fatal(err)
	}
	b, err := svc.LoginPassword(ctx, "alice", "password1", account.DeviceParams{})
	if err != nil {
		t.Fatal(err)
	}
	for _, tok := range []string{a.AccessToken, b.AccessToken} {
		if _, err := svc.Authenticate(ctx, tok); err != nil {
			t.Fatal(err)
		}
	}
	if err := svc.DeleteDevices(ctx, a.UserID, []id.DeviceID{a.DeviceID}); err != nil {
		t.Fatal(err)
	}
	if _, err := svc.Authenticate(ctx, a.AccessToken); errcode(err) != "M_UNKNOWN_TOKEN" {
		t.Fatalf("deleted device's token still works: %v", err)
	}
	db.Close()
	r, err := svc.Authenticate(ctx, b.AccessToken)
	if err != nil || r.DeviceID != b.DeviceID {
		t.Fatalf("warm token needed the database: %v", err)
	}
}

// A token deleted by another process (the CLI) stops working within the
// cache TTL.
func TestTokenCacheBoundsStalenessAcrossProcesses(t *testing.T) {
	svc, db, clk := newService(t)
	ctx := context.Background()
	if _, err := svc.CreateUserByOperator(ctx, "bob", "password1", false); err != nil {
		t.Fatal(err)
	}
	c, err := svc.LoginPassword(ctx, "bob", "password1", account.DeviceParams{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := svc.Authenticate(ctx, c.AccessToken); err != nil {
		t.Fatal(err)
	}
	// Another process's service, same database.
	other := account.New(account.Config{ServerName: "example.org", Password: account.PasswordPolicy{BcryptCost: 4}}, db.Accounts(), nil, nil)
	if err := other.LogoutAll(ctx, c.UserID); err != nil {
		t.Fatal(err)
	}
	clk.advance(time.Minute)
	if _, err := svc.Authenticate(ctx, c.AccessToken); errcode(err) != "M_UNKNOWN_TOKEN" {
		t.Fatalf("token revoked elsewhere still works after the TTL: %v", err)
	}
}

func TestLockoutAfterRepeatedFailures(t *testing.T) {
	svc, _, clk := newService(t)
	ctx := context.Background()
	if _, err := svc.CreateUserByOperator(ctx, "carol", "password1", false); err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		if _, err := svc.LoginPassword(ctx, "carol", "wrong", account.DeviceParams{}); errcode(err) != "M_FORBIDDEN" {
			t.Fatalf("failure %d: %v", i, err)
		}
	}
	if _, err := svc.LoginPassword(ctx, "carol", "wrong", account.DeviceParams{}); errcode(err) != "M_USER_LOCKED" {
		t.Fatalf("third failure should lock: %v", err)
	}
	if _, err := svc.LoginPassword(ctx, "carol", "password1", account.DeviceParams{}); errcode(err) != "M_USER_LOCKED" {
		t.Fatalf("right password accepted while locked: %v", err)
	}
	clk.advance(2 * time.Minute)
	if _, err := svc.LoginPassword(ctx, "carol", "password1", account.DeviceParams{}); err != nil {
		t.Fatalf("lock did not end: %v", err)
	}
	// Failures outside the window do not add up.
	for range 2 {
		_, _ = svc.LoginPassword(ctx, "carol", "wrong", account.DeviceParams{})
		clk.advance(2 * time.Minute)
	}
	if _, err := svc.LoginPassword(ctx, "carol", "wrong", account.DeviceParams{}); errcode(err) != "M_FORBIDDEN" {
		t.Fatalf("failures across windows locked the account: %v", err)
	}
}

func TestExpiredTokenIsSoftLogout(t *testing.T) {
	svc, _, clk := newService(t)
	ctx := context.Background()
	if _, err := svc.CreateUserByOperator(ctx, "dave", "password1", false); err != nil {
		t.Fatal(err)
	}
	c, err := svc.LoginPassword(ctx, "dave", "password1", account.DeviceParams{WantsRefresh: true})
	if err != nil {
		t.Fatal(err)
	}
	if c.RefreshToken == "" || c.ExpiresIn != time.Hour {
		t.Fatalf("no refresh token: %+v", c)
	}
	clk.advance(time.Hour + time.Second)
	_, err = svc.Authenticate(ctx, c.AccessToken)
	var re mautrix.RespError
	if !errors.As(err, &re) || re.ErrCode != "M_UNKNOWN_TOKEN" || re.ExtraData["soft_logout"] != true {
		t.Fatalf("expired token: %v", err)
	}
	n, err := svc.Refresh(ctx, c.RefreshToken)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := svc.Authenticate(ctx, n.AccessToken); err != nil {
		t.Fatal(err)
	}
	if _, err := svc.Refresh(ctx, c.RefreshToken); errcode(err) != "M_UNKNOWN_TOKEN" {
		t.Fatalf("old refresh token survived the use of its successor: %v", err)
	}
}
