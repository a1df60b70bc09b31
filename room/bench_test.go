package room_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"

	"maunium.net/go/mautrix/id"

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
