package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"maunium.net/go/mautrix/id"

	"github.com/weftchat/weft/account"
	"github.com/weftchat/weft/internal/config"
	"github.com/weftchat/weft/storage"
)

const userUsage = `Usage:
  weft user create <name> [--admin] [--password P]   create an account (password read from stdin if not given)
  weft user list                                      list accounts
  weft user deactivate <user>                         close an account for ever
  weft user reset-password <user> [--password P]      set a new password; all sessions end
  weft user set-admin <user> true|false               grant or revoke server admin
  weft registration-token create [--uses N] [--valid-for 72h] [--token T]

All take -c weft.yaml (or WEFT_CONFIG / WEFT_* variables) to find the database;
with the embedded default they work beside a running server.
`

// opsEnv is what an operator command works with.
type opsEnv struct {
	cfg      *config.Config
	db       *storage.DB
	accounts *account.Service
	stdin    io.Reader
	stdout   io.Writer
}

// parseInterspersed parses flags that may stand before or after positional
// arguments, returning the positionals.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

// withAccounts opens the configured database and runs fn.
func withAccounts(ctx context.Context, cfgPath string, stdin io.Reader, stdout, stderr io.Writer, fn func(*opsEnv) error) error {
	cfg, err := config.Load(cfgPath, os.Environ())
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	db, closeDB, err := openDatabase(ctx, cfg, log, true)
	if err != nil {
		return err
	}
	defer closeDB()
	accounts, _, err := newServices(cfg, db, log)
	if err != nil {
		return err
	}
	return fn(&opsEnv{cfg: cfg, db: db, accounts: accounts, stdin: stdin, stdout: stdout})
}

// userID turns "alice" or "@alice:server" into a user ID on this server.
func (e *opsEnv) userID(name string) id.UserID {
	if strings.HasPrefix(name, "@") {
		return id.UserID(name)
	}
	return e.accounts.UserIDFor(strings.ToLower(name))
}

func (e *opsEnv) password(given string) (string, error) {
	if given != "" {
		return given, nil
	}
	fmt.Fprint(os.Stderr, "Password (read from standard input): ")
	line, err := bufio.NewReader(e.stdin).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return "", fmt.Errorf("reading password: %w", err)
	}
	pw := strings.TrimRight(line, "\r\n")
	if pw == "" {
		return "", errors.New("no password given: pass --password or write it to standard input")
	}
	return pw, nil
}

// userCommand runs `weft user ...` and `weft registration-token ...`.
func userCommand(ctx context.Context, group string, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, userUsage)
		return errors.New("missing subcommand")
	}
	sub := group + " " + args[0]
	fs := flag.NewFlagSet(sub, flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgPath := fs.String("c", os.Getenv("WEFT_CONFIG"), "config file")
	pw := fs.String("password", "", "password (default: read from standard input)")
	admin := fs.Bool("admin", false, "make the new user a server admin")
	uses := fs.Int("uses", 0, "how many registrations the token allows (0: unlimited)")
	validFor := fs.Duration("valid-for", 0, "how long the token is valid (0: no expiry)")
	token := fs.String("token", "", "the token text (default: random)")
	pos, err := parseInterspersed(fs, args[1:])
	if err != nil {
		return err
	}
	need := func(n int, what string) error {
		if len(pos) != n {
			return fmt.Errorf("%s needs %s", sub, what)
		}
		return nil
	}
	return withAccounts(ctx, *cfgPath, stdin, stdout, stderr, func(e *opsEnv) error {
		switch sub {
		case "user create":
			if err := need(1, "a user name"); err != nil {
				return err
			}
			p, err := e.password(*pw)
			if err != nil {
				return err
			}
			uid, err := e.accounts.CreateUserByOperator(ctx, pos[0], p, *admin)
			if err != nil {
				return err
			}
			fmt.Fprintln(e.stdout, "created", uid)
		case "user list":
			users, err := e.db.Accounts().ListUsers(ctx)
			if err != nil {
				return err
			}
			tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "USER\tADMIN\tGUEST\tDEACTIVATED\tCREATED")
			for _, u := range users {
				fmt.Fprintf(tw, "%s\t%t\t%t\t%t\t%s\n", u.UserID, u.IsAdmin, u.IsGuest, u.Deactivated, u.CreatedAt.UTC().Format(time.RFC3339))
			}
			return tw.Flush()
		case "user deactivate":
			if err := need(1, "a user"); err != nil {
				return err
			}
			if err := e.accounts.Deactivate(ctx, e.userID(pos[0])); err != nil {
				return err
			}
			fmt.Fprintln(e.stdout, "deactivated", e.userID(pos[0]))
		case "user reset-password":
			if err := need(1, "a user"); err != nil {
				return err
			}
			p, err := e.password(*pw)
			if err != nil {
				return err
			}
			if err := e.accounts.SetPasswordByOperator(ctx, e.userID(pos[0]), p); err != nil {
				return err
			}
			fmt.Fprintln(e.stdout, "password reset for", e.userID(pos[0]), "; all its sessions ended")
		case "user set-admin":
			if err := need(2, "a user and true or false"); err != nil {
				return err
			}
			v, err := strconv.ParseBool(pos[1])
			if err != nil {
				return fmt.Errorf("%q is not true or false", pos[1])
			}
			if err := e.accounts.SetAdmin(ctx, e.userID(pos[0]), v); err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "%s admin=%t\n", e.userID(pos[0]), v)
		case "registration-token create":
			t := account.RegistrationToken{Token: *token}
			if *uses > 0 {
				t.UsesAllowed = uses
			}
			if *validFor > 0 {
				t.ExpiryTime = time.Now().Add(*validFor)
			}
			tok, err := e.accounts.CreateRegistrationToken(ctx, t)
			if err != nil {
				return err
			}
			fmt.Fprintln(e.stdout, tok)
		default:
			fmt.Fprint(stderr, userUsage)
			return fmt.Errorf("unknown command %q", sub)
		}
		return nil
	})
}
