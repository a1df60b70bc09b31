package syncapi

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"maunium.net/go/mautrix/id"
)

// unreadStore answers Unread with the position as the main timeline's
// count and records the keys of each call; gate, when set, holds every
// call until closed. UnreadEvents answers from events (each room's, in
// position order) and records each call as "room from to"; eventsErr,
// when set, is its answer instead.
type unreadStore struct {
	Store
	mu         sync.Mutex
	calls      [][]UnreadKey
	gate       chan struct{}
	events     map[id.RoomID][]UnreadEvent
	eventCalls []string
	eventsErr  error
}

func (s *unreadStore) UnreadEvents(_ context.Context, roomID id.RoomID, after, to int64, limit int) ([]UnreadEvent, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.eventCalls = append(s.eventCalls, fmt.Sprint(roomID, " ", after, " ", to))
	if s.eventsErr != nil {
		return nil, s.eventsErr
	}
	var out []UnreadEvent
	for _, ev := range s.events[roomID] {
		if ev.Pos > after && ev.Pos <= to && len(out) < limit {
			out = append(out, ev)
		}
	}
	return out, nil
}

// takenEvents returns the UnreadEvents calls so far.
func (s *unreadStore) takenEvents() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := s.eventCalls
	s.eventCalls = nil
	return out
}

func (s *unreadStore) addEvents(roomID id.RoomID, evs ...UnreadEvent) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.events == nil {
		s.events = map[id.RoomID][]UnreadEvent{}
	}
	s.events[roomID] = append(s.events[roomID], evs...)
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

	wantEvents := func(what string, want ...string) {
		t.Helper()
		if got := st.takenEvents(); !slices.Equal(got, want) {
			t.Fatalf("%s: event reads %v, want %v", what, got, want)
		}
	}
	wantMain := func(what string, got *RoomUnread, n int, changed int64) {
		t.Helper()
		if got.Threads["main"].NotificationCount != n || got.Changed != changed {
			t.Fatalf("%s: %v changed %d, want main %d changed %d", what, got.Threads, got.Changed, n, changed)
		}
	}
	msg := func(pos int64, sender id.UserID) UnreadEvent {
		return UnreadEvent{Pos: pos, Sender: sender, Summary: &UnreadOutcome{Notify: true, Thread: "main"}}
	}

	read(bob, 10, r1, r2)
	wantCalls("first read", keysOf(bob, r1, r2))
	got := read(bob, 12, r1, r2)
	wantCalls("nothing changed")
	wantMain("cached counts", got[r1], 10, 10)
	read(alice, 12, r1)
	wantCalls("another user", keysOf(alice, r1))

	// An event in r1: r1's counts move by it, read once for bob and
	// alice; r2's stay cached. No count query.
	st.addEvents(r1, msg(13, alice))
	n.Committed(13, KindEvents, []id.RoomID{r1}, nil)
	got = read(bob, 13, r1, r2)
	wantCalls("event in r1")
	wantEvents("event in r1", "!one:x 10 13")
	wantMain("bob's r1 after alice's message", got[r1], 11, 13)
	wantMain("bob's r2", got[r2], 10, 10)
	got = read(alice, 13, r1)
	wantCalls("alice after the event")
	wantEvents("alice after the event: the same read")
	if len(got[r1].Threads) != 0 || got[r1].Changed != 13 {
		t.Fatalf("alice's own message reads everything: %v changed %d", got[r1].Threads, got[r1].Changed)
	}
	// The folded counts are cached like read ones.
	got = read(bob, 13, r1)
	wantCalls("bob again")
	wantEvents("bob again")
	wantMain("bob again", got[r1], 11, 13)

	// A receipt of bob's (perhaps private: no room told): every room is
	// counted again, not folded.
	n.Committed(14, KindReceipts, nil, []id.UserID{bob})
	read(bob, 14, r1, r2)
	wantCalls("bob's receipt", keysOf(bob, r1, r2))
	wantEvents("bob's receipt")
	read(alice, 14, r1)
	wantCalls("bob's receipt is not alice's")

	// A response whose position is below the room's last event (the
	// event committed after the response sampled its position) folds up
	// to its own position only.
	st.addEvents(r2, msg(16, alice))
	n.Committed(16, KindEvents, []id.RoomID{r2}, nil)
	got = read(bob, 15, r2)
	wantEvents("event above the response", "!two:x 14 15")
	wantMain("at 15", got[r2], 14, 14)
	got = read(bob, 16, r2)
	wantEvents("the next response", "!two:x 15 16")
	wantMain("at 16", got[r2], 15, 16)
	wantCalls("folds only")

	// Past maxUnreadFold events, the counts are read.
	for p := int64(17); p <= 17+maxUnreadFold; p++ {
		st.addEvents(r1, msg(p, alice))
	}
	last := int64(17 + maxUnreadFold)
	n.Committed(last, KindEvents, []id.RoomID{r1}, nil)
	got = read(bob, last, r1)
	wantEvents("too many events", fmt.Sprint("!one:x 14 ", last))
	wantCalls("too many events", keysOf(bob, r1))
	wantMain("too many events", got[r1], int(last), last)

	// bob leaving (kicked): the fold cannot tell, the counts are read.
	st.addEvents(r1, UnreadEvent{Pos: last + 1, Sender: alice, State: true, Member: bob, Membership: "leave"})
	n.Committed(last+1, KindEvents, []id.RoomID{r1}, []id.UserID{bob})
	read(bob, last+1, r1)
	wantEvents("bob left", fmt.Sprint("!one:x ", last, " ", last+1))
	wantCalls("bob left", keysOf(bob, r1))

	// Another request's load cancelled by its own context: this one,
	// still running, counts the full way; any other error is an error.
	st.addEvents(r2, msg(last+2, alice))
	n.Committed(last+2, KindEvents, []id.RoomID{r2}, nil)
	st.eventsErr = fmt.Errorf("reading: %w", context.Canceled)
	read(bob, last+2, r2)
	wantEvents("cancelled load", fmt.Sprint("!two:x 16 ", last+2))
	wantCalls("cancelled load", keysOf(bob, r2))
	st.eventsErr = errors.New("broken")
	n.Committed(last+3, KindEvents, []id.RoomID{r2}, nil)
	rd := &reader{s: s, ctx: context.Background(), to: last + 3}
	if _, err := rd.unread(bob, []id.RoomID{r2}); err == nil || !strings.Contains(err.Error(), "broken") {
		t.Fatalf("a failed read: %v", err)
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

func TestRoomUnreadFold(t *testing.T) {
	bob, alice := id.UserID("@bob:x"), id.UserID("@alice:x")
	main := &UnreadOutcome{Notify: true, Thread: "main"}
	start := &RoomUnread{Threads: map[string]Unread{"main": {NotificationCount: 2, HighlightCount: 1}}, Changed: 5}
	fold := func(from *RoomUnread, evs ...UnreadEvent) *RoomUnread {
		t.Helper()
		got, ok := from.Fold(bob, evs)
		if !ok {
			t.Fatal("fold refused")
		}
		return got
	}
	want := func(what string, got *RoomUnread, changed int64, threads map[string]Unread) {
		t.Helper()
		if got.Changed != changed || len(got.Threads) != len(threads) {
			t.Fatalf("%s: %v changed %d, want %v changed %d", what, got.Threads, got.Changed, threads, changed)
		}
		for th, c := range threads {
			if got.Threads[th] != c {
				t.Fatalf("%s: %v, want %v", what, got.Threads, threads)
			}
		}
	}

	got := fold(start,
		UnreadEvent{Pos: 6, Sender: alice, Summary: main},
		UnreadEvent{Pos: 7, Sender: alice, Summary: main, Exceptions: map[id.UserID]UnreadOutcome{bob: {Notify: true, Thread: "$root", Highlight: true}}},
		UnreadEvent{Pos: 8, Sender: alice, Summary: main, Exceptions: map[id.UserID]UnreadOutcome{bob: {Notify: false, Thread: "main"}}},
		UnreadEvent{Pos: 9, Sender: alice}, // a notice: no summary
		UnreadEvent{Pos: 10, Sender: bob, State: true, Summary: main},
		// bob's new display name: a member event, membership unchanged.
		UnreadEvent{Pos: 11, Sender: bob, State: true},
	)
	want("messages, mention in a thread, muted, notice, own state events", got, 7,
		map[string]Unread{"main": {NotificationCount: 3, HighlightCount: 1}, "$root": {NotificationCount: 1, HighlightCount: 1}})
	if start.Threads["main"] != (Unread{NotificationCount: 2, HighlightCount: 1}) || len(start.Threads) != 1 || start.Changed != 5 {
		t.Fatalf("the cached counts changed: %v %d", start.Threads, start.Changed)
	}

	got = fold(start, UnreadEvent{Pos: 6, Sender: alice, Summary: main}, UnreadEvent{Pos: 7, Sender: bob, Exceptions: map[id.UserID]UnreadOutcome{bob: {Notify: true, Thread: "main"}}},
		UnreadEvent{Pos: 8, Sender: alice, Summary: &UnreadOutcome{Notify: true, Thread: "$t", Highlight: true}})
	want("own message reads all threads, itself included", got, 8, map[string]Unread{"$t": {NotificationCount: 1, HighlightCount: 1}})

	got = fold(nil, UnreadEvent{Pos: 3, Sender: alice, Summary: main}, UnreadEvent{Pos: 4, Sender: alice, State: true, Member: bob, Membership: "invite",
		Exceptions: map[id.UserID]UnreadOutcome{bob: {Notify: true, Thread: "main"}}},
		UnreadEvent{Pos: 5, Sender: bob, State: true, Member: bob, Membership: "join"}, UnreadEvent{Pos: 6, Sender: alice, Summary: main})
	want("an invite and a join read what came before", got, 6, map[string]Unread{"main": {NotificationCount: 1, HighlightCount: 0}})

	if _, ok := start.Fold(bob, []UnreadEvent{{Pos: 6, Sender: bob, State: true, Member: bob, Membership: "leave"}, {Pos: 7, Sender: alice, Summary: main}}); ok {
		t.Fatal("a fold after bob left")
	}
	got = fold(start, UnreadEvent{Pos: 6, Sender: bob, State: true, Member: bob, Membership: "leave"}, UnreadEvent{Pos: 7, Sender: alice, Summary: main},
		UnreadEvent{Pos: 8, Sender: bob, State: true, Member: bob, Membership: "join"})
	want("left and joined again", got, 8, nil)
	if got.Threads != nil {
		t.Fatalf("no counts are nil threads: %#v", got.Threads)
	}
	got = fold(start)
	want("no events", got, 5, map[string]Unread{"main": {NotificationCount: 2, HighlightCount: 1}})
}
