package storage_test

import (
	"encoding/json"
	"fmt"
	mrand "math/rand/v2"
	"testing"
	"time"

	"maunium.net/go/mautrix/federation/pdu"
	"maunium.net/go/mautrix/id"

	"github.com/weftchat/weft/syncapi"
)

// TestStateIDsOfManyRoomsInOneRead checks the sync snapshot's state
// resolution against a replay of the rooms' events: the state after every
// event at or below a position is each state key's newest event there.
// Rooms get more state changes than a snapshot chain holds (a rebase),
// and the positions asked for are all at once (an initial sync's read)
// and one by one, which must agree.
func TestStateIDsOfManyRoomsInOneRead(t *testing.T) {
	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	rng := mrand.New(mrand.NewPCG(uint64(seed), 0))
	s := newNotifStore(t)
	alice, bob := notifUser("alice"), notifUser("bob")
	rooms := []id.RoomID{s.room(alice, bob), s.room(alice), s.room(bob, alice)}
	creators := []id.UserID{alice, alice, bob}
	// 230 changes over three rooms: one room passes the 100-delta chain.
	for i := range 230 {
		n := min(rng.IntN(4), 2)
		rid, sender := rooms[n], creators[n]
		switch rng.IntN(3) {
		case 0:
			s.send(sender, rid, fmt.Sprint("message ", i), "")
		case 1:
			content, _ := json.Marshal(map[string]any{"name": fmt.Sprint("name ", i)})
			if _, err := s.rooms.SetState(s.ctx, sender, rid, "m.room.name", "", content); err != nil {
				t.Fatal(err)
			}
		default:
			content, _ := json.Marshal(map[string]any{"v": i})
			if _, err := s.rooms.SetState(s.ctx, sender, rid, "org.example.state", fmt.Sprint("k", rng.IntN(5)), content); err != nil {
				t.Fatal(err)
			}
		}
	}
	// The replay: each room's events in stream order.
	type ev struct {
		pos int64
		key *pdu.StateKey
		id  id.EventID
	}
	byRoom := map[id.RoomID][]ev{}
	rows, err := s.conn.Query(s.ctx, `SELECT room_id, stream_pos, type, state_key, event_id FROM events ORDER BY stream_pos`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var rid id.RoomID
		var e ev
		var typ string
		var sk *string
		if err := rows.Scan(&rid, &e.pos, &typ, &sk, &e.id); err != nil {
			t.Fatal(err)
		}
		if sk != nil {
			e.key = &pdu.StateKey{Type: typ, StateKey: *sk}
		}
		byRoom[rid] = append(byRoom[rid], e)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	want := func(q syncapi.StateReq) map[pdu.StateKey]id.EventID {
		out := map[pdu.StateKey]id.EventID{}
		for _, e := range byRoom[q.Room] {
			if e.pos <= q.Pos && e.key != nil {
				out[*e.key] = e.id
			}
		}
		return out
	}
	var reqs []syncapi.StateReq
	seen := map[syncapi.StateReq]bool{}
	ask := func(q syncapi.StateReq) {
		if !seen[q] {
			seen[q] = true
			reqs = append(reqs, q)
		}
	}
	for _, rid := range rooms {
		ask(syncapi.StateReq{Room: rid, Pos: 0}) // before the room: no state
		for _, e := range byRoom[rid] {
			ask(syncapi.StateReq{Room: rid, Pos: e.pos})
			ask(syncapi.StateReq{Room: rid, Pos: e.pos + 1}) // between events, or another room's
		}
	}
	// Randomly ordered, as an initial sync asks.
	rng.Shuffle(len(reqs), func(i, j int) { reqs[i], reqs[j] = reqs[j], reqs[i] })
	snap, err := s.sync.Snapshot(s.ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer snap.Close()
	all, err := snap.StateIDs(reqs)
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != len(reqs) {
		t.Fatalf("%d answers for %d requests", len(all), len(reqs))
	}
	for i, q := range reqs {
		w := want(q)
		if got := all[q]; fmt.Sprint(got) != fmt.Sprint(w) {
			t.Fatalf("room %s at %d, read with the others: %d entries %v, want %d %v", q.Room, q.Pos, len(got), got, len(w), w)
		}
		if i%7 != 0 {
			continue // one by one: a sample is enough
		}
		one, err := snap.StateIDs([]syncapi.StateReq{q})
		if err != nil {
			t.Fatal(err)
		}
		if fmt.Sprint(one[q]) != fmt.Sprint(w) {
			t.Fatalf("room %s at %d, read alone: %v, want %v", q.Room, q.Pos, one[q], w)
		}
	}
}
