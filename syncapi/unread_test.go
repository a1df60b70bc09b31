package syncapi

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"maunium.net/go/mautrix/id"
)

// unreadStore answers Unread with the position as the main timeline's
// count and records the keys of each call; gate, when set, holds every
// call until closed.
type unreadStore struct {
	Store
	mu    sync.Mutex
	calls [][]UnreadKey
	gate  chan struct{}
}

func (s *unreadStore) Unread(_ context.Context, keys []UnreadKey, to int64) (map[UnreadKey]*RoomUnread, error) {
	if s.gate != nil {
		<-s.gate
	}
	s.mu.Lock()
	s.calls = append(s.calls, slices.Clone(keys))
	s.mu.Unlock()
	out := map[UnreadKey]*RoomUnread{}
	for _, k := range keys {
		out[k] = &RoomUnread{Threads: map[string]Unread{"main": {NotificationCount: int(to)}}, Changed: to}
	}
	return out, nil
}

// taken returns the calls so far, each as sorted "user room" strings.
func (s *unreadStore) taken() [][]string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out [][]string
	for _, c := range s.calls {
		var ks []string
		for _, k := range c {
			ks = append(ks, string(k.User)+" "+string(k.Room))
		}
		slices.Sort(ks)
		out = append(out, ks)
	}
	s.calls = nil
	return out
}

func keysOf(user id.UserID, rooms ...id.RoomID) []string {
	var out []string
	for _, r := range rooms {
		out = append(out, string(user)+" "+string(r))
	}
	slices.Sort(out)
	return out
}

func TestUnreadCountsAreCachedUntilTheyCanChange(t *testing.T) {
	n := NewNotifier(0, time.Now())
	n.Start(10)
	st := &unreadStore{}
	s := New(Config{}, st, nil, n, nil)
	alice, bob := id.UserID("@alice:x"), id.UserID("@bob:x")
	r1, r2 := id.RoomID("!one:x"), id.RoomID("!two:x")
	read := func(user id.UserID, to int64, rooms ...id.RoomID) map[id.RoomID]*RoomUnread {
		t.Helper()
		rd := &reader{s: s, ctx: context.Background(), to: to}
		defer rd.close()
		got, err := rd.unread(user, rooms)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rooms {
			if got[r] == nil {
				t.Fatalf("no counts for %s", r)
			}
		}
		return got
	}
	wantCalls := func(what string, want ...[]string) {
		t.Helper()
		got := st.taken()
		if len(got) != len(want) {
			t.Fatalf("%s: store calls %v, want %v", what, got, want)
		}
		for i := range got {
			if !slices.Equal(got[i], want[i]) {
				t.Fatalf("%s: store calls %v, want %v", what, got, want)
			}
		}
	}

	read(bob, 10, r1, r2)
	wantCalls("first read", keysOf(bob, r1, r2))
	got := read(bob, 12, r1, r2)
	wantCalls("nothing changed")
	if got[r1].Threads["main"].NotificationCount != 10 {
		t.Fatalf("cached counts: %v", got[r1].Threads)
	}
	read(alice, 12, r1)
	wantCalls("another user", keysOf(alice, r1))

	// An event in r1: only r1 is read again.
	n.Committed(13, KindEvents, []id.RoomID{r1}, nil)
	got = read(bob, 13, r1, r2)
	wantCalls("event in r1", keysOf(bob, r1))
	if got[r1].Threads["main"].NotificationCount != 13 || got[r2].Threads["main"].NotificationCount != 10 {
		t.Fatalf("after the event: %v %v", got[r1].Threads, got[r2].Threads)
	}

	read(alice, 13, r1)
	wantCalls("alice after the event", keysOf(alice, r1))

	// A receipt of bob's (perhaps private: no room told): every room.
	n.Committed(14, KindReceipts, nil, []id.UserID{bob})
	read(bob, 14, r1, r2)
	wantCalls("bob's receipt", keysOf(bob, r1, r2))
	read(alice, 14, r1)
	wantCalls("bob's receipt is not alice's")

	// A response whose position is below the room's last change (the
	// change committed after the response sampled its position) reads,
	// and does not cache what it read for later responses.
	n.Committed(16, KindEvents, []id.RoomID{r2}, nil)
	read(bob, 15, r2)
	wantCalls("change above the response", keysOf(bob, r2))
	read(bob, 15, r2)
	wantCalls("another device at the same position: the finished load")
	got = read(bob, 16, r2)
	wantCalls("the next response reads again", keysOf(bob, r2))
	if got[r2].Threads["main"].NotificationCount != 16 {
		t.Fatalf("counts at 16: %v", got[r2].Threads)
	}
}

func TestUnreadCountsLoadInBatches(t *testing.T) {
	n := NewNotifier(0, time.Now())
	n.Start(10)
	st := &unreadStore{gate: make(chan struct{})}
	s := New(Config{}, st, nil, n, nil)
	bt := s.unreadBatches
	r1, r2, r3 := id.RoomID("!one:x"), id.RoomID("!two:x"), id.RoomID("!three:x")
	var wg sync.WaitGroup
	read := func(user id.UserID, rooms ...id.RoomID) {
		wg.Go(func() {
			rd := &reader{s: s, ctx: context.Background(), to: 10}
			got, err := rd.unread(user, rooms)
			if err != nil {
				t.Error(err)
				return
			}
			for _, r := range rooms {
				if got[r] == nil || got[r].Threads["main"].NotificationCount != 10 {
					t.Errorf("%s in %s: %v", user, r, got[r])
				}
			}
		})
	}
	// waitFor polls the batcher's state until cond holds.
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
			bt.mu.Lock()
			ok := cond()
			bt.mu.Unlock()
			if ok {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("never: %s", what)
			}
		}
	}
	// The first request queries at once (and is held by the gate).
	read("@bob:x", r1, r2)
	waitFor("bob's query runs", func() bool { return bt.running[10] != nil })
	// Ten more devices of bob wait for that query; alice, carol and a
	// device of bob asking for another room gather in the next batch.
	for range 10 {
		read("@bob:x", r1, r2)
	}
	read("@alice:x", r1)
	read("@carol:x", r1)
	read("@bob:x", r3)
	waitFor("the next batch gathers three keys", func() bool { return bt.next[10] != nil && len(bt.next[10].keys) == 3 })
	time.Sleep(10 * time.Millisecond) // bob's devices are waiting too
	close(st.gate)
	wg.Wait()
	calls := st.taken()
	want := [][]string{keysOf("@bob:x", r1, r2), append(append(keysOf("@alice:x", r1), keysOf("@bob:x", r3)...), keysOf("@carol:x", r1)...)}
	if len(calls) != 2 || !slices.Equal(calls[0], want[0]) || !slices.Equal(calls[1], want[1]) {
		t.Fatalf("loads %v, want %v", calls, want)
	}
	if len(bt.running)+len(bt.next) != 0 {
		t.Fatal("batches left behind")
	}
	// Alone, a request queries at once.
	st.gate = nil
	read("@dave:x", r1)
	wg.Wait()
	if calls := st.taken(); len(calls) != 1 {
		t.Fatalf("a lone request: %v", calls)
	}
}

func TestRoomUnreadCounts(t *testing.T) {
	u := &RoomUnread{Threads: map[string]Unread{
		"main":  {NotificationCount: 3, HighlightCount: 1},
		"$root": {NotificationCount: 2, HighlightCount: 2},
		"$t2":   {NotificationCount: 1},
	}}
	total, main, threads := u.counts()
	if total != (Unread{NotificationCount: 6, HighlightCount: 3}) || main != (Unread{NotificationCount: 3, HighlightCount: 1}) {
		t.Fatalf("total %+v main %+v", total, main)
	}
	if len(threads) != 2 || threads["$root"] != (Unread{NotificationCount: 2, HighlightCount: 2}) || threads["$t2"].NotificationCount != 1 {
		t.Fatalf("threads %v", threads)
	}
	var none *RoomUnread
	if total, main, threads := none.counts(); total != (Unread{}) || main != (Unread{}) || threads != nil {
		t.Fatal("no counts are not zero")
	}
}
