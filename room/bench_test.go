package room_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"maunium.net/go/mautrix/id"

	"github.com/weftchat/weft/push"
	"github.com/weftchat/weft/room"
)

// BenchmarkSendOneRoom is the room domain's send path (build, sign,
// authorise, group-committed append) without HTTP, 16 senders into one room,
// on the test cluster (fsync off: this measures CPU, not the disk).
//
//	GOTOOLCHAIN=auto go test -run '^$' -bench SendOneRoom -cpuprofile /tmp/cpu.out ./room/
func BenchmarkSendOneRoom(b *testing.B) {
	h := newHarness(b, 20)
	ctx := context.Background()
	alice := user("alice")
	roomID, err := h.rooms.Create(ctx, room.CreateParams{Creator: alice, Preset: "public_chat"})
	if err != nil {
		b.Fatal(err)
	}
	var n atomic.Int64
	b.SetParallelism(8)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			i := n.Add(1)
			_, err := h.rooms.Send(ctx, room.SendParams{Sender: alice, Device: "D", RoomID: roomID, Type: "m.room.message",
				TxnID: fmt.Sprint(i), Content: textContent("benchmark")})
			if err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkSendRooms is BenchmarkSendOneRoom spread over 16 rooms, 16
// senders: the events of different rooms are built in parallel within a
// batch.
//
//	GOTOOLCHAIN=auto go test -run '^$' -bench SendRooms -cpuprofile /tmp/cpu.out ./room/
func BenchmarkSendRooms(b *testing.B) {
	h := newHarness(b, 20)
	ctx := context.Background()
	alice := user("alice")
	rooms := make([]id.RoomID, 16)
	for i := range rooms {
		var err error
		if rooms[i], err = h.rooms.Create(ctx, room.CreateParams{Creator: alice, Preset: "public_chat"}); err != nil {
			b.Fatal(err)
		}
	}
	var n atomic.Int64
	b.SetParallelism(8)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			i := n.Add(1)
			_, err := h.rooms.Send(ctx, room.SendParams{Sender: alice, Device: "D", RoomID: rooms[i%int64(len(rooms))], Type: "m.room.message",
				TxnID: fmt.Sprint(i), Content: textContent("benchmark")})
			if err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkSendBigRoom is the latency of one send (one sender, one at a
// time) into a room of 1,000 local members, with push rule evaluation for
// every member on (rows written with the event for each member notified)
// and off. ns/op is the latency of Send; evaluations/op is 999.
//
//	GOTOOLCHAIN=auto go test -run '^$' -bench SendBigRoom -benchtime 2000x ./room/
func BenchmarkSendBigRoom(b *testing.B) {
	for _, on := range []bool{false, true} {
		b.Run(fmt.Sprintf("push=%v", on), func(b *testing.B) {
			h := newHarness(b, 20)
			if on {
				h.rooms.SetPushRules(push.NewService(h.db.PushRules(), nil))
			}
			ctx := context.Background()
			alice := user("alice")
			roomID, err := h.rooms.Create(ctx, room.CreateParams{Creator: alice, Preset: "public_chat"})
			if err != nil {
				b.Fatal(err)
			}
			const members = 1000
			var wg sync.WaitGroup
			var failed atomic.Bool
			for w := range 16 {
				wg.Go(func() {
					for i := w + 1; i < members; i += 16 {
						if err := h.rooms.Join(ctx, room.MembershipParams{Sender: user(fmt.Sprintf("member%d", i)), RoomID: roomID}); err != nil {
							b.Error(err)
							failed.Store(true)
							return
						}
					}
				})
			}
			wg.Wait()
			if failed.Load() {
				return
			}
			// One send first, so the member cache is filled as in a
			// running server.
			if _, err := h.rooms.Send(ctx, room.SendParams{Sender: alice, Device: "D", RoomID: roomID, Type: "m.room.message",
				TxnID: "warm", Content: textContent("warm up")}); err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			for i := range b.N {
				if _, err := h.rooms.Send(ctx, room.SendParams{Sender: alice, Device: "D", RoomID: roomID, Type: "m.room.message",
					TxnID: fmt.Sprint(i), Content: textContent("benchmark")}); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			if on {
				var rows int
				if err := h.pool.QueryRow(ctx, `SELECT count(*) FROM event_push_actions`).Scan(&rows); err != nil {
					b.Fatal(err)
				}
				b.ReportMetric(float64(rows)/float64(b.N+1), "notified/op")
			}
		})
	}
}
