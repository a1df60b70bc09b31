package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/weftchat/weft/api"
	"github.com/weftchat/weft/internal/config"
	"github.com/weftchat/weft/internal/memrelease"
)

// defaultGCPercent is the server's GOGC unless the environment sets one.
// A homeserver's live heap is small (tens of MiB) and its allocation rate
// high (every request, every wake-up), so Go's default of 100 collects
// very often: at 200 a fan-out of one message to 1,000 devices costs
// about a sixth less server CPU (docs/performance.md). The heap may grow
// to three times the live heap under load instead of two; memrelease
// gives it back when the load ends.
const defaultGCPercent = 200

// memreleaseInterval is how often the server looks for free heap memory
// to give back to the system.
const memreleaseInterval = 30 * time.Second

// serve runs the homeserver until SIGINT or SIGTERM, then shuts down in
// order: stop accepting, drain in-flight requests (up to the grace period),
// close the pool, stop the embedded PostgreSQL.
func serve(parent context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgPath := fs.String("c", os.Getenv("WEFT_CONFIG"), "path to the YAML config file (default: none; env WEFT_CONFIG)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	cfg, err := config.Load(*cfgPath, os.Environ())
	if err != nil {
		return err
	}
	log := newLogger(cfg.Log, stderr)
	ctx, stop := signal.NotifyContext(parent, syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	db, closeDB, err := openDatabase(ctx, cfg, log, false)
	if err != nil {
		return err
	}
	defer closeDB()

	accounts, rooms, err := newServices(cfg, db, log)
	if err != nil {
		return err
	}
	pushRules := newPushRules(db, rooms, log)
	syncs, err := newSync(ctx, db, accounts, rooms, log)
	if err != nil {
		return err
	}
	// Push delivery stops before the pool closes (deferred after closeDB,
	// so it runs first).
	stopPush, err := startPushDelivery(ctx, cfg, db, syncs, log)
	if err != nil {
		return err
	}
	defer stopPush()
	// The presence timer moves users who stopped syncing to unavailable
	// and offline; it is stopped (deferred after closeDB, so run before
	// it) before the pool closes.
	presenceCtx, stopPresence := context.WithCancel(ctx)
	presenceDone := make(chan struct{})
	go func() { defer close(presenceDone); accounts.RunPresence(presenceCtx) }()
	defer func() { stopPresence(); <-presenceDone }()
	// Media: background thumbnailing, the expiry of unused media IDs and
	// URL previews (nil unless enabled), stopped before the pool closes
	// like the presence timer.
	mediaRepo, urlPreview, stopMedia, err := startMedia(ctx, cfg, db, log)
	if err != nil {
		return err
	}
	defer stopMedia()

	// Trade some memory under load for less GC work, and give memory
	// back to the system after bursts (internal/memrelease).
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(defaultGCPercent)
	}
	go memrelease.New(log).Run(ctx, memreleaseInterval)

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), db.Collector(),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "weft_sync_long_polls", Help: "/sync requests waiting for something to happen."},
			func() float64 { return float64(syncs.Notifier().Waiting()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "weft_sync_shared_answers_total", Help: "/sync answers taken from the response another device of the same user built."},
			func() float64 { return float64(syncs.SharedAnswers()) }))

	rawLn, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listening on %s (config key listen): %w", cfg.Listen, err)
	}
	// Idle long-polls park their connections and hand them back through ln.
	ln := api.NewListener(rawLn)
	trusted, _ := cfg.HTTP.TrustedPrefixes() // validated when the config loaded
	handler := api.NewRouter(api.Options{
		Listener:         ln,
		TrustedProxies:   trusted,
		ServerName:       cfg.ServerName,
		BaseURL:          cfg.BaseURL(),
		WellKnownServer:  cfg.WellKnown.Server,
		Support:          supportDoc(cfg.Support),
		MaxBodyBytes:     cfg.HTTP.MaxBodyBytes,
		Accounts:         accounts,
		Rooms:            rooms,
		Push:             pushRules,
		Sync:             syncs,
		Media:            mediaRepo,
		URLPreview:       urlPreview,
		RegistrationMode: cfg.Registration.Mode,
		RateLimits:       rateLimits(cfg.RateLimits),
		TURN: api.TURN{
			URIs:         cfg.TURN.URIs,
			SharedSecret: cfg.TURN.SharedSecret,
			Lifetime:     time.Duration(cfg.TURN.Lifetime),
		},
		Logger:   log,
		Health:   db,
		Metrics:  reg,
		Gatherer: reg,
	})

	srv := &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: time.Duration(cfg.HTTP.ReadHeaderTimeout),
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		BaseContext:       func(net.Listener) context.Context { return context.WithoutCancel(ctx) },
	}
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()
	log.Info("weft ready", "version", versionString(), "server_name", cfg.ServerName,
		"listen", ln.Addr().String(), "base_url", cfg.BaseURL())

	select {
	case err := <-serveErr:
		return fmt.Errorf("HTTP server: %w", err)
	case <-ctx.Done():
	}
	log.Info("shutting down: draining requests", "grace", time.Duration(cfg.HTTP.ShutdownGrace))
	syncs.Stop() // long-polls answer now instead of holding the drain
	sctx, cancel := context.WithTimeout(context.Background(), time.Duration(cfg.HTTP.ShutdownGrace))
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		log.Warn("grace period over; closing remaining connections", "err", err)
		_ = srv.Close()
	}
	if err := ln.WaitParked(sctx); err != nil {
		log.Warn("grace period over; dropping unanswered long-polls", "err", err)
	}
	if err := <-serveErr; err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Error("HTTP server", "err", err)
	}
	log.Info("shutdown complete")
	return nil
}

func newLogger(c config.Log, w io.Writer) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(c.Level))
	opts := &slog.HandlerOptions{Level: level}
	if c.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

func supportDoc(s config.Support) api.Support {
	out := api.Support{SupportPage: s.Page}
	for _, c := range s.Contacts {
		out.Contacts = append(out.Contacts, api.SupportContact{MatrixID: c.MatrixID, EmailAddress: c.Email, Role: c.Role})
	}
	return out
}
