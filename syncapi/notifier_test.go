package syncapi

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"maunium.net/go/mautrix/id"
)

// testListener is a registration whose wake-ups land in a channel.
type testListener struct {
	*Listener
	c chan struct{}
}

func listen(n *Notifier, user id.UserID, rooms []id.RoomID, since Token) testListener {
	c := make(chan struct{}, 1)
	signal := func() {
		select {
		case c <- struct{}{}:
		default:
		}
	}
	l, changed := n.Listen(user, rooms, since, signal)
	if changed {
		signal()
	}
	return testListener{l, c}
}

func fired(l testListener) bool {
	select {
	case <-l.c:
		return true
	default:
		return false
	}
}

func TestTokens(t *testing.T) {
	tok := Token{Pos: 42, Typing: 7}
	got, err := ParseToken(tok.String())
	if err != nil || got != tok {
		t.Fatalf("round trip of %s: %v %v", tok, got, err)
	}
	for _, bad := range []string{"", "s", "s1", "s1_", "s_1", "t5", "s-1_0", "s1_-1", "s1_2_3", "s99999999999999999999_0", "x1_2"} {
		if _, err := ParseToken(bad); err == nil {
			t.Errorf("ParseToken(%q) accepted", bad)
		}
	}
}

// TestNotifierWakesOnlyTheAffected: a commit wakes the listeners of its
// rooms and users, no others.
func TestNotifierWakesOnlyTheAffected(t *testing.T) {
	n := NewNotifier(10, time.Now())
	since := n.Current()
	inRoom := listen(n, "@a:x", []id.RoomID{"!r:x"}, since)
	elsewhere := listen(n, "@b:x", []id.RoomID{"!other:x"}, since)
	user := listen(n, "@c:x", nil, since)
	n.Committed(11, KindEvents, []id.RoomID{"!r:x"}, []id.UserID{"@c:x"})
	if !fired(inRoom) || !fired(user) {
		t.Fatal("a listener of the changed room or user was not woken")
	}
	if fired(elsewhere) {
		t.Fatal("a listener of another room was woken")
	}
	if cur := n.Current(); cur.Pos != 11 {
		t.Fatalf("position %d, want 11", cur.Pos)
	}
	for _, l := range []testListener{inRoom, elsewhere, user} {
		n.Close(l.Listener)
	}
	if n.Waiting() != 0 {
		t.Fatalf("%d listeners left after Close", n.Waiting())
	}
}

// TestNotifierNoLostWakeup: a change that lands between a request's token
// and its registration is reported by Listen itself.
func TestNotifierNoLostWakeup(t *testing.T) {
	n := NewNotifier(0, time.Now())
	since := n.Current()
	n.Committed(5, KindEvents, []id.RoomID{"!r:x"}, nil)
	if l := listen(n, "@a:x", []id.RoomID{"!r:x"}, since); !fired(l) {
		t.Fatal("a change after the token was not reported at registration")
	}
	if l := listen(n, "@a:x", []id.RoomID{"!r:x"}, n.Current()); fired(l) {
		t.Fatal("nothing changed after the current token, yet the listener fired")
	}
	typ := n.Current()
	n.TypingChanged("!r:x")
	if l := listen(n, "@a:x", []id.RoomID{"!r:x"}, typ); !fired(l) {
		t.Fatal("a typing change after the token was not reported")
	}
}

// TestNotifierKinds: per-kind positions let a reader skip what did not
// change, but never for tokens older than what the notifier has seen.
func TestNotifierKinds(t *testing.T) {
	n := NewNotifier(0, time.Now())
	n.Start(100)
	if !n.userChangedAfter("@a:x", KindAccountData, 50) || !n.roomChangedAfter("!r:x", KindEvents, 50) || !n.presenceChangedAfter(50) {
		t.Fatal("a token from before the notifier started must read everything")
	}
	if n.userChangedAfter("@a:x", KindAccountData, 100) || n.roomChangedAfter("!r:x", KindEvents, 100) {
		t.Fatal("nothing happened since start, yet a change is reported")
	}
	n.Committed(101, KindAccountData, nil, []id.UserID{"@a:x"})
	n.Committed(102, KindReceipts, []id.RoomID{"!r:x"}, nil)
	if !n.userChangedAfter("@a:x", KindAccountData, 100) || n.userChangedAfter("@a:x", KindEvents, 100) {
		t.Fatal("account data change not told apart from membership")
	}
	if !n.roomChangedAfter("!r:x", KindReceipts, 101) || n.roomChangedAfter("!r:x", KindEvents, 101) {
		t.Fatal("receipt change not told apart from events")
	}
	if got := n.userLastChange("@b:x", KindEvents); got != 100 {
		t.Fatalf("last change of an untouched user = %d, want the base 100", got)
	}
}

// TestMemoLoadsOnce: concurrent misses of one key share one load, and a
// failed load is not remembered.
func TestMemoLoadsOnce(t *testing.T) {
	m := newMemo[string, int](time.Minute, 10)
	var loads atomic.Int32
	release := make(chan struct{})
	var wg sync.WaitGroup
	for range 20 {
		wg.Go(func() {
			v, err := m.get("k", func() (int, error) { loads.Add(1); <-release; return 7, nil })
			if err != nil || v != 7 {
				t.Errorf("got %d, %v", v, err)
			}
		})
	}
	time.Sleep(20 * time.Millisecond)
	close(release)
	wg.Wait()
	if loads.Load() != 1 {
		t.Fatalf("%d loads for one key, want 1", loads.Load())
	}
	if _, err := m.get("bad", func() (int, error) { return 0, errTest }); err == nil {
		t.Fatal("no error")
	}
	if v, err := m.get("bad", func() (int, error) { return 3, nil }); err != nil || v != 3 {
		t.Fatalf("a failed load was remembered: %d %v", v, err)
	}
}

// TestMemoNoWaitLoadsForItself: a caller that must not wait (it holds a
// pooled connection) does not block on another caller's load in progress;
// it loads for itself, and the first load's result is what is kept.
func TestMemoNoWaitLoadsForItself(t *testing.T) {
	m := newMemo[string, int](time.Minute, 10)
	started, release := make(chan struct{}), make(chan struct{})
	done := make(chan int)
	go func() {
		v, _ := m.get("k", func() (int, error) { close(started); <-release; return 1, nil })
		done <- v
	}()
	<-started
	got := make(chan int)
	go func() {
		v, _ := m.getOrLoad("k", true, func() (int, error) { return 2, nil })
		got <- v
	}()
	select {
	case v := <-got:
		if v != 2 {
			t.Fatalf("the caller that may not wait got %d, want its own load's 2", v)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a caller that may not wait waited for another's load")
	}
	close(release)
	if v := <-done; v != 1 {
		t.Fatalf("the loader got %d", v)
	}
	if v, _ := m.getOrLoad("k", true, func() (int, error) { return 3, nil }); v != 1 {
		t.Fatalf("after the load, got %d, want the kept 1", v)
	}
}

var errTest = &testError{}

type testError struct{}

func (*testError) Error() string { return "test" }
