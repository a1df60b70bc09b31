package account_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"maunium.net/go/mautrix/id"

	"github.com/weftchat/weft/account"
	"github.com/weftchat/weft/syncapi"
)

// streamLog records what the stream listener is told.
type streamLog struct {
	mu    sync.Mutex
	users []id.UserID
}

func (l *streamLog) listen(_ int64, _ syncapi.Kind, _ []id.RoomID, users []id.UserID) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.users = append(l.users, users...)
}

func (l *streamLog) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.users)
}

func presenceOf(t *testing.T, svc *account.Service, user id.UserID) string {
	t.Helper()
	p, err := svc.Presence(context.Background(), &account.Requester{UserID: user}, user)
	if err != nil {
		t.Fatal(err)
	}
	return p.Presence
}

// Idle long-polls write no stream positions; a user who stops syncing goes
// offline after OfflineAfter; one whose /sync is still in flight does not,
// however long it waits.
func TestPresenceSyncAndDrift(t *testing.T) {
	svc, db, clk := newService(t)
	log := &streamLog{}
	db.SetStreamListener(log.listen)
	svc.SetPresenceTimes(account.PresenceTimes{IdleAfter: 5 * time.Minute, OfflineAfter: 2 * time.Minute})
	ctx := context.Background()
	alice, err := svc.CreateUserByOperator(ctx, "alice", "password1", false)
	if err != nil {
		t.Fatal(err)
	}
	bob, err := svc.CreateUserByOperator(ctx, "bob", "password1", false)
	if err != nil {
		t.Fatal(err)
	}
	if got := presenceOf(t, svc, alice); got != "offline" {
		t.Fatalf("presence before any sync = %s", got)
	}

	// alice: many short syncs, one write.
	for range 50 {
		done, err := svc.SyncPresence(ctx, alice, "online")
		if err != nil {
			t.Fatal(err)
		}
		done()
		clk.advance(time.Second)
	}
	if n := log.count(); n != 1 {
		t.Fatalf("50 syncs within a minute took %d stream positions, want 1", n)
	}
	// bob: one long-poll that never ends in this test.
	stopBob, err := svc.SyncPresence(ctx, bob, "online")
	if err != nil {
		t.Fatal(err)
	}
	defer stopBob()
	// set_presence=offline changes nothing.
	if _, err := svc.SyncPresence(ctx, alice, "offline"); err != nil {
		t.Fatal(err)
	}

	for range 13 { // 130 s: past offline_after for alice
		clk.advance(10 * time.Second)
		if err := svc.ExpirePresence(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if got := presenceOf(t, svc, alice); got != "offline" {
		t.Fatalf("alice, who stopped syncing 130 s ago, is %s", got)
	}
	if got := presenceOf(t, svc, bob); got != "online" {
		t.Fatalf("bob, whose /sync is in flight, is %s", got)
	}
	for range 40 { // bob's long-poll outlasts idle_after too
		clk.advance(10 * time.Second)
		if err := svc.ExpirePresence(ctx); err != nil {
			t.Fatal(err)
		}
	}
	p, err := svc.Presence(ctx, &account.Requester{UserID: bob}, bob)
	if err != nil {
		t.Fatal(err)
	}
	if p.Presence != "online" || !*p.CurrentlyActive {
		t.Fatalf("bob after 400 s of long-polling: %+v", p)
	}
	stopBob()
	for range 13 {
		clk.advance(10 * time.Second)
		if err := svc.ExpirePresence(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if got := presenceOf(t, svc, bob); got != "offline" {
		t.Fatalf("bob, who stopped syncing 130 s ago, is %s", got)
	}
}

// An online user with no activity goes unavailable after IdleAfter, then
// offline; a PUT is activity and sets the status message.
func TestPresenceIdle(t *testing.T) {
	svc, _, clk := newService(t)
	svc.SetPresenceTimes(account.PresenceTimes{IdleAfter: time.Minute, OfflineAfter: 3 * time.Minute})
	ctx := context.Background()
	alice, err := svc.CreateUserByOperator(ctx, "alice", "password1", false)
	if err != nil {
		t.Fatal(err)
	}
	me := &account.Requester{UserID: alice}
	msg := "lunch"
	if err := svc.SetPresence(ctx, me, alice, "online", &msg); err != nil {
		t.Fatal(err)
	}
	steps := func(n int) {
		for range n {
			clk.advance(10 * time.Second)
			if err := svc.ExpirePresence(ctx); err != nil {
				t.Fatal(err)
			}
		}
	}
	steps(5)
	if got := presenceOf(t, svc, alice); got != "online" {
		t.Fatalf("after 50 s: %s", got)
	}
	steps(2)
	p, err := svc.Presence(ctx, me, alice)
	if err != nil {
		t.Fatal(err)
	}
	if p.Presence != "unavailable" || p.StatusMsg == nil || *p.StatusMsg != "lunch" || *p.LastActiveAgo < 60000 {
		t.Fatalf("after 70 s idle: %+v", p)
	}
	steps(12)
	if got := presenceOf(t, svc, alice); got != "offline" {
		t.Fatalf("after 190 s: %s", got)
	}
	if err := svc.SetPresence(ctx, me, "@bob:example.org", "online", nil); errcode(err) != "M_FORBIDDEN" {
		t.Fatalf("setting another user's presence: %v", err)
	}
	if err := svc.SetPresence(ctx, me, alice, "away", nil); errcode(err) != "M_INVALID_PARAM" {
		t.Fatalf("invalid state: %v", err)
	}
	if _, err := svc.Presence(ctx, me, "@nobody:example.org"); errcode(err) != "M_NOT_FOUND" {
		t.Fatalf("unknown user: %v", err)
	}
}
