// Package storage is Weft's only way to PostgreSQL: the connection pool, the
// embedded schema migrations, and (as the domain grows) one file per table
// group implementing the interfaces the domain packages declare.
// Transactions are opened and committed here and nowhere else.
package storage

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// DB is the pool plus what Weft knows about its schema.
type DB struct {
	pool *pgxpool.Pool
	log  *slog.Logger
	// listener is told of stream commits (stream.go).
	listener atomic.Pointer[StreamListener]
	gate     streamGate
	// staleHeads counts room batches that found the heads they built on
	// stale (rooms.go), which only another process writing the same
	// rooms causes.
	staleHeads atomic.Uint64
}

// Options tunes the pool.
type Options struct {
	MaxConns int32
	Logger   *slog.Logger
}

// Open connects, migrates the schema to the version this binary knows and
// returns the ready database.
func Open(ctx context.Context, url string, opts Options) (*DB, error) {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("database URL: %w", err)
	}
	if opts.MaxConns > 0 {
		cfg.MaxConns = opts.MaxConns
	}
	cfg.ConnConfig.RuntimeParams["application_name"] = "weft"
	cfg.ConnConfig.RuntimeParams["timezone"] = "UTC"
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("creating pool: %w", err)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("connecting to PostgreSQL at %s: %w (is the server running and the URL right?)", redact(cfg), err)
	}
	db := &DB{pool: pool, log: opts.Logger}
	version, err := db.migrate(ctx)
	if err != nil {
		pool.Close()
		return nil, err
	}
	opts.Logger.Info("database ready", "schema_version", version, "host", cfg.ConnConfig.Host, "database", cfg.ConnConfig.Database)
	return db, nil
}

func redact(cfg *pgxpool.Config) string {
	return fmt.Sprintf("%s@%s:%d/%s", cfg.ConnConfig.User, cfg.ConnConfig.Host, cfg.ConnConfig.Port, cfg.ConnConfig.Database)
}

// Close releases every connection.
func (db *DB) Close() { db.pool.Close() }

// Ping checks that the database answers a query.
func (db *DB) Ping(ctx context.Context) error {
	var one int
	if err := db.pool.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil {
		return fmt.Errorf("database ping: %w", err)
	}
	return nil
}

// ErrServerNameChanged means the database was created for another server name.
var ErrServerNameChanged = errors.New("server name changed")

// ClaimServerName records serverName on first start and refuses a database
// created for another one: every stored user ID, room alias and signature is
// built from it, and changing it would corrupt them all.
func (db *DB) ClaimServerName(ctx context.Context, serverName string) error {
	var stored string
	err := db.pool.QueryRow(ctx, `
		INSERT INTO weft_meta (key, value) VALUES ('server_name', $1)
		ON CONFLICT (key) DO UPDATE SET key = weft_meta.key
		RETURNING value`, serverName).Scan(&stored)
	if err != nil {
		return fmt.Errorf("reading the stored server name: %w", err)
	}
	if stored != serverName {
		return fmt.Errorf("%w: this database belongs to server_name %q but the configuration says %q; set server_name back, or point database.url at a new database",
			ErrServerNameChanged, stored, serverName)
	}
	return nil
}

// inTx runs fn in a transaction, committing if it returns nil.
func (db *DB) inTx(ctx context.Context, opts pgx.TxOptions, fn func(pgx.Tx) error) error {
	return pgx.BeginTxFunc(ctx, db.pool, opts, fn)
}
