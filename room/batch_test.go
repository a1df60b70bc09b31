package room_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/federation/pdu"
	"maunium.net/go/mautrix/id"

	"github.com/weftchat/weft/room"
)

// TestBatchManyRoomsWithFailures runs one batch of 32 jobs over 8 rooms,
// built in parallel, in which jobs fail in every way a job can: refused by
// the auth rules before writing anything, refused after a read (which makes
// the job hold the transaction), and failing in the pipeline on a duplicate
// transaction ID (one already committed, one from an earlier job of the
// same batch), which undoes the jobs after it and runs them again. Every
// other job must be stored once, each room must stay one chain with its
// events in batch order, and the failed jobs must have written nothing.
func TestBatchManyRoomsWithFailures(t *testing.T) {
	const roomsN, jobsN = 8, 32
	h := newHarness(t, 20)
	ctx := context.Background()
	alice, mallory := user("alice"), user("mallory")
	rooms := make([]id.RoomID, roomsN)
	parents := make([]id.EventID, roomsN)
	for i := range rooms {
		var err error
		if rooms[i], err = h.rooms.Create(ctx, room.CreateParams{Creator: alice, Preset: "private_chat"}); err != nil {
			t.Fatal(err)
		}
		if parents[i], err = h.rooms.Send(ctx, room.SendParams{Sender: alice, Device: "D", RoomID: rooms[i], Type: "m.room.message", TxnID: "parent", Content: textContent("parent")}); err != nil {
			t.Fatal(err)
		}
	}
	annotation := func(r int, key string) json.RawMessage {
		return json.RawMessage(fmt.Sprintf(`{"m.relates_to":{"rel_type":"m.annotation","event_id":%q,"key":%q}}`, parents[r], key))
	}
	// An annotation already committed, to be sent again (refused after a read).
	if _, err := h.rooms.Send(ctx, room.SendParams{Sender: alice, Device: "D", RoomID: rooms[2], Type: "m.reaction", TxnID: "r-old", Content: annotation(2, "👍")}); err != nil {
		t.Fatal(err)
	}

	type want int
	const (
		stored want = iota
		forbidden
		duplicateTxn
		duplicateAnnotation
	)
	var (
		roomOf  = make([]id.RoomID, jobsN)
		fns     = make([]func(room.Tx) error, jobsN)
		ids     = make([]id.EventID, jobsN)
		expect  = make([]want, jobsN)
		content = make([]string, jobsN)
	)
	for n := range jobsN {
		r := n % roomsN
		p := room.SendParams{Sender: alice, Device: "D", RoomID: rooms[r], Type: "m.room.message", TxnID: fmt.Sprintf("t%d", n)}
		content[n] = fmt.Sprintf("job %d", n)
		p.Content = textContent(content[n])
		switch n {
		case 3, 20: // not a member: refused before writing
			p.Sender, expect[n] = mallory, forbidden
		case 5: // the transaction ID of the committed parent
			p.TxnID, expect[n] = "parent", duplicateTxn
		case 10: // an annotation the room already has: refused after a read
			p.Type, p.Content, p.TxnID, expect[n] = "m.reaction", annotation(2, "👍"), "r-dup", duplicateAnnotation
		case 11: // an annotation read first, and stored
			p.Type, p.Content, content[n] = "m.reaction", annotation(3, "🎉"), ""
		case 27: // job 11's room and txn ID with another event type: another event
			p.TxnID = "t11"
		case 30: // the transaction ID of job 14, earlier in the batch, same room
			p.TxnID, expect[n] = "t14", duplicateTxn
		}
		roomOf[n], fns[n] = rooms[r], h.rooms.SendJob(p, &ids[n])
	}
	errs := h.rooms.RunBatch(ctx, roomOf, fns)

	var storedIDs []id.EventID
	for n, err := range errs {
		var re mautrix.RespError
		switch expect[n] {
		case stored:
			if err != nil {
				t.Errorf("job %d: %v", n, err)
			}
			storedIDs = append(storedIDs, ids[n])
		case forbidden:
			if !errors.As(err, &re) || re.ErrCode != mautrix.MForbidden.ErrCode {
				t.Errorf("job %d: %v, want M_FORBIDDEN", n, err)
			}
		case duplicateTxn:
			if !errors.Is(err, room.ErrDuplicateTxn) {
				t.Errorf("job %d: %v, want ErrDuplicateTxn", n, err)
			}
		case duplicateAnnotation:
			if !errors.As(err, &re) || re.ErrCode != "M_DUPLICATE_ANNOTATION" {
				t.Errorf("job %d: %v, want M_DUPLICATE_ANNOTATION", n, err)
			}
		}
	}
	if t.Failed() {
		t.FailNow()
	}

	// One more event in each room: it must follow the batch's last (the
	// batch wrote the room heads despite its failed pipelines).
	for _, rid := range rooms {
		eid, err := h.rooms.Send(ctx, room.SendParams{Sender: alice, Device: "D", RoomID: rid, Type: "m.room.message", TxnID: "after", Content: textContent("after")})
		if err != nil {
			t.Fatal(err)
		}
		storedIDs = append(storedIDs, eid)
	}

	all := h.allEvents(t)
	count := map[id.EventID]int{}
	perRoom := map[id.RoomID][]storedRow{}
	for i, r := range all {
		if i > 0 && r.StreamPos <= all[i-1].StreamPos {
			t.Errorf("stream positions not strictly increasing: %d after %d", r.StreamPos, all[i-1].StreamPos)
		}
		count[r.EventID]++
		perRoom[r.RoomID] = append(perRoom[r.RoomID], r)
	}
	for _, eid := range storedIDs {
		if count[eid] != 1 {
			t.Errorf("acknowledged %s stored %d times", eid, count[eid])
		}
	}
	for r, rid := range rooms {
		rows := perRoom[rid]
		evIDs := make([]id.EventID, len(rows))
		pdus := make([]*pdu.PDU, len(rows))
		for i, row := range rows {
			evIDs[i], pdus[i] = row.EventID, row.PDU
		}
		checkLinear(t, rid, evIDs, pdus)
		// The batch's events of the room, in stream order, are its stored
		// jobs in batch order.
		var got, wantIDs []id.EventID
		for _, row := range rows {
			if slices.Contains(storedIDs, row.EventID) {
				got = append(got, row.EventID)
			}
		}
		for n := r; n < jobsN; n += roomsN {
			if expect[n] == stored {
				wantIDs = append(wantIDs, ids[n])
			}
		}
		wantIDs = append(wantIDs, storedIDs[len(storedIDs)-roomsN+r])
		if !slices.Equal(got, wantIDs) {
			t.Errorf("room %d: batch events stored in order %v, want %v", r, got, wantIDs)
		}
		for _, row := range rows {
			var c struct{ Body string }
			_ = json.Unmarshal(row.PDU.Content, &c)
			for n := r; n < jobsN; n += roomsN {
				if expect[n] != stored && c.Body == content[n] && content[n] != "" {
					t.Errorf("failed job %d's event is stored", n)
				}
			}
		}
	}
	var reactions int
	if err := h.pool.QueryRow(ctx, `SELECT count(*) FROM events WHERE type = 'm.reaction'`).Scan(&reactions); err != nil {
		t.Fatal(err)
	}
	if reactions != 2 {
		t.Errorf("%d reactions stored, want 2", reactions)
	}
}
