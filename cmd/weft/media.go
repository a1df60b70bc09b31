package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/weftchat/weft/api"
	"github.com/weftchat/weft/internal/config"
	"github.com/weftchat/weft/internal/urlpreview"
	"github.com/weftchat/weft/media"
	"github.com/weftchat/weft/media/thumbnail"
	"github.com/weftchat/weft/storage"
)

const mediaUsage = `Usage:
  weft media purge --before DATE   delete media uploaded before DATE, with their
                                   thumbnails and the files nothing else uses
                                   (DATE: 2006-01-02 (UTC) or RFC 3339)

Takes -c weft.yaml (or WEFT_CONFIG / WEFT_* variables) to find the database
and data_dir; with the embedded default it works beside a running server.
`

// mediaDir is where media content lives under data_dir.
func mediaDir(cfg *config.Config) string { return filepath.Join(cfg.DataDir, "media") }

// newMedia builds the media repository over storage and data_dir/media.
// Its background thumbnailing runs until Close.
func newMedia(cfg *config.Config, db *storage.DB, log *slog.Logger) (*media.Service, error) {
	blobs, err := media.NewLocalBlobs(mediaDir(cfg))
	if err != nil {
		return nil, fmt.Errorf("media store (data_dir %s): %w", cfg.DataDir, err)
	}
	m := cfg.Media
	sizes := make([]thumbnail.Size, 0, len(m.ThumbnailSizes))
	for _, s := range m.ThumbnailSizes {
		sizes = append(sizes, thumbnail.Size{Width: s.Width, Height: s.Height, Method: thumbnail.Method(s.Method)})
	}
	return media.New(media.Config{
		ServerName:            cfg.ServerName,
		MaxUploadSize:         m.MaxUploadSize,
		UserQuota:             m.UserQuota,
		MaxPendingUploads:     m.MaxPendingUploads,
		UnusedExpiry:          time.Duration(m.UnusedExpiry),
		MaxImagePixels:        m.MaxImagePixels,
		ThumbnailSizes:        sizes,
		FreezeUnauthenticated: m.FreezeUnauthenticated,
	}, db.Media(), blobs, log, nil), nil
}

// startMedia builds the media repository for serve, starts the task that
// deletes expired pending media IDs and, when media.url_preview.enabled,
// builds the URL previewer (otherwise preview is nil and preview_url
// answers 404). stop ends all of them; call it before the pool closes.
func startMedia(ctx context.Context, cfg *config.Config, db *storage.DB, log *slog.Logger) (svc *media.Service, preview api.URLPreviewer, stop func(), err error) {
	svc, err = newMedia(cfg, db, log)
	if err != nil {
		return nil, nil, nil, err
	}
	var previewer *media.Previewer
	if up := cfg.Media.URLPreview; up.Enabled {
		allowed, err := up.AllowedPrefixes()
		if err != nil { // validated when the config loaded
			svc.Close()
			return nil, nil, nil, fmt.Errorf("media.url_preview.ip_range_allowlist: %w", err)
		}
		previewer = media.NewPreviewer(svc, urlpreview.ForMedia(urlpreview.New(urlpreview.Config{
			Timeout:      time.Duration(up.Timeout),
			MaxBytes:     up.MaxBytes,
			AllowedCIDRs: allowed,
		})), media.PreviewConfig{MaxImageBytes: up.MaxBytes})
		preview = previewer
	}
	// Expired IDs are refused whether or not the task has run; it only
	// reclaims their rows, so a few minutes' delay is fine.
	every := min(max(time.Duration(cfg.Media.UnusedExpiry)/4, time.Second), 10*time.Minute)
	ectx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); svc.RunExpiry(ectx, every) }()
	return svc, preview, func() {
		cancel()
		<-done
		// Previews store images through svc: stop them first.
		if previewer != nil {
			previewer.Close()
		}
		svc.Close()
	}, nil
}

// mediaCommand runs `weft media ...`.
func mediaCommand(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, mediaUsage)
		return errors.New("missing subcommand")
	}
	sub := "media " + args[0]
	fs := flag.NewFlagSet(sub, flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgPath := fs.String("c", os.Getenv("WEFT_CONFIG"), "config file")
	beforeArg := fs.String("before", "", "delete media uploaded before this date (2006-01-02 or RFC 3339)")
	pos, err := parseInterspersed(fs, args[1:])
	if err != nil {
		return err
	}
	if sub != "media purge" {
		fmt.Fprint(stderr, mediaUsage)
		return fmt.Errorf("unknown command %q", sub)
	}
	if len(pos) != 0 {
		return fmt.Errorf("%s takes no arguments, got %q (did you mean --before %s?)", sub, strings.Join(pos, " "), pos[0])
	}
	if *beforeArg == "" {
		return errors.New("--before is required, e.g. weft media purge --before 2024-01-31")
	}
	before, err := parseBefore(*beforeArg)
	if err != nil {
		return err
	}
	if before.After(time.Now()) {
		return fmt.Errorf("--before %s is in the future: that would delete every upload, including ones still being made; give a past date", *beforeArg)
	}
	cfg, err := config.Load(*cfgPath, os.Environ())
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	db, closeDB, err := openDatabase(ctx, cfg, log, true)
	if err != nil {
		return err
	}
	defer closeDB()
	svc, err := newMedia(cfg, db, log)
	if err != nil {
		return err
	}
	defer svc.Close()
	return purgeMedia(ctx, svc, before, mediaDir(cfg), stdout)
}

// purgeMedia runs the purge, printing a progress line at most every second
// and a summary.
func purgeMedia(ctx context.Context, svc *media.Service, before time.Time, dir string, stdout io.Writer) error {
	var last time.Time
	line := func(p media.PurgeProgress) string {
		return fmt.Sprintf("purged %d/%d media, %s freed", p.Deleted, p.Total, media.FormatBytes(p.Freed))
	}
	p, err := svc.Purge(ctx, before, func(p media.PurgeProgress) {
		if time.Since(last) >= time.Second {
			last = time.Now()
			fmt.Fprintln(stdout, line(p))
		}
	})
	if err != nil {
		hint := "nothing is half-deleted: run the same command again to finish"
		if errors.Is(err, fs.ErrPermission) {
			hint = "run weft as the account that owns " + dir + ", then run the same command again to finish"
		}
		return fmt.Errorf("media purge stopped after %s: %w; %s", line(p), err, hint)
	}
	fmt.Fprintf(stdout, "done: %s (%d files removed; content still used by newer media was kept)\n", line(p), p.Blobs)
	return nil
}

// parseBefore reads --before: a day (UTC midnight) or an RFC 3339 time.
func parseBefore(s string) (time.Time, error) {
	if t, err := time.Parse(time.DateOnly, s); err == nil {
		return t, nil
	}
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	return time.Time{}, fmt.Errorf("--before %q is not a date (2006-01-02) or an RFC 3339 time (2006-01-02T15:04:05Z)", s)
}
