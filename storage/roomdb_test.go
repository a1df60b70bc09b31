package storage_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/weftchat/weft/room"
	"github.com/weftchat/weft/storage"
	"github.com/weftchat/weft/storage/pgtest"
)

// newRoomDB is a fresh database with the room domain over it (push
// evaluation off: tests that need notifications write them) and a direct
// connection for writing and reading tables the stores do not expose.
func newRoomDB(t *testing.T, serverName string, profiles room.Profiles) (*storage.DB, *pgx.Conn, *room.Service) {
	t.Helper()
	ctx := context.Background()
	url := pgtest.NewDatabase(t)
	db, err := storage.Open(ctx, url, storage.Options{MaxConns: 10})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(db.Close)
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	rooms := room.New(room.Config{Signer: room.Signer{ServerName: serverName, KeyID: "ed25519:t", Key: priv}}, db.Rooms(), profiles, nil)
	return db, conn, rooms
}
