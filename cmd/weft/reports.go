package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"
)

const reportsUsage = `Usage:
  weft reports list [--limit N] [--since DATE]   content reports, newest first
                                                 (default limit 100, 0 for all;
                                                 DATE: 2006-01-02 (UTC) or RFC 3339)

Takes -c weft.yaml (or WEFT_CONFIG / WEFT_* variables) to find the database.
`

// defaultReportsLimit is how many reports `weft reports list` shows
// unless told otherwise.
const defaultReportsLimit = 100

// reportsCommand runs `weft reports ...`.
func reportsCommand(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, reportsUsage)
		return errors.New("missing subcommand")
	}
	sub := "reports " + args[0]
	fs := flag.NewFlagSet(sub, flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgPath := fs.String("c", os.Getenv("WEFT_CONFIG"), "config file")
	limit := fs.Int("limit", defaultReportsLimit, "how many reports to show (0: all)")
	sinceArg := fs.String("since", "", "only reports made at or after this date (2006-01-02 or RFC 3339)")
	pos, err := parseInterspersed(fs, args[1:])
	if err != nil {
		return err
	}
	if sub != "reports list" {
		fmt.Fprint(stderr, reportsUsage)
		return fmt.Errorf("unknown command %q", sub)
	}
	if len(pos) != 0 {
		return fmt.Errorf("%s takes no arguments, got %q", sub, strings.Join(pos, " "))
	}
	if *limit < 0 {
		return errors.New("--limit must not be negative")
	}
	var since time.Time
	if *sinceArg != "" {
		if since, err = parseSince(*sinceArg); err != nil {
			return err
		}
	}
	return withAccounts(ctx, *cfgPath, stdin, stdout, stderr, func(e *opsEnv) error {
		reports, err := e.db.Reports(ctx, since, *limit)
		if err != nil {
			return err
		}
		tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tTIME\tREPORTER\tROOM\tEVENT\tSCORE\tREASON")
		for _, r := range reports {
			event, score := "-", "-"
			if r.EventID != "" {
				event = string(r.EventID)
			}
			if r.Score != nil {
				score = strconv.Itoa(*r.Score)
			}
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\n", r.ID, r.At.UTC().Format(time.RFC3339),
				r.Reporter, r.RoomID, event, score, printable(r.Reason))
		}
		return tw.Flush()
	})
}

// parseSince reads --since: a day (UTC midnight) or an RFC 3339 time.
func parseSince(s string) (time.Time, error) {
	if t, err := time.Parse(time.DateOnly, s); err == nil {
		return t, nil
	}
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	return time.Time{}, fmt.Errorf("--since %q is not a date (2006-01-02) or an RFC 3339 time", s)
}

// printable makes a reporter's free text safe for the operator's terminal
// and the table: text with control characters (escape sequences, tabs,
// newlines) is shown quoted, with them escaped.
func printable(s string) string {
	if strings.IndexFunc(s, func(r rune) bool { return !unicode.IsPrint(r) }) >= 0 {
		return strconv.Quote(s)
	}
	return s
}
