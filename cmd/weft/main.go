// Command weft is the Weft Matrix homeserver: one binary whose subcommands
// run the server and help operate it.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"strings"

	"github.com/weftchat/weft"
)

// version is set at release time with -ldflags "-X main.version=v1.2.3".
var version = "dev"

const usage = `weft: a Matrix homeserver

Usage:
  weft serve [-c weft.yaml]   run the server (no config: embedded PostgreSQL, localhost)
  weft user ...               create, list, deactivate accounts; reset passwords; set admins
  weft registration-token create   issue a registration token (registration.mode: token)
  weft reports list           list users' content reports, newest first
  weft media purge --before DATE   delete media uploaded before DATE
  weft keys show              print the server's signing key ID and public key
  weft generate-config        print a commented configuration to start from
  weft version                print the version

Every config key can also be set from the environment: WEFT_SERVER_NAME,
WEFT_LISTEN, WEFT_DATABASE_URL, WEFT_DATA_DIR, WEFT_LOG_LEVEL, ...
(WEFT_ + the key's path in capitals). WEFT_CONFIG names the config file.
`

func main() {
	os.Exit(run(context.Background(), os.Args[1:], os.Stdout, os.Stderr))
}

// run dispatches a subcommand and returns the process exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "serve":
		if err := serve(ctx, args[1:], stderr); err != nil {
			// One line: operators read it in a journal or a container log.
			fmt.Fprintln(stderr, "weft: "+strings.ReplaceAll(err.Error(), "\n", "; "))
			return 1
		}
		return 0
	case "user", "registration-token":
		if err := userCommand(ctx, args[0], args[1:], os.Stdin, stdout, stderr); err != nil {
			fmt.Fprintln(stderr, "weft: "+strings.ReplaceAll(err.Error(), "\n", "; "))
			return 1
		}
		return 0
	case "reports":
		if err := reportsCommand(ctx, args[1:], os.Stdin, stdout, stderr); err != nil {
			fmt.Fprintln(stderr, "weft: "+strings.ReplaceAll(err.Error(), "\n", "; "))
			return 1
		}
		return 0
	case "media":
		if err := mediaCommand(ctx, args[1:], stdout, stderr); err != nil {
			fmt.Fprintln(stderr, "weft: "+strings.ReplaceAll(err.Error(), "\n", "; "))
			return 1
		}
		return 0
	case "keys":
		if err := keysCommand(args[1:], stdout); err != nil {
			fmt.Fprintln(stderr, "weft: "+err.Error())
			return 1
		}
		return 0
	case "generate-config":
		_, _ = stdout.Write(weft.SampleConfig())
		return 0
	case "version", "--version", "-v":
		fmt.Fprintln(stdout, "weft", versionString())
		return 0
	case "help", "--help", "-h":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "weft: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
}

func versionString() string {
	v := version
	if info, ok := debug.ReadBuildInfo(); ok {
		for _, s := range info.Settings {
			if s.Key == "vcs.revision" && len(s.Value) >= 12 {
				v += " (" + s.Value[:12] + ")"
			}
		}
		v += " " + info.GoVersion
	}
	return v
}
