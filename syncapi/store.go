package syncapi

import (
	"context"
	"encoding/json"

	"maunium.net/go/mautrix/id"

	"github.com/weftchat/weft/room"
)

// Store is what /sync reads. Storage implements it.
type Store interface {
	// Snapshot runs fn in one REPEATABLE READ, READ ONLY transaction, so
	// every read of one response sees the same database.
	Snapshot(ctx context.Context, fn func(Reader) error) error
	// MaxStreamPos is the highest committed stream position (at start).
	MaxStreamPos(ctx context.Context) (int64, error)
}

// Reader reads the stream inside one snapshot. Every method takes explicit
// stream positions: the snapshot may already hold commits above the
// response's upper bound, and those must wait for the next response.
type Reader interface {
	// MemberEvents returns the user's newest member event in each room,
	// among those at or below at.
	MemberEvents(user id.UserID, at int64) ([]*room.Event, error)
	// SnapshotVisibility returns history_visibility and the user's
	// membership in a state snapshot.
	SnapshotVisibility(snapshot int64, user id.UserID) (hv, membership string, err error)
	// Timeline returns up to limit of the room's newest events with
	// positions in (from, to], newest first.
	Timeline(roomID id.RoomID, from, to int64, limit int) ([]*room.Event, error)
	// StateAt returns the room's state after every event at or below pos.
	// With members set, member events are limited to those users.
	StateAt(roomID id.RoomID, pos int64, members *[]id.UserID) ([]*room.Event, error)
	// StateDelta returns the state entries at pos that differ from those
	// at since (new or replaced keys), limited like StateAt.
	StateDelta(roomID id.RoomID, since, pos int64, members *[]id.UserID) ([]*room.Event, error)
	// Summary counts joined and invited members at pos and lists up to
	// five heroes other than self (joined or invited first, in stream
	// order; else those who left or were banned).
	Summary(roomID id.RoomID, pos int64, self id.UserID) (Summary, error)
	// AccountData lists the user's account data changed in (since, to].
	AccountData(user id.UserID, since, to int64) ([]AccountData, error)
	// Receipts lists the receipts in rooms changed in (since, to].
	Receipts(rooms []id.RoomID, since, to int64) ([]Receipt, error)
	// Presence lists the presence, changed in (since, to], of the user
	// and of the users sharing a joined room with them.
	Presence(user id.UserID, since, to int64) ([]Presence, error)
}

// Summary is a room's m.room summary numbers.
type Summary struct {
	Joined, Invited int
	Heroes          []id.UserID
}

// AccountData is one account data entry ("" RoomID: global).
type AccountData struct {
	RoomID  id.RoomID
	Type    string
	Content json.RawMessage
}

// Receipt is one user's receipt in a room.
type Receipt struct {
	RoomID   id.RoomID
	UserID   id.UserID
	Type     string
	ThreadID string
	EventID  id.EventID
	TS       int64
}

// Presence is one user's stored presence.
type Presence struct {
	UserID       id.UserID
	State        string
	StatusMsg    *string
	LastActiveTS int64
	LastSyncTS   int64
}
