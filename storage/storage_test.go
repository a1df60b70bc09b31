package storage_test

import (
	"context"
	"errors"
	"os"
	"sync"
	"testing"

	"github.com/weftchat/weft/storage"
	"github.com/weftchat/weft/storage/pgtest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

func TestOpenMigratesToLatest(t *testing.T) {
	db := pgtest.NewDB(t)
	if err := db.Ping(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got, want := db.SchemaVersion(t.Context()), storage.LatestSchemaVersion(); got != want || want < 1 {
		t.Fatalf("schema version %d, want %d", got, want)
	}
}

// Two processes starting at once against an empty database: the advisory
// lock must make one migrate and the other find nothing to do.
func TestConcurrentMigrationsDoNotRace(t *testing.T) {
	url := pgtest.NewEmptyDatabase(t)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Go(func() {
			db, err := storage.Open(context.Background(), url, storage.Options{MaxConns: 2})
			if err != nil {
				errs <- err
				return
			}
			db.Close()
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("concurrent open failed: %v", err)
	}
	db, err := storage.Open(context.Background(), url, storage.Options{MaxConns: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if got := db.SchemaVersion(t.Context()); got != storage.LatestSchemaVersion() {
		t.Fatalf("schema version %d after concurrent migration", got)
	}
}

func TestServerNameIsClaimedOnce(t *testing.T) {
	db := pgtest.NewDB(t)
	ctx := context.Background()
	if err := db.ClaimServerName(ctx, "example.org"); err != nil {
		t.Fatal(err)
	}
	if err := db.ClaimServerName(ctx, "example.org"); err != nil {
		t.Fatalf("same name again: %v", err)
	}
	err := db.ClaimServerName(ctx, "other.example")
	if !errors.Is(err, storage.ErrServerNameChanged) {
		t.Fatalf("changed name accepted: %v", err)
	}
}
