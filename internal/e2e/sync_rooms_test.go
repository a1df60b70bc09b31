package e2e

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// End-to-end tests of /sync's rooms: lazy-loaded members and the room
// summary, limited timelines with the state of their gap, and the invite,
// knock and leave sections as memberships change.

// TestSyncLazyLoadMembers: with lazy_load_members an initial sync carries
// only the member events of the timeline's senders and the syncing user;
// without it, every member. Incremental syncs add the member events of new
// senders, and a limited one every member event of its gap.
func TestSyncLazyLoadMembers(t *testing.T) {
	srv := startAccounts(t, nil)
	ctx := context.Background()
	users := map[string]*mautrix.Client{}
	for _, name := range []string{"alice", "bob", "carol", "dave", "erin", "frank", "gina"} {
		users[name] = registerUser(t, srv, name, "correct horse battery")
	}
	alice, bob, carol, dave, erin, frank, gina := users["alice"], users["bob"], users["carol"], users["dave"], users["erin"], users["frank"], users["gina"]
	roomID := createRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"}) // no name: heroes matter
	for _, c := range []*mautrix.Client{bob, carol, dave, erin} {
		joinRoom(t, c, roomID)
	}
	if _, err := alice.InviteUser(ctx, roomID, &mautrix.ReqInviteUser{UserID: frank.UserID}); err != nil {
		t.Fatal(err)
	}
	spoken := []id.EventID{syncSendText(t, bob, roomID, "hi"), syncSendText(t, carol, roomID, "hey"), syncSendText(t, bob, roomID, "again")}

	const lazy = `{"room":{"timeline":{"limit":3},"state":{"lazy_load_members":true}}}`
	const eager = `{"room":{"timeline":{"limit":3}}}`

	t.Run("initial", func(t *testing.T) {
		syncFilterForms(t, dave, lazy, func(t *testing.T, f string) {
			jr := syncWith(t, dave, "", f, 0).Rooms.Join[roomID]
			wantIDs(t, "timeline", syncEventIDs(jr.Timeline.Events), spoken...)
			wantIDs(t, "lazy members", syncMemberKeys(jr.State.Events), syncSorted(bob.UserID, carol.UserID, dave.UserID)...)
			// The rest of the state is all there.
			for _, typ := range []string{"m.room.create|", "m.room.power_levels|", "m.room.join_rules|"} {
				if !slices.Contains(syncStateKeys(jr.State.Events), typ) {
					t.Fatalf("lazy state %v lacks %s", syncStateKeys(jr.State.Events), typ)
				}
			}
			syncCheckSummary(t, jr.Summary, 5, 1, alice.UserID, bob.UserID, carol.UserID, erin.UserID, frank.UserID)
		})
		jr := syncWith(t, dave, "", eager, 0).Rooms.Join[roomID]
		wantIDs(t, "timeline", syncEventIDs(jr.Timeline.Events), spoken...)
		wantIDs(t, "all members", syncMemberKeys(jr.State.Events),
			syncSorted(alice.UserID, bob.UserID, carol.UserID, dave.UserID, erin.UserID, frank.UserID)...)
		for _, e := range jr.State.Events {
			if e.GetStateKey() == frank.UserID.String() && syncMembership(e) != event.MembershipInvite {
				t.Fatalf("frank's member event is %s, want invite", syncMembership(e))
			}
		}
		syncCheckSummary(t, jr.Summary, 5, 1, alice.UserID, bob.UserID, carol.UserID, erin.UserID, frank.UserID)
	})

	t.Run("incremental", func(t *testing.T) {
		since := syncWith(t, dave, "", lazy, 0).NextBatch
		late := syncSendText(t, erin, roomID, "late")
		resp := syncWith(t, dave, since, lazy, 5000)
		jr := resp.Rooms.Join[roomID]
		wantIDs(t, "timeline", syncEventIDs(jr.Timeline.Events), late)
		if jr.Timeline.Limited {
			t.Fatal("one new event, yet limited")
		}
		if !slices.Contains(syncMemberKeys(jr.State.Events), erin.UserID) {
			t.Fatalf("a new sender's member event is missing: state %v", syncStateKeys(jr.State.Events))
		}
		if got := syncMemberKeys(jr.State.Events); slices.ContainsFunc(got, func(u id.UserID) bool {
			return u != erin.UserID && u != dave.UserID
		}) {
			t.Fatalf("lazy incremental state has members who did not send: %v", got)
		}
		// Without lazy loading and without a gap: no state at all.
		plain := syncWith(t, dave, since, eager, 5000).Rooms.Join[roomID]
		wantIDs(t, "timeline", syncEventIDs(plain.Timeline.Events), late)
		if len(plain.State.Events) != 0 {
			t.Fatalf("incremental sync without a gap has state %v", syncStateKeys(plain.State.Events))
		}

		// A gap in which gina joins without speaking: the limited sync
		// carries her member event (the spec requires every member event
		// of the gap), and the senders' as lazy loading does.
		since = resp.NextBatch
		joinRoom(t, gina, roomID)
		var last []id.EventID
		for i := range 5 {
			last = append(last, syncSendText(t, bob, roomID, fmt.Sprintf("gap %d", i)))
		}
		gap := syncWith(t, dave, since, lazy, 5000).Rooms.Join[roomID]
		if !gap.Timeline.Limited {
			t.Fatal("six new events with limit 3, yet not limited")
		}
		wantIDs(t, "timeline", syncEventIDs(gap.Timeline.Events), last[2:]...)
		members := syncMemberKeys(gap.State.Events)
		if !slices.Contains(members, gina.UserID) || !slices.Contains(members, bob.UserID) {
			t.Fatalf("limited lazy sync: members %v, want gina (joined in the gap) and bob (sender)", members)
		}
		for _, e := range gap.State.Events {
			if e.GetStateKey() == gina.UserID.String() && syncMembership(e) != event.MembershipJoin {
				t.Fatalf("gina's member event is %s", syncMembership(e))
			}
		}
		syncCheckSummary(t, gap.Summary, 6, 1, alice.UserID, bob.UserID, carol.UserID, erin.UserID, frank.UserID)
	})

	t.Run("include_redundant_members", func(t *testing.T) {
		// Bob's member event was sent in the initial sync; with
		// include_redundant_members it comes again when he speaks again.
		const redundant = `{"room":{"timeline":{"limit":3},"state":{"lazy_load_members":true,"include_redundant_members":true}}}`
		syncFilterForms(t, dave, redundant, func(t *testing.T, f string) {
			first := syncWith(t, dave, "", f, 0)
			if !slices.Contains(syncMemberKeys(first.Rooms.Join[roomID].State.Events), bob.UserID) {
				t.Fatalf("initial lazy state lacks bob: %v", syncMemberKeys(first.Rooms.Join[roomID].State.Events))
			}
			msg := syncSendText(t, bob, roomID, "bob again")
			jr := syncWith(t, dave, first.NextBatch, f, 5000).Rooms.Join[roomID]
			wantIDs(t, "timeline", syncEventIDs(jr.Timeline.Events), msg)
			if !slices.Contains(syncMemberKeys(jr.State.Events), bob.UserID) {
				t.Fatalf("include_redundant_members: state %v lacks the sender bob", syncStateKeys(jr.State.Events))
			}
		})
	})
}

// syncCheckSummary checks a room summary's counts and heroes (in order).
func syncCheckSummary(t *testing.T, s mautrix.LazyLoadSummary, joined, invited int, heroes ...id.UserID) {
	t.Helper()
	if s.JoinedMemberCount == nil || *s.JoinedMemberCount != joined || s.InvitedMemberCount == nil || *s.InvitedMemberCount != invited {
		t.Fatalf("summary counts joined=%v invited=%v, want %d and %d", s.JoinedMemberCount, s.InvitedMemberCount, joined, invited)
	}
	wantIDs(t, "m.heroes", s.Heroes, heroes...)
}

// TestSyncLimitedTimelineGap: more new events than the timeline limit give
// a limited timeline whose state is the delta over the gap, and whose
// prev_batch lets /messages fill the gap exactly; without a gap state
// changes come only in the timeline.
func TestSyncLimitedTimelineGap(t *testing.T) {
	srv := startAccounts(t, nil)
	ctx := context.Background()
	alice := registerUser(t, srv, "alice", "correct horse battery")
	bob := registerUser(t, srv, "bob", "correct horse battery")
	roomID := createRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat", Name: "Gap room", Topic: "old topic"})
	joinRoom(t, bob, roomID)
	const filter = `{"room":{"timeline":{"limit":3}}}`

	first := syncWith(t, bob, "", filter, 0)
	seen := first.Rooms.Join[roomID].Timeline.Events
	lastSeen := seen[len(seen)-1].ID

	// The gap: m0 m1 m2 topic name(N1) m3 m4; then the timeline: m5
	// name(N2) m6.
	var sent []id.EventID
	for i := range 3 {
		sent = append(sent, syncSendText(t, alice, roomID, fmt.Sprintf("m%d", i)))
	}
	topic := syncSendState(t, alice, roomID, event.StateTopic, "", map[string]any{"topic": "gap topic"})
	name1 := syncSendState(t, alice, roomID, event.StateRoomName, "", map[string]any{"name": "N1"})
	sent = append(sent, topic, name1, syncSendText(t, alice, roomID, "m3"), syncSendText(t, alice, roomID, "m4"))
	gapEvents := slices.Clone(sent)
	tail := []id.EventID{syncSendText(t, alice, roomID, "m5"), syncSendState(t, alice, roomID, event.StateRoomName, "", map[string]any{"name": "N2"}),
		syncSendText(t, alice, roomID, "m6")}

	second := syncWith(t, bob, first.NextBatch, filter, 5000)
	jr := second.Rooms.Join[roomID]
	wantIDs(t, "limited timeline", syncEventIDs(jr.Timeline.Events), tail...)
	if !jr.Timeline.Limited || jr.Timeline.PrevBatch == "" {
		t.Fatalf("limited=%v prev_batch=%q, want a limited timeline with prev_batch", jr.Timeline.Limited, jr.Timeline.PrevBatch)
	}
	// The state is the delta from the token to the timeline's start: the
	// topic and the first name change, nothing that did not change.
	if got := syncStateKeys(jr.State.Events); !slices.Equal(got, []string{"m.room.name|", "m.room.topic|"}) {
		t.Fatalf("gap state = %v, want the name and the topic", got)
	}
	for _, e := range jr.State.Events {
		if want := map[event.Type]id.EventID{event.StateTopic: topic, event.StateRoomName: name1}[e.Type]; e.ID != want {
			t.Fatalf("gap state %s is %s, want %s (the state at the timeline's start)", e.Type.Type, e.ID, want)
		}
	}

	// collect pages through /messages and returns the events in stream
	// order, stopping at stop (exclusive) or at the end.
	collect := func(t *testing.T, from, to string, dir mautrix.Direction, stop id.EventID) []id.EventID {
		t.Helper()
		var got []id.EventID
		for range 50 {
			resp, err := bob.Messages(ctx, roomID, from, to, dir, nil, 2)
			if err != nil {
				t.Fatalf("/messages from %s to %s: %v", from, to, err)
			}
			for _, e := range resp.Chunk {
				if e.ID == stop {
					if dir == mautrix.DirectionBackward {
						slices.Reverse(got)
					}
					return got
				}
				got = append(got, e.ID)
			}
			if resp.End == "" || len(resp.Chunk) == 0 {
				if dir == mautrix.DirectionBackward {
					slices.Reverse(got)
				}
				return got
			}
			from = resp.End
		}
		t.Fatal("/messages did not end")
		return nil
	}
	t.Run("backward from prev_batch to the old token", func(t *testing.T) {
		wantIDs(t, "gap", collect(t, jr.Timeline.PrevBatch, first.NextBatch, mautrix.DirectionBackward, ""), gapEvents...)
	})
	t.Run("backward from prev_batch to the last event seen", func(t *testing.T) {
		wantIDs(t, "gap", collect(t, jr.Timeline.PrevBatch, "", mautrix.DirectionBackward, lastSeen), gapEvents...)
	})
	t.Run("forward from the old token to prev_batch", func(t *testing.T) {
		wantIDs(t, "gap", collect(t, first.NextBatch, jr.Timeline.PrevBatch, mautrix.DirectionForward, ""), gapEvents...)
	})

	t.Run("no gap", func(t *testing.T) {
		newTopic := syncSendState(t, alice, roomID, event.StateTopic, "", map[string]any{"topic": "no gap topic"})
		msg := syncSendText(t, alice, roomID, "x")
		resp := syncWith(t, bob, second.NextBatch, filter, 5000)
		jr := resp.Rooms.Join[roomID]
		wantIDs(t, "timeline", syncEventIDs(jr.Timeline.Events), newTopic, msg)
		if jr.Timeline.Limited || len(jr.State.Events) != 0 {
			t.Fatalf("no gap: limited=%v state=%v, want the change only in the timeline", jr.Timeline.Limited, syncStateKeys(jr.State.Events))
		}
		// Exactly the limit: still no gap.
		exact := []id.EventID{syncSendText(t, alice, roomID, "y0"), syncSendText(t, alice, roomID, "y1"), syncSendText(t, alice, roomID, "y2")}
		resp = syncWith(t, bob, resp.NextBatch, filter, 5000)
		jr = resp.Rooms.Join[roomID]
		wantIDs(t, "timeline", syncEventIDs(jr.Timeline.Events), exact...)
		if jr.Timeline.Limited {
			t.Fatal("exactly limit new events, yet limited")
		}
		// The timeline's prev_batch leads back to the previous events.
		before, err := bob.Messages(ctx, roomID, jr.Timeline.PrevBatch, "", mautrix.DirectionBackward, nil, 1)
		if err != nil {
			t.Fatal(err)
		}
		wantIDs(t, "event before the timeline", syncEventIDs(before.Chunk), msg)
	})
}

// TestSyncFilteredTimelineDeepGap: when a filtered timeline's matching
// events lie further back than the server looks, the timeline must be
// limited (so the client pages back) rather than silently miss them.
func TestSyncFilteredTimelineDeepGap(t *testing.T) {
	srv := startAccounts(t, nil)
	ctx := context.Background()
	alice := registerUser(t, srv, "alice", "correct horse battery")
	bob := registerUser(t, srv, "bob", "correct horse battery")
	roomID := createRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat", Name: "Noisy"})
	joinRoom(t, bob, roomID)
	const filter = `{"room":{"timeline":{"limit":5,"types":["m.room.message"]}}}`
	since := syncWith(t, bob, "", filter, 0).NextBatch

	needle := syncSendText(t, alice, roomID, "needle")
	// More non-matching events than the server scans (10 pages of 50).
	const noise, workers = 520, 8
	errs := make(chan error, workers)
	for w := range workers {
		go func() {
			for i := w; i < noise; i += workers {
				if _, err := alice.SendMessageEvent(ctx, roomID, event.Type{Type: "org.example.noise", Class: event.MessageEventType}, map[string]any{"i": i}); err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	for range workers {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}

	resp := syncWith(t, bob, since, filter, 5000)
	jr := resp.Rooms.Join[roomID]
	if jr == nil {
		t.Fatal("the room is missing: its only message would be lost")
	}
	if slices.Contains(syncEventIDs(jr.Timeline.Events), needle) {
		return // the server looked far enough
	}
	if !jr.Timeline.Limited {
		t.Fatalf("the message is neither in the timeline (%d events) nor behind a limited one", len(jr.Timeline.Events))
	}
	// prev_batch leads to it.
	msgs, err := bob.Messages(ctx, roomID, jr.Timeline.PrevBatch, since, mautrix.DirectionBackward,
		&mautrix.FilterPart{Types: []event.Type{event.EventMessage}}, 10)
	if err != nil {
		t.Fatal(err)
	}
	wantIDs(t, "messages behind prev_batch", syncEventIDs(msgs.Chunk), needle)
}

// syncRoomsOf lists the rooms of each section of resp.
func syncRoomsOf(resp *mautrix.RespSync) map[string][]id.RoomID {
	return map[string][]id.RoomID{
		"join":   slices.Sorted(maps.Keys(resp.Rooms.Join)),
		"invite": slices.Sorted(maps.Keys(resp.Rooms.Invite)),
		"knock":  slices.Sorted(maps.Keys(resp.Rooms.Knock)),
		"leave":  slices.Sorted(maps.Keys(resp.Rooms.Leave)),
	}
}

// syncWantSection fails unless roomID is in exactly the section want of resp
// ("" for none).
func syncWantSection(t *testing.T, resp *mautrix.RespSync, roomID id.RoomID, want string) {
	t.Helper()
	for section, rooms := range syncRoomsOf(resp) {
		if slices.Contains(rooms, roomID) != (section == want) {
			t.Fatalf("room %s: want it only in %q, got sections %v", roomID, want, syncRoomsOf(resp))
		}
	}
}

// syncStrippedByKey indexes stripped state by "type|state_key".
func syncStrippedByKey(t *testing.T, evs []*event.Event) map[string]*event.Event {
	t.Helper()
	out := map[string]*event.Event{}
	for _, e := range evs {
		if e.StateKey == nil || e.Sender == "" {
			t.Fatalf("stripped state event without state_key or sender: %s %+v", e.Type.Type, e)
		}
		out[e.Type.Type+"|"+*e.StateKey] = e
	}
	return out
}

// TestSyncInviteSection: an invite shows stripped state (create, name,
// join rules and the invite itself); joining moves the room to join with
// its full state; rejecting an invite shows the room under leave.
func TestSyncInviteSection(t *testing.T) {
	srv := startAccounts(t, nil)
	ctx := context.Background()
	alice := registerUser(t, srv, "alice", "correct horse battery")
	bob := registerUser(t, srv, "bob", "correct horse battery")
	start := syncWith(t, bob, "", "", 0)

	roomID := createRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "private_chat", Name: "Invite room", Topic: "secret topic"})
	syncSendText(t, alice, roomID, "before the invite")
	if _, err := alice.InviteUser(ctx, roomID, &mautrix.ReqInviteUser{UserID: bob.UserID, Reason: "come"}); err != nil {
		t.Fatal(err)
	}

	check := func(t *testing.T, resp *mautrix.RespSync) {
		t.Helper()
		syncWantSection(t, resp, roomID, "invite")
		st := syncStrippedByKey(t, resp.Rooms.Invite[roomID].State.Events)
		for _, k := range []string{"m.room.create|", "m.room.name|", "m.room.join_rules|", "m.room.topic|", "m.room.member|" + bob.UserID.String()} {
			if st[k] == nil {
				t.Fatalf("invite_state lacks %s: has %v", k, slices.Sorted(maps.Keys(st)))
			}
		}
		if got := st["m.room.name|"].Content.AsRoomName().Name; got != "Invite room" {
			t.Fatalf("invite_state name = %q", got)
		}
		inv := st["m.room.member|"+bob.UserID.String()]
		if syncMembership(inv) != event.MembershipInvite || inv.Sender != alice.UserID {
			t.Fatalf("invite member event: %s from %s", syncMembership(inv), inv.Sender)
		}
		if _, ok := st["m.room.member|"+alice.UserID.String()]; ok {
			t.Fatal("invite_state carries other members' events")
		}
		if _, ok := st["m.room.power_levels|"]; ok {
			t.Fatal("invite_state carries power levels: it should be stripped to the recommended set")
		}
	}
	t.Run("initial", func(t *testing.T) { check(t, syncWith(t, bob, "", "", 0)) })
	inc := syncWith(t, bob, start.NextBatch, "", 5000)
	t.Run("incremental", func(t *testing.T) { check(t, inc) })

	t.Run("unchanged invite is not repeated", func(t *testing.T) {
		syncSendText(t, alice, roomID, "bob cannot see this yet")
		resp := syncWith(t, bob, inc.NextBatch, "", 0)
		syncWantSection(t, resp, roomID, "")
	})

	t.Run("join", func(t *testing.T) {
		since := syncWith(t, bob, inc.NextBatch, "", 0).NextBatch
		joinRoom(t, bob, roomID)
		resp := syncWith(t, bob, since, `{"room":{"timeline":{"limit":2}}}`, 5000)
		syncWantSection(t, resp, roomID, "join")
		jr := resp.Rooms.Join[roomID]
		tl := jr.Timeline.Events
		if last := tl[len(tl)-1]; last.GetStateKey() != bob.UserID.String() || syncMembership(last) != event.MembershipJoin {
			t.Fatalf("timeline does not end with bob's join: %v", syncEventTypes(tl))
		}
		// A room new to the device comes with its whole state.
		keys := syncStateKeys(jr.State.Events)
		for _, k := range []string{"m.room.create|", "m.room.name|", "m.room.power_levels|", "m.room.member|" + alice.UserID.String()} {
			if !slices.Contains(keys, k) {
				t.Fatalf("newly joined room's state %v lacks %s", keys, k)
			}
		}
		if !jr.Timeline.Limited {
			t.Fatal("newly joined room with more history than the limit: not limited")
		}
	})

	t.Run("reject", func(t *testing.T) {
		carol := registerUser(t, srv, "carol", "correct horse battery")
		if _, err := alice.InviteUser(ctx, roomID, &mautrix.ReqInviteUser{UserID: carol.UserID}); err != nil {
			t.Fatal(err)
		}
		invited := syncWith(t, carol, "", "", 0)
		syncWantSection(t, invited, roomID, "invite")
		if _, err := carol.LeaveRoom(ctx, roomID); err != nil {
			t.Fatal(err)
		}
		resp := syncWith(t, carol, invited.NextBatch, "", 5000)
		syncWantSection(t, resp, roomID, "leave")
		tl := resp.Rooms.Leave[roomID].Timeline.Events
		if len(tl) == 0 || syncMembership(tl[len(tl)-1]) != event.MembershipLeave || tl[len(tl)-1].GetStateKey() != carol.UserID.String() {
			t.Fatalf("rejected invite's timeline = %v, want it to end with the rejection", syncEventTypes(tl))
		}
		if got := bodies(tl); len(got) != 0 {
			t.Fatalf("a user who was only invited sees messages %v", got)
		}
		// Nothing more about the room afterwards, and not in an initial
		// sync unless asked.
		syncSendText(t, alice, roomID, "after the rejection")
		syncWantSection(t, syncWith(t, carol, resp.NextBatch, "", 0), roomID, "")
		syncWantSection(t, syncWith(t, carol, "", "", 0), roomID, "")
	})
}

// TestSyncKnockSection: knocking shows the room under knock with stripped
// state; the room's members see the knock; an invite moves it to invite,
// a refused knock to leave.
func TestSyncKnockSection(t *testing.T) {
	srv := startAccounts(t, nil)
	ctx := context.Background()
	alice := registerUser(t, srv, "alice", "correct horse battery")
	carol := registerUser(t, srv, "carol", "correct horse battery")
	dan := registerUser(t, srv, "dan", "correct horse battery")
	roomID := syncKnockRoom(t, srv, alice, "Knock room")
	aliceSince := syncWith(t, alice, "", "", 0).NextBatch
	carolSince := syncWith(t, carol, "", "", 0).NextBatch

	knock, err := carol.KnockRoom(ctx, roomID.String(), &mautrix.ReqKnockRoom{Reason: "please"})
	if err != nil {
		t.Fatal(err)
	}
	if knock.RoomID != roomID {
		t.Fatalf("knock answered room %s", knock.RoomID)
	}
	resp := syncWith(t, carol, carolSince, "", 5000)
	syncWantSection(t, resp, roomID, "knock")
	st := syncStrippedByKey(t, resp.Rooms.Knock[roomID].State.Events)
	for _, k := range []string{"m.room.create|", "m.room.name|", "m.room.join_rules|", "m.room.member|" + carol.UserID.String()} {
		if st[k] == nil {
			t.Fatalf("knock_state lacks %s: has %v", k, slices.Sorted(maps.Keys(st)))
		}
	}
	if jr := st["m.room.join_rules|"].Content.AsJoinRules().JoinRule; jr != event.JoinRuleKnock {
		t.Fatalf("knock_state join rule = %s", jr)
	}
	if m := st["m.room.member|"+carol.UserID.String()]; syncMembership(m) != event.MembershipKnock || m.Sender != carol.UserID {
		t.Fatalf("knock member event: %s from %s", syncMembership(m), m.Sender)
	}
	syncWantSection(t, syncWith(t, carol, "", "", 0), roomID, "knock")

	// The room's members see the knock in the timeline.
	ar := syncWith(t, alice, aliceSince, "", 5000).Rooms.Join[roomID]
	if ar == nil {
		t.Fatal("alice's sync lacks the knocked room")
	}
	tl := ar.Timeline.Events
	if last := tl[len(tl)-1]; last.GetStateKey() != carol.UserID.String() || syncMembership(last) != event.MembershipKnock {
		t.Fatalf("alice's timeline does not end with the knock: %v", syncEventTypes(tl))
	}

	// Accepted: the knock becomes an invite, then a join.
	if _, err := alice.InviteUser(ctx, roomID, &mautrix.ReqInviteUser{UserID: carol.UserID}); err != nil {
		t.Fatal(err)
	}
	resp = syncWith(t, carol, resp.NextBatch, "", 5000)
	syncWantSection(t, resp, roomID, "invite")
	joinRoom(t, carol, roomID)
	syncWantSection(t, syncWith(t, carol, resp.NextBatch, "", 5000), roomID, "join")

	// Refused: the knocker is kicked and sees the room under leave.
	danSince := syncWith(t, dan, "", "", 0).NextBatch
	if _, err := dan.KnockRoom(ctx, roomID.String(), &mautrix.ReqKnockRoom{}); err != nil {
		t.Fatal(err)
	}
	if _, err := alice.KickUser(ctx, roomID, &mautrix.ReqKickUser{UserID: dan.UserID, Reason: "no"}); err != nil {
		t.Fatal(err)
	}
	resp = syncWith(t, dan, danSince, "", 5000)
	syncWantSection(t, resp, roomID, "leave")
	tl = resp.Rooms.Leave[roomID].Timeline.Events
	if last := tl[len(tl)-1]; last.GetStateKey() != dan.UserID.String() || syncMembership(last) != event.MembershipLeave || last.Sender != alice.UserID {
		t.Fatalf("refused knock: timeline %v does not end with alice's kick", syncEventTypes(tl))
	}
	if got := bodies(tl); len(got) != 0 {
		t.Fatalf("a knocker sees messages %v", got)
	}
}

// TestSyncLeaveSection: leaving, being kicked and being banned each show
// the room under leave with the timeline up to that event and nothing
// after it; the room then drops out of later syncs; rejoining brings it
// back under join.
func TestSyncLeaveSection(t *testing.T) {
	srv := startAccounts(t, nil)
	ctx := context.Background()
	alice := registerUser(t, srv, "alice", "correct horse battery")
	bob := registerUser(t, srv, "bob", "correct horse battery")

	ways := []struct {
		name       string
		out        func(roomID id.RoomID) error
		sender     *mautrix.Client
		membership event.Membership
	}{
		{"leave", func(roomID id.RoomID) error { _, err := bob.LeaveRoom(ctx, roomID); return err }, bob, event.MembershipLeave},
		{"kick", func(roomID id.RoomID) error {
			_, err := alice.KickUser(ctx, roomID, &mautrix.ReqKickUser{UserID: bob.UserID, Reason: "out"})
			return err
		}, alice, event.MembershipLeave},
		{"ban", func(roomID id.RoomID) error {
			_, err := alice.BanUser(ctx, roomID, &mautrix.ReqBanUser{UserID: bob.UserID, Reason: "gone"})
			return err
		}, alice, event.MembershipBan},
	}
	// A membership that begins and ends between two syncs: the client
	// that joined learns that it left.
	t.Run("join and leave between syncs", func(t *testing.T) {
		roomID := createRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat", Name: "Brief"})
		since := syncWith(t, bob, "", "", 0).NextBatch
		joinRoom(t, bob, roomID)
		said := syncSendText(t, bob, roomID, "just passing")
		if _, err := bob.LeaveRoom(ctx, roomID); err != nil {
			t.Fatal(err)
		}
		resp := syncWith(t, bob, since, "", 5000)
		syncWantSection(t, resp, roomID, "leave")
		tl := resp.Rooms.Leave[roomID].Timeline.Events
		if !slices.Contains(syncEventIDs(tl), said) || syncMembership(tl[len(tl)-1]) != event.MembershipLeave {
			t.Fatalf("brief membership's timeline = %v", syncEventTypes(tl))
		}
	})

	for _, w := range ways {
		t.Run(w.name, func(t *testing.T) {
			roomID := createRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat", Name: "Leave by " + w.name})
			joinRoom(t, bob, roomID)
			since := syncWith(t, bob, "", "", 0).NextBatch
			before := syncSendText(t, alice, roomID, "before")
			if err := w.out(roomID); err != nil {
				t.Fatal(err)
			}
			syncSendText(t, alice, roomID, "after")
			syncSendState(t, alice, roomID, event.StateTopic, "", map[string]any{"topic": "after"})

			check := func(t *testing.T, resp *mautrix.RespSync) {
				t.Helper()
				syncWantSection(t, resp, roomID, "leave")
				tl := resp.Rooms.Leave[roomID].Timeline.Events
				if len(tl) == 0 {
					t.Fatal("left room with an empty timeline")
				}
				last := tl[len(tl)-1]
				if last.GetStateKey() != bob.UserID.String() || syncMembership(last) != w.membership || last.Sender != w.sender.UserID {
					t.Fatalf("timeline ends with %s %s by %s, want bob's %s by %s", last.Type.Type, syncMembership(last), last.Sender, w.membership, w.sender.UserID)
				}
				if got := bodies(tl); slices.Contains(got, "after") || !slices.Contains(got, "before") {
					t.Fatalf("left room's messages = %v, want up to the leave", got)
				}
				for _, e := range append(tl, resp.Rooms.Leave[roomID].State.Events...) {
					if e.Type == event.StateTopic {
						t.Fatalf("a change after the leave is shown: %s", e.Content.VeryRaw)
					}
				}
			}
			resp := syncWith(t, bob, since, "", 5000)
			t.Run("incremental", func(t *testing.T) {
				check(t, resp)
				tl := resp.Rooms.Leave[roomID].Timeline.Events
				wantIDs(t, "timeline", syncEventIDs(tl[:len(tl)-1]), before)
			})
			t.Run("initial with include_leave", func(t *testing.T) {
				check(t, syncWith(t, bob, "", `{"room":{"include_leave":true}}`, 0))
				syncWantSection(t, syncWith(t, bob, "", "", 0), roomID, "")
			})
			t.Run("dropped afterwards", func(t *testing.T) {
				syncSendText(t, alice, roomID, "later still")
				syncWantSection(t, syncWith(t, bob, resp.NextBatch, "", 0), roomID, "")
				// full_state gives it back only with include_leave, like
				// an initial sync.
				for _, c := range []struct {
					filter, want string
				}{{"", ""}, {`{"room":{"include_leave":true}}`, "leave"}} {
					fs, err := bob.FullSyncRequest(ctx, mautrix.ReqSync{Since: resp.NextBatch, FilterID: c.filter, FullState: true})
					if err != nil {
						t.Fatal(err)
					}
					parseSync(fs)
					syncWantSection(t, fs, roomID, c.want)
					if c.want != "leave" {
						continue
					}
					// The timeline is still bounded by since (empty); the
					// state is the room's at the leave, nothing later.
					lr := fs.Rooms.Leave[roomID]
					if len(lr.Timeline.Events) != 0 {
						t.Fatalf("full_state left room: timeline %v, want nothing after since", syncEventTypes(lr.Timeline.Events))
					}
					keys := syncStateKeys(lr.State.Events)
					if !slices.Contains(keys, "m.room.create|") || slices.Contains(keys, "m.room.topic|") {
						t.Fatalf("full_state left room's state = %v, want the state at the leave", keys)
					}
					for _, e := range lr.State.Events {
						if e.GetStateKey() == bob.UserID.String() && syncMembership(e) != w.membership {
							t.Fatalf("full_state left room: bob's membership %s, want %s", syncMembership(e), w.membership)
						}
					}
				}
			})
			t.Run("rejoin", func(t *testing.T) {
				if w.membership == event.MembershipBan {
					if _, err := alice.UnbanUser(ctx, roomID, &mautrix.ReqUnbanUser{UserID: bob.UserID}); err != nil {
						t.Fatal(err)
					}
				}
				since := syncWith(t, bob, resp.NextBatch, "", 0).NextBatch
				joinRoom(t, bob, roomID)
				again := syncSendText(t, alice, roomID, "welcome back")
				back := syncWith(t, bob, since, "", 5000)
				syncWantSection(t, back, roomID, "join")
				tl := back.Rooms.Join[roomID].Timeline.Events
				if tl[len(tl)-1].ID != again {
					t.Fatalf("rejoined room's timeline ends with %s, want the new message", tl[len(tl)-1].ID)
				}
				if !slices.ContainsFunc(tl, func(e *event.Event) bool {
					return e.GetStateKey() == bob.UserID.String() && syncMembership(e) == event.MembershipJoin
				}) {
					t.Fatalf("rejoined room's timeline lacks the join: %v", syncEventTypes(tl))
				}
				if !slices.Contains(syncStateKeys(back.Rooms.Join[roomID].State.Events), "m.room.create|") {
					t.Fatal("a rejoined room comes without its full state")
				}
			})
		})
	}
}
