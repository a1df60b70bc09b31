package storage_test

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"maunium.net/go/mautrix/id"

	"github.com/weftchat/weft/account"
	"github.com/weftchat/weft/storage"
	"github.com/weftchat/weft/storage/pgtest"
	"github.com/weftchat/weft/syncapi"
)

// tdStore is a migrated database with the sync store, a raw connection,
// and the to-device commits the stream listener heard.
type tdStore struct {
	db    *storage.DB
	sync  *storage.Sync
	conn  *pgx.Conn
	mu    sync.Mutex
	heard []tdNote
}

type tdNote struct {
	pos   int64
	users []id.UserID
}

func newTDStore(t *testing.T) *tdStore {
	t.Helper()
	url := pgtest.NewDatabase(t)
	db, err := storage.Open(context.Background(), url, storage.Options{MaxConns: 20})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(db.Close)
	conn, err := pgx.Connect(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	st := &tdStore{db: db, sync: db.Sync(), conn: conn}
	db.SetStreamListener(func(pos int64, kinds syncapi.Kind, _ []id.RoomID, users []id.UserID) {
		if kinds == syncapi.KindToDevice {
			st.mu.Lock()
			users = slices.Clone(users)
			slices.Sort(users)
			st.heard = append(st.heard, tdNote{pos, users})
			st.mu.Unlock()
		}
	})
	return st
}

func (st *tdStore) user(t *testing.T, user id.UserID, devices ...id.DeviceID) {
	t.Helper()
	ctx := context.Background()
	lp, _, _ := user.Parse()
	acc := st.db.Accounts()
	if err := acc.CreateUser(ctx, account.User{UserID: user, Localpart: lp}, "", nil, ""); err != nil {
		t.Fatal(err)
	}
	for _, d := range devices {
		if err := acc.CreateSession(ctx, user, account.NewSession{DeviceID: d, AccessTokenHash: []byte(string(user) + "/" + string(d))}); err != nil {
			t.Fatal(err)
		}
	}
}

func (st *tdStore) send(t *testing.T, txn string, backlog int, msgs map[id.UserID]map[id.DeviceID]json.RawMessage) int {
	t.Helper()
	dropped, err := st.sync.SendToDevice(context.Background(), syncapi.ToDeviceSend{
		Sender: "@s:x", SenderDevice: "S", TxnID: txn, Type: "m.test", Messages: msgs, Backlog: backlog,
	})
	if err != nil {
		t.Fatal(err)
	}
	return dropped
}

// waiting reads the device's messages (all of them) through a snapshot.
func (st *tdStore) waiting(t *testing.T, user id.UserID, device id.DeviceID) []syncapi.ToDeviceMessage {
	t.Helper()
	snap, err := st.sync.Snapshot(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer snap.Close()
	msgs, err := snap.ToDevice(user, device, 0, 1<<62, 1000)
	if err != nil {
		t.Fatal(err)
	}
	return msgs
}

func contents(msgs []syncapi.ToDeviceMessage) []string {
	out := make([]string, len(msgs))
	for i, m := range msgs {
		out[i] = string(m.Content)
	}
	return out
}

func TestToDeviceStore(t *testing.T) {
	st := newTDStore(t)
	ctx := context.Background()
	st.user(t, "@s:x", "S")
	st.user(t, "@a:x", "A1", "A2", "A3")
	st.user(t, "@b:x", "B1")

	// One position for the request; "*" expands to the user's devices,
	// an explicit device wins over it; unknown devices and users get
	// nothing; content is kept byte for byte.
	st.send(t, "t1", 100, map[id.UserID]map[id.DeviceID]json.RawMessage{
		"@a:x":    {"*": json.RawMessage(`{"to": "all",  "\u00e9": 1}`), "A2": json.RawMessage(`{"to":"a2"}`)},
		"@b:x":    {"NOPE": json.RawMessage(`{}`)},
		"@none:x": {"*": json.RawMessage(`{}`)},
	})
	for dev, want := range map[id.DeviceID]string{"A1": `{"to": "all",  "\u00e9": 1}`, "A2": `{"to":"a2"}`, "A3": `{"to": "all",  "\u00e9": 1}`} {
		got := st.waiting(t, "@a:x", dev)
		if len(got) != 1 || string(got[0].Content) != want || got[0].Sender != "@s:x" || got[0].Type != "m.test" {
			t.Fatalf("%s: %+v, want one message %s", dev, got, want)
		}
	}
	if got := st.waiting(t, "@b:x", "B1"); len(got) != 0 {
		t.Fatalf("B1 got %v", got)
	}
	pos := st.waiting(t, "@a:x", "A1")[0].Pos
	if p2 := st.waiting(t, "@a:x", "A3")[0].Pos; p2 != pos {
		t.Fatalf("one request took positions %d and %d", pos, p2)
	}
	if len(st.heard) != 1 || st.heard[0].pos != pos || !slices.Equal(st.heard[0].users, []id.UserID{"@a:x", "@b:x", "@none:x"}) {
		t.Fatalf("listener heard %+v", st.heard)
	}

	// A retry: nothing stored, no position taken, nobody told.
	before, err := st.db.MaxStreamPos(ctx)
	if err != nil {
		t.Fatal(err)
	}
	st.send(t, "t1", 100, map[id.UserID]map[id.DeviceID]json.RawMessage{"@a:x": {"*": json.RawMessage(`{"again":true}`)}})
	if after, _ := st.db.MaxStreamPos(ctx); after != before || len(st.heard) != 1 || len(st.waiting(t, "@a:x", "A1")) != 1 {
		t.Fatalf("a retry took a position (%d -> %d), was told (%d) or stored", before, after, len(st.heard))
	}

	// Acknowledging deletes at or below the position, for that device.
	st.send(t, "t2", 100, map[id.UserID]map[id.DeviceID]json.RawMessage{"@a:x": {"A1": json.RawMessage(`{"n":2}`)}})
	if err := st.sync.AckToDevice(ctx, "@a:x", "A1", pos); err != nil {
		t.Fatal(err)
	}
	if got := contents(st.waiting(t, "@a:x", "A1")); !slices.Equal(got, []string{`{"n":2}`}) {
		t.Fatalf("A1 after ack: %v", got)
	}
	if len(st.waiting(t, "@a:x", "A2")) != 1 {
		t.Fatal("an ack of A1 deleted A2's message")
	}

	// A deleted device's messages go with it.
	if _, err := st.conn.Exec(ctx, `DELETE FROM devices WHERE user_id = '@a:x' AND device_id = 'A2'`); err != nil {
		t.Fatal(err)
	}
	var n int
	if err := st.conn.QueryRow(ctx, `SELECT count(*) FROM to_device_messages WHERE device_id = 'A2'`).Scan(&n); err != nil || n != 0 {
		t.Fatalf("%d messages of a deleted device (%v)", n, err)
	}
}

// TestToDeviceBacklogUnderConcurrentSends: however sends race, each
// device keeps its newest messages up to the backlog, and every message
// is either kept or counted as dropped.
func TestToDeviceBacklogUnderConcurrentSends(t *testing.T) {
	st := newTDStore(t)
	st.user(t, "@s:x", "S")
	st.user(t, "@a:x", "A1", "A2")
	const senders, each, backlog = 4, 15, 10
	var wg sync.WaitGroup
	var mu sync.Mutex
	dropped := 0
	for w := range senders {
		wg.Go(func() {
			for i := range each {
				d := st.send(t, fmt.Sprintf("w%d-%d", w, i), backlog, map[id.UserID]map[id.DeviceID]json.RawMessage{
					"@a:x": {"*": json.RawMessage(fmt.Sprintf(`{"w":%d,"i":%d}`, w, i))},
				})
				mu.Lock()
				dropped += d
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if want := 2 * (senders*each - backlog); dropped != want {
		t.Fatalf("dropped %d, want %d", dropped, want)
	}
	for _, dev := range []id.DeviceID{"A1", "A2"} {
		got := st.waiting(t, "@a:x", dev)
		if len(got) != backlog {
			t.Fatalf("%s keeps %d, want %d", dev, len(got), backlog)
		}
		// The newest: the last positions taken.
		var maxPos int64
		if err := st.conn.QueryRow(context.Background(), `SELECT last_value FROM stream_pos_seq`).Scan(&maxPos); err != nil {
			t.Fatal(err)
		}
		if got[len(got)-1].Pos != maxPos || got[0].Pos != maxPos-backlog+1 {
			t.Fatalf("%s keeps positions %d..%d, want the newest %d..%d", dev, got[0].Pos, got[len(got)-1].Pos, maxPos-backlog+1, maxPos)
		}
	}
}

func TestDeviceListChangesRead(t *testing.T) {
	st := newTDStore(t)
	ctx := context.Background()
	for _, c := range []struct {
		pos  int64
		user string
	}{{5, "@a:x"}, {6, "@b:x"}, {7, "@a:x"}, {9, "@c:x"}} {
		if _, err := st.conn.Exec(ctx, `INSERT INTO device_list_changes (stream_pos, user_id) VALUES ($1, $2)`, c.pos, c.user); err != nil {
			t.Fatal(err)
		}
	}
	snap, err := st.sync.Snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer snap.Close()
	for _, c := range []struct {
		since, to int64
		want      []id.UserID
	}{{0, 10, []id.UserID{"@a:x", "@b:x", "@c:x"}}, {5, 7, []id.UserID{"@a:x", "@b:x"}}, {7, 8, nil}, {6, 9, []id.UserID{"@a:x", "@c:x"}}} {
		got, err := snap.DeviceListChanges(c.since, c.to)
		if err != nil {
			t.Fatal(err)
		}
		slices.Sort(got)
		if !slices.Equal(got, c.want) {
			t.Errorf("(%d, %d]: %v, want %v", c.since, c.to, got, c.want)
		}
	}
}

// TestToDeviceBacklogAfterAcks: the backlog counts what is waiting, not
// what was ever sent: acknowledged messages make room, whether they
// emptied the queue or left some behind.
func TestToDeviceBacklogAfterAcks(t *testing.T) {
	st := newTDStore(t)
	ctx := context.Background()
	st.user(t, "@s:x", "S")
	st.user(t, "@a:x", "A1")
	n := 0
	send := func(k int) int {
		dropped := 0
		for range k {
			n++
			dropped += st.send(t, fmt.Sprint("m", n), 3, map[id.UserID]map[id.DeviceID]json.RawMessage{"@a:x": {"A1": json.RawMessage(fmt.Sprintf(`{"n":%d}`, n))}})
		}
		return dropped
	}
	ackAll := func(keep int) {
		msgs := st.waiting(t, "@a:x", "A1")
		if err := st.sync.AckToDevice(ctx, "@a:x", "A1", msgs[len(msgs)-1-keep].Pos); err != nil {
			t.Fatal(err)
		}
	}
	if d := send(3); d != 0 {
		t.Fatalf("3 of 3 dropped %d", d)
	}
	ackAll(0) // the queue empties
	if d := send(3); d != 0 {
		t.Fatalf("after an ack of everything, 3 more dropped %d", d)
	}
	ackAll(1) // one left waiting: {"n":6}
	if d := send(2); d != 0 {
		t.Fatalf("1 waiting + 2 dropped %d", d)
	}
	if d := send(2); d != 2 {
		t.Fatalf("3 waiting + 2 dropped %d, want 2", d)
	}
	if got := contents(st.waiting(t, "@a:x", "A1")); !slices.Equal(got, []string{`{"n":8}`, `{"n":9}`, `{"n":10}`}) {
		t.Fatalf("waiting %v", got)
	}
}

// TestToDeviceSendRacesDeviceDeletion: a device's deletion locks its row
// and then takes the stream lock (to record the device-list change); a
// send to that device meanwhile must wait for the row before it takes the
// stream lock, or the two deadlock.
func TestToDeviceSendRacesDeviceDeletion(t *testing.T) {
	st := newTDStore(t)
	ctx := context.Background()
	st.user(t, "@s:x", "S")
	st.user(t, "@a:x", "A1", "A2")
	tx, err := st.conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, `DELETE FROM devices WHERE user_id = '@a:x' AND device_id = 'A2'`); err != nil {
		t.Fatal(err)
	}
	sent := make(chan error, 1)
	go func() {
		_, err := st.sync.SendToDevice(ctx, syncapi.ToDeviceSend{Sender: "@s:x", SenderDevice: "S", TxnID: "race", Type: "m.test",
			Messages: map[id.UserID]map[id.DeviceID]json.RawMessage{"@a:x": {"*": json.RawMessage(`{}`)}}, Backlog: 10})
		sent <- err
	}()
	time.Sleep(300 * time.Millisecond) // the send reaches the device rows (or, wrongly, the stream lock)
	// 0x77656675 is storage/stream.go's streamLockID.
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(x'77656675'::bigint)`); err != nil {
		t.Fatalf("the deletion could not take the stream lock: %v", err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-sent; err != nil {
		t.Fatalf("send: %v", err)
	}
	if got := st.waiting(t, "@a:x", "A1"); len(got) != 1 {
		t.Fatalf("A1 got %d messages", len(got))
	}
	var n int
	if err := st.conn.QueryRow(ctx, `SELECT count(*) FROM to_device_messages WHERE device_id = 'A2'`).Scan(&n); err != nil || n != 0 {
		t.Fatalf("%d messages for the deleted device (%v)", n, err)
	}
}
