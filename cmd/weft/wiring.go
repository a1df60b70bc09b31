package main

import (
	"log/slog"
	"time"

	"maunium.net/go/mautrix/id"

	"github.com/weftchat/weft/account"
	"github.com/weftchat/weft/api"
	"github.com/weftchat/weft/internal/config"
	"github.com/weftchat/weft/storage"
)

// reservedLocalparts are never handed out by registration: names users would
// take for the operator's, and the mail role names.
var reservedLocalparts = []string{
	"admin", "administrator", "root", "support", "security", "abuse", "postmaster",
	"hostmaster", "webmaster", "noreply", "no-reply", "system", "server", "notices",
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
