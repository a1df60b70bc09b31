package api_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/weftchat/weft/syncapi"
)

const syncTestServer = "sync.example"

// syncStack is the whole server in this process (so the race detector
// sees it): real router, real Postgres, real notifier.
func syncStack(t *testing.T) *httptest.Server {
	t.Helper()
	srv, _ := syncStackService(t)
	return srv
}

// syncStackService is syncStack, with its sync service.
func syncStackService(t *testing.T) (*httptest.Server, *syncapi.Service) {
	t.Helper()
	// Served as weft serve does: idle long-polls park their connections
	// and hand them back through the listener. A short header timeout:
	// connections handed back by parked polls must still wait for their
	// next request like kept-alive ones.
	st := newStack(t, stackOpts{park: true, readHeaderTimeout: 300 * time.Millisecond})
	return st.srv, st.syncs
}

type noProfiles struct{}

func (noProfiles) MemberProfile(context.Context, id.UserID) (string, string, error) {
	return "", "", nil
}

func newClient(t *testing.T, srv *httptest.Server, user string, register bool) *mautrix.Client {
	t.Helper()
	cli, err := mautrix.NewClient(srv.URL, "", "")
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if register {
		resp, err := cli.RegisterDummy(ctx, &mautrix.ReqRegister[any]{Username: user, Password: "password " + user})
		if err != nil {
			t.Fatalf("register %s: %v", user, err)
		}
		cli.SetCredentials(resp.UserID, resp.AccessToken)
		cli.DeviceID = resp.DeviceID
		return cli
	}
	_, err = cli.Login(ctx, &mautrix.ReqLogin{
		Type:       mautrix.AuthTypePassword,
		Identifier: mautrix.UserIdentifier{Type: mautrix.IdentifierTypeUser, User: user},
		Password:   "password " + user, StoreCredentials: true,
	})
	if err != nil {
		t.Fatalf("login %s: %v", user, err)
	}
	return cli
}

// reader is one syncing device and what it has observed.
type reader struct {
	cli *mautrix.Client
	// seq is every room event seen after the starting token, per room,
	// in the order received.
	seq  map[id.RoomID][]id.EventID
	seen map[id.EventID]bool
	// counter is the last account data counter seen.
	counter int
	// history[i] is a token and how much of each room's seq preceded it.
	history []checkpoint
}

type checkpoint struct {
	token string
	lens  map[id.RoomID]int
}

const syncFilter = `{"room":{"timeline":{"limit":500}},"presence":{"types":[]}}`

// TestSyncConsistencyUnderConcurrency is the stream invariant end to end:
// many writers (messages, state, account data) and many syncing devices at
// once; every device sees every event exactly once, in the same order per
// room as the room's own history, with no gaps, and reconnecting from an
// old token replays exactly what followed it.
func TestSyncConsistencyUnderConcurrency(t *testing.T) {
	srv := syncStack(t)
	ctx := context.Background()
	const (
		writers       = 4
		roomsN        = 3
		perWriter     = 40
		devicesPerUsr = 2
	)
	users := make([]*mautrix.Client, writers)
	for i := range users {
		users[i] = newClient(t, srv, "user"+strconv.Itoa(i), true)
	}
	roomIDs := make([]id.RoomID, roomsN)
	for i := range roomIDs {
		resp, err := users[0].CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat"})
		if err != nil {
			t.Fatal(err)
		}
		roomIDs[i] = resp.RoomID
		for _, u := range users[1:] {
			if _, err := u.JoinRoomByID(ctx, resp.RoomID); err != nil {
				t.Fatal(err)
			}
		}
	}

	// Readers: extra devices of every user, starting from a token taken now.
	var readers []*reader
	for i := range writers {
		for range devicesPerUsr {
			cli := newClient(t, srv, "user"+strconv.Itoa(i), false)
			first, err := cli.FullSyncRequest(ctx, mautrix.ReqSync{FilterID: syncFilter})
			if err != nil {
				t.Fatal(err)
			}
			readers = append(readers, &reader{cli: cli, seq: map[id.RoomID][]id.EventID{}, seen: map[id.EventID]bool{},
				history: []checkpoint{{token: first.NextBatch, lens: map[id.RoomID]int{}}}})
		}
	}

	var wg sync.WaitGroup
	errs := make(chan error, 100)
	for w, cli := range users {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perWriter {
				rid := roomIDs[(w+i)%roomsN]
				var err error
				switch i % 10 {
				case 3:
					// (only the creator may set the topic in a public_chat room)
					if w != 0 {
						_, err = cli.SendText(ctx, rid, fmt.Sprintf("w%d-%d", w, i))
						break
					}
					_, err = cli.SendStateEvent(ctx, rid, event.StateTopic, "", map[string]string{"topic": fmt.Sprintf("w%d-%d", w, i)})
				case 7:
					err = cli.SetAccountData(ctx, "org.weft.counter", map[string]int{"n": i})
				default:
					_, err = cli.SendText(ctx, rid, fmt.Sprintf("w%d-%d", w, i))
				}
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}

	var rwg sync.WaitGroup
	// truth is each room's history, set once the writers are done.
	var truth atomic.Pointer[map[id.RoomID][]id.EventID]
	for _, rd := range readers {
		rwg.Add(1)
		go func() {
			defer rwg.Done()
			if err := rd.run(ctx, &truth); err != nil {
				errs <- fmt.Errorf("%s/%s: %w", rd.cli.UserID, rd.cli.DeviceID, err)
			}
		}()
	}
	wg.Wait()
	select {
	case err := <-errs:
		t.Fatal(err)
	default:
	}
	// The truth: each room's history after the readers' starting point,
	// from /messages.
	start := readers[0].history[0].token
	want := map[id.RoomID][]id.EventID{}
	for _, rid := range roomIDs {
		resp, err := users[0].Messages(ctx, rid, start, "", mautrix.DirectionForward, nil, 1000)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range resp.Chunk {
			want[rid] = append(want[rid], e.ID)
		}
	}
	total := 0
	for _, ids := range want {
		total += len(ids)
	}
	if wantTotal := writers * perWriter * 9 / 10; total != wantTotal {
		t.Fatalf("rooms hold %d new events, want %d", total, wantTotal)
	}
	truth.Store(&want)
	rwg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	for _, rd := range readers {
		for _, rid := range roomIDs {
			if !slices.Equal(rd.seq[rid], want[rid]) {
				t.Errorf("%s/%s room %s: saw %d events %v, want %d %v", rd.cli.UserID, rd.cli.DeviceID, rid,
					len(rd.seq[rid]), rd.seq[rid], len(want[rid]), want[rid])
			}
		}
		if rd.counter != perWriter-3 {
			t.Errorf("%s/%s: last account data counter %d, want %d", rd.cli.UserID, rd.cli.DeviceID, rd.counter, perWriter-3)
		}
	}
}

// run syncs until it has seen the truth (known once writers finish),
// checking every response as it goes.
func (rd *reader) run(ctx context.Context, truth *atomic.Pointer[map[id.RoomID][]id.EventID]) error {
	deadline := time.Now().Add(60 * time.Second)
	for i := 0; ; i++ {
		if time.Now().After(deadline) {
			return fmt.Errorf("did not see every event in time: %v", rd.lens())
		}
		if want := truth.Load(); want != nil && rd.complete(*want) {
			return nil
		}
		since := rd.history[len(rd.history)-1].token
		resp, err := rd.cli.FullSyncRequest(ctx, mautrix.ReqSync{Since: since, Timeout: 500, FilterID: syncFilter})
		if err != nil {
			return err
		}
		for rid, jr := range resp.Rooms.Join {
			if jr.Timeline.Limited {
				return fmt.Errorf("room %s: limited timeline with limit 500", rid)
			}
			for _, e := range jr.Timeline.Events {
				if rd.seen[e.ID] {
					return fmt.Errorf("event %s delivered twice", e.ID)
				}
				rd.seen[e.ID] = true
				rd.seq[rid] = append(rd.seq[rid], e.ID)
			}
		}
		for _, e := range resp.AccountData.Events {
			if e.Type.Type != "org.weft.counter" {
				continue
			}
			var c struct{ N int }
			if err := json.Unmarshal(e.Content.VeryRaw, &c); err != nil {
				return err
			}
			if c.N < rd.counter {
				return fmt.Errorf("account data went back from %d to %d", rd.counter, c.N)
			}
			rd.counter = c.N
		}
		rd.history = append(rd.history, checkpoint{token: resp.NextBatch, lens: rd.lens()})
		if i%4 == 3 && len(rd.history) > 3 {
			if err := rd.replay(ctx, rd.history[len(rd.history)-4]); err != nil {
				return err
			}
		}
	}
}

// replay reconnects from an old token: what comes back must start with
// exactly the events seen after it, in the same order.
func (rd *reader) replay(ctx context.Context, cp checkpoint) error {
	resp, err := rd.cli.FullSyncRequest(ctx, mautrix.ReqSync{Since: cp.token, FilterID: syncFilter})
	if err != nil {
		return fmt.Errorf("sync from an old token: %w", err)
	}
	for rid, jr := range resp.Rooms.Join {
		after := rd.seq[rid][cp.lens[rid]:]
		var got []id.EventID
		for _, e := range jr.Timeline.Events {
			got = append(got, e.ID)
		}
		if len(got) < len(after) || !slices.Equal(got[:len(after)], after) {
			return fmt.Errorf("room %s from old token %s: got %v, saw %v after it", rid, cp.token, got, after)
		}
	}
	for rid, n := range rd.lens() {
		if n > cp.lens[rid] && resp.Rooms.Join[rid] == nil {
			return fmt.Errorf("room %s missing when replaying from %s", rid, cp.token)
		}
	}
	return nil
}

func (rd *reader) lens() map[id.RoomID]int {
	out := map[id.RoomID]int{}
	for rid, s := range rd.seq {
		out[rid] = len(s)
	}
	return out
}

func (rd *reader) complete(want map[id.RoomID][]id.EventID) bool {
	for rid, ids := range want {
		if len(rd.seq[rid]) < len(ids) {
			return false
		}
	}
	return true
}
