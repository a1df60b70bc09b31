package e2e

import (
	"context"
	"strings"
	"testing"

	"maunium.net/go/mautrix"

	"github.com/weftchat/weft/storage/pgtest"
)

// Operator commands work against the same database as a running server.
func TestUserCLI(t *testing.T) {
	dbURL := pgtest.NewDatabase(t)
	env := accountsEnv(map[string]string{"WEFT_DATABASE_URL": dbURL, "WEFT_REGISTRATION_MODE": "token"})
	srv := Start(t, Options{Env: env})
	cliEnv := map[string]string{"WEFT_DATABASE_URL": dbURL, "WEFT_PASSWORDS_BCRYPT_COST": "4", "WEFT_DATA_DIR": TempDir(t)}

	out, code := Run(t, cliEnv, "user", "create", "Olivia", "--password", "operator-set-pw")
	if code != 0 || !strings.Contains(out, "@olivia:localhost") {
		t.Fatalf("user create: %d %s", code, out)
	}
	if out, code := Run(t, cliEnv, "user", "create", "olivia", "--password", "operator-set-pw"); code != 1 || !strings.Contains(out, "M_USER_IN_USE") {
		t.Fatalf("duplicate create: %d %s", code, out)
	}
	if out, code := Run(t, cliEnv, "user", "create", "weak", "--password", "short"); code != 1 || !strings.Contains(out, "M_WEAK_PASSWORD") {
		t.Fatalf("weak password: %d %s", code, out)
	}
	login := func(pw string) (*mautrix.RespLogin, error) {
		return srv.Client().Login(context.Background(), &mautrix.ReqLogin{
			Type: mautrix.AuthTypePassword, Identifier: mautrix.UserIdentifier{Type: mautrix.IdentifierTypeUser, User: "olivia"}, Password: pw,
		})
	}
	first, err := login("operator-set-pw")
	if err != nil {
		t.Fatalf("login with the CLI's password: %v", err)
	}

	out, code = Run(t, cliEnv, "user", "set-admin", "olivia", "true")
	if code != 0 {
		t.Fatalf("set-admin: %d %s", code, out)
	}
	out, code = Run(t, cliEnv, "user", "list")
	if code != 0 || !strings.Contains(out, "@olivia:localhost") || !strings.Contains(out, "true") {
		t.Fatalf("list: %d %s", code, out)
	}

	// reset-password ends every session and only the new password works.
	if out, code := Run(t, cliEnv, "user", "reset-password", "@olivia:localhost", "--password", "second-password"); code != 0 {
		t.Fatalf("reset-password: %d %s", code, out)
	}
	doJSON(t, "GET", srv.URL+"/_matrix/client/v3/account/whoami", first.AccessToken, nil).wantErr(t, 401, "M_UNKNOWN_TOKEN")
	if _, err := login("operator-set-pw"); err == nil {
		t.Fatal("old password still works")
	}
	second, err := login("second-password")
	if err != nil {
		t.Fatal(err)
	}

	// A registration token issued by the CLI lets one person register.
	tok, code := Run(t, cliEnv, "registration-token", "create", "--uses", "1")
	tok = strings.TrimSpace(tok)
	if code != 0 || tok == "" {
		t.Fatalf("registration-token: %d %q", code, tok)
	}
	doJSON(t, "GET", srv.URL+"/_matrix/client/v1/register/m.login.registration_token/validity?token="+tok, "", nil).wantOK(t)
	first401 := doJSON(t, "POST", srv.URL+"/_matrix/client/v3/register", "", map[string]any{"username": "newcomer", "password": "newcomer-pw-1"})
	if first401.Status != 401 {
		t.Fatalf("want UIA 401, got %d %s", first401.Status, first401.Raw)
	}
	done := doJSON(t, "POST", srv.URL+"/_matrix/client/v3/register", "", map[string]any{
		"username": "newcomer", "password": "newcomer-pw-1",
		"auth": map[string]any{"type": "m.login.registration_token", "token": tok, "session": first401.Body["session"]},
	})
	done.wantOK(t)
	if done.Body["user_id"] != "@newcomer:localhost" {
		t.Fatalf("registered %v", done.Body)
	}

	// deactivate: logins refused, sessions gone.
	if out, code := Run(t, cliEnv, "user", "deactivate", "olivia"); code != 0 {
		t.Fatalf("deactivate: %d %s", code, out)
	}
	doJSON(t, "GET", srv.URL+"/_matrix/client/v3/account/whoami", second.AccessToken, nil).wantErr(t, 401, "M_UNKNOWN_TOKEN")
	if _, err := login("second-password"); err == nil {
		t.Fatal("deactivated user logged in")
	}

	if out, code := Run(t, cliEnv, "user", "frobnicate"); code != 1 || !strings.Contains(out, "unknown command") {
		t.Fatalf("unknown subcommand: %d %s", code, out)
	}
}
