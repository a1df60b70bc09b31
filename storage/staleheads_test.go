package storage_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"
	"maunium.net/go/mautrix/id"

	"github.com/weftchat/weft/room"
	"github.com/weftchat/weft/storage"
	"github.com/weftchat/weft/storage/pgtest"
)

// TestBatchOnStaleCachedHeads: a batch builds on the room heads its
// process cached at its last commit, and checks them when its locked read
// of the heads arrives. Here a second process (a second pool and room
// service on the same database) writes the rooms in between, so the first
// process's cached heads are stale: its sends must still be stored once
// each, on the real heads, and every room must stay one chain.
func TestBatchOnStaleCachedHeads(t *testing.T) {
	ctx := context.Background()
	url := pgtest.NewDatabase(t)
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	process := func() (*room.Service, *storage.Rooms) {
		db, err := storage.Open(ctx, url, storage.Options{MaxConns: 4})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(db.Close)
		store := db.Rooms()
		return room.New(room.Config{Signer: room.Signer{ServerName: notifServer, KeyID: "ed25519:t", Key: key}}, store, noNotifProfiles{}, nil), store
	}
	one, oneStore := process()
	two, _ := process()
	alice := notifUser("alice")
	var rooms []id.RoomID
	for range 3 {
		rid, err := one.Create(ctx, room.CreateParams{Creator: alice, Preset: "public_chat"})
		if err != nil {
			t.Fatal(err)
		}
		rooms = append(rooms, rid)
	}
	txn := 0
	send := func(svc *room.Service, rid id.RoomID) id.EventID {
		t.Helper()
		txn++
		content, _ := json.Marshal(map[string]any{"msgtype": "m.text", "body": fmt.Sprint("message ", txn)})
		eid, err := svc.Send(ctx, room.SendParams{Sender: alice, Device: "D", RoomID: rid, Type: "m.room.message", TxnID: fmt.Sprint(txn), Content: content})
		if err != nil {
			t.Fatal(err)
		}
		return eid
	}
	var sent []id.EventID
	// Alone, one's cached heads are never stale, even when a batch holds
	// several sends to one room.
	var mu sync.Mutex
	var wg sync.WaitGroup
	for i := range 24 {
		rid := rooms[i%len(rooms)]
		wg.Go(func() {
			content, _ := json.Marshal(map[string]any{"msgtype": "m.text", "body": "burst"})
			eid, err := one.Send(ctx, room.SendParams{Sender: alice, Device: "D", RoomID: rid, Type: "m.room.message", TxnID: fmt.Sprint("burst", i), Content: content})
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			sent = append(sent, eid)
			mu.Unlock()
		})
	}
	wg.Wait()
	if n := oneStore.StaleHeads(); n != 0 {
		t.Fatalf("%d batches found their cached heads stale with no other writer", n)
	}
	for round := range 4 {
		for _, rid := range rooms {
			sent = append(sent, send(one, rid)) // caches the head in one
		}
		// two moves some rooms on behind one's back (a state event in
		// the second round: a new snapshot too).
		for _, rid := range rooms[:1+round%len(rooms)] {
			if round == 1 {
				content, _ := json.Marshal(map[string]any{"topic": fmt.Sprint("topic ", round)})
				eid, err := two.SetState(ctx, alice, rid, "m.room.topic", "", content)
				if err != nil {
					t.Fatal(err)
				}
				sent = append(sent, eid)
				continue
			}
			sent = append(sent, send(two, rid))
		}
	}
	for _, rid := range rooms {
		sent = append(sent, send(one, rid))
	}
	if oneStore.StaleHeads() == 0 {
		t.Fatal("no batch of one found its cached heads stale after two wrote the rooms")
	}

	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	stored := map[id.EventID]int{}
	for _, rid := range rooms {
		rows, err := conn.Query(ctx, `SELECT event_id, depth, pdu::jsonb->'prev_events' FROM events WHERE room_id = $1 ORDER BY stream_pos`, rid)
		if err != nil {
			t.Fatal(err)
		}
		var last id.EventID
		var lastDepth int64
		for rows.Next() {
			var eid id.EventID
			var depth int64
			var prev []id.EventID
			if err := rows.Scan(&eid, &depth, &prev); err != nil {
				t.Fatal(err)
			}
			stored[eid]++
			if last != "" && (len(prev) != 1 || prev[0] != last || depth != lastDepth+1) {
				t.Fatalf("room %s: %s has prev_events %v at depth %d, want [%s] at %d", rid, eid, prev, depth, last, lastDepth+1)
			}
			last, lastDepth = eid, depth
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
		var head []id.EventID
		if err := conn.QueryRow(ctx, `SELECT extremities FROM room_heads WHERE room_id = $1`, rid).Scan(&head); err != nil {
			t.Fatal(err)
		}
		if len(head) != 1 || head[0] != last {
			t.Fatalf("room %s: forward extremities %v, want [%s]", rid, head, last)
		}
	}
	for _, eid := range sent {
		if stored[eid] != 1 {
			t.Fatalf("event %s stored %d times", eid, stored[eid])
		}
	}
}
