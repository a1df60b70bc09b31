package e2e

import (
	"context"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"maunium.net/go/mautrix"

	"github.com/weftchat/weft/storage/pgtest"
)

// The operator reads users' content reports with `weft reports list`,
// newest first, beside the running server.
func TestReportsCLI(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dbURL := pgtest.NewDatabase(t)
	srv := startAccounts(t, map[string]string{"WEFT_DATABASE_URL": dbURL})
	cliEnv := map[string]string{"WEFT_DATABASE_URL": dbURL, "WEFT_DATA_DIR": TempDir(t)}
	alice := registerUser(t, srv, "alice", "alice-password")
	bob := registerUser(t, srv, "bob", "bob-password")
	carol := registerUser(t, srv, "carol", "carol-password")

	// No reports yet: the header alone.
	out, code := Run(t, cliEnv, "reports", "list")
	if code != 0 || len(reportLines(out)) != 1 || !strings.HasPrefix(out, "ID") {
		t.Fatalf("empty list: %d %q", code, out)
	}

	roomID := createRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	msg, err := alice.SendText(ctx, roomID, "something rude")
	if err != nil {
		t.Fatal(err)
	}
	joinRoom(t, bob, roomID)
	doJSON(t, http.MethodPost, clientURL(srv, "v3", "rooms", string(roomID), "report", string(msg.EventID)), bob.AccessToken,
		map[string]any{"reason": "rude words", "score": -50}).wantOK(t)
	// A reason is the reporter's free text: control characters must not
	// reach the operator's terminal, nor break the table.
	if err := carol.ReportRoom(ctx, roomID, "spam\x1b[2J\nsecond line"); err != nil {
		t.Fatal(err)
	}

	out, code = Run(t, cliEnv, "reports", "list")
	lines := reportLines(out)
	if code != 0 || len(lines) != 3 {
		t.Fatalf("reports list: %d %q", code, out)
	}
	for _, col := range []string{"ID", "TIME", "REPORTER", "ROOM", "EVENT", "SCORE", "REASON"} {
		if !strings.Contains(lines[0], col) {
			t.Fatalf("header %q has no %s", lines[0], col)
		}
	}
	if strings.ContainsRune(out, '\x1b') {
		t.Fatalf("escape sequence printed: %q", out)
	}
	// Newest first: carol's report of the room, then bob's of the event.
	roomRep, eventRep := strings.Fields(lines[1]), strings.Fields(lines[2])
	if len(roomRep) < 7 || roomRep[2] != string(carol.UserID) || roomRep[3] != string(roomID) || roomRep[4] != "-" || roomRep[5] != "-" ||
		!strings.Contains(lines[1], `"spam\x1b[2J\nsecond line"`) {
		t.Fatalf("room report line %q", lines[1])
	}
	if len(eventRep) < 8 || eventRep[2] != string(bob.UserID) || eventRep[3] != string(roomID) || eventRep[4] != string(msg.EventID) ||
		eventRep[5] != "-50" || !strings.HasSuffix(lines[2], "rude words") {
		t.Fatalf("event report line %q", lines[2])
	}
	for _, f := range [][]string{roomRep, eventRep} {
		at, err := time.Parse(time.RFC3339, f[1])
		if err != nil || time.Since(at) > time.Minute || time.Until(at) > time.Minute {
			t.Fatalf("report time %q: %v", f[1], err)
		}
	}
	if newer, err1 := strconv.Atoi(roomRep[0]); err1 != nil {
		t.Fatalf("report id %q", roomRep[0])
	} else if older, err2 := strconv.Atoi(eventRep[0]); err2 != nil || newer <= older {
		t.Fatalf("report ids %s, %s: the newer report should have the larger id", roomRep[0], eventRep[0])
	}

	// --limit keeps the newest.
	out, code = Run(t, cliEnv, "reports", "list", "--limit", "1")
	if lines := reportLines(out); code != 0 || len(lines) != 2 || !strings.Contains(lines[1], string(carol.UserID)) {
		t.Fatalf("--limit 1: %d %q", code, out)
	}
	// --since: a day (UTC) or an RFC 3339 time.
	today := time.Now().UTC().Format(time.DateOnly)
	if out, code = Run(t, cliEnv, "reports", "list", "--since", today); code != 0 || len(reportLines(out)) != 3 {
		t.Fatalf("--since today: %d %q", code, out)
	}
	later := time.Now().Add(time.Hour).UTC().Format(time.RFC3339)
	if out, code = Run(t, cliEnv, "reports", "list", "--since", later); code != 0 || len(reportLines(out)) != 1 {
		t.Fatalf("--since an hour ahead: %d %q", code, out)
	}

	// Mistakes are named.
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"reports", "list", "--since", "yesterday"}, "--since"},
		{[]string{"reports", "list", "--limit", "-1"}, "--limit"},
		{[]string{"reports", "list", "extra"}, "no arguments"},
		{[]string{"reports", "delete"}, "unknown command"},
		{[]string{"reports"}, "missing subcommand"},
	} {
		if out, code := Run(t, cliEnv, c.args...); code != 1 || !strings.Contains(out, c.want) {
			t.Errorf("%v: %d %q, want exit 1 naming %q", c.args, code, out, c.want)
		}
	}
	if out, _ := Run(t, cliEnv, "help"); !strings.Contains(out, "weft reports list") {
		t.Errorf("usage does not mention reports: %q", out)
	}
}

// reportLines are the non-empty lines of the CLI's output.
func reportLines(out string) []string {
	var lines []string
	for _, l := range strings.Split(out, "\n") {
		if strings.TrimSpace(l) != "" {
			lines = append(lines, l)
		}
	}
	return lines
}
