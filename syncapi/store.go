package syncapi

import (
	"context"
	"encoding/json"

	"maunium.net/go/mautrix/federation/pdu"
	"maunium.net/go/mautrix/id"

	"github.com/weftchat/weft/room"
)

// Store is what /sync reads. Storage implements it.
type Store interface {
	// Snapshot opens one REPEATABLE READ, READ ONLY transaction: every
	// read of one response that goes to the database sees the same
	// database. Close ends it.
	Snapshot(ctx context.Context) (Snapshot, error)
	// SendToDevice and AckToDevice write to-device messages
	// (todevice.go).
	ToDeviceStore
	// Unread reads unread counts outside a snapshot (unread.go).
	UnreadStore
	// Notifications lists a user's notifications (notifications.go).
	NotificationStore
}

// Snapshot reads the stream inside one read transaction. Every method
// takes explicit stream positions: the snapshot may already hold commits
// above the response's upper bound, and those must wait for the next
// response. What a method returns for positions at or below a committed
// position never changes (events are immutable; only their redaction mark
// is set later), which is what lets /sync share results between requests.
type Snapshot interface {
	// MemberEvents returns the user's newest member event in each room,
	// among those at or below at.
	MemberEvents(user id.UserID, at int64) ([]*room.Event, error)
	// SnapshotVisibility returns history_visibility and the user's
	// membership in a state snapshot.
	SnapshotVisibility(snapshot int64, user id.UserID) (hv, membership string, err error)
	// Timeline returns up to limit of the room's newest events with
	// positions in (from, to], newest first.
	Timeline(roomID id.RoomID, from, to int64, limit int) ([]*room.Event, error)
	// Timelines is Timeline for many rooms in one query.
	Timelines(reqs []TimelineReq) (map[TimelineReq][]*room.Event, error)
	// StateIDs resolves, for each request, the room's state after every
	// event at or below its position, as event IDs, in one query.
	StateIDs(reqs []StateReq) (map[StateReq]map[pdu.StateKey]id.EventID, error)
	// TxnIDs maps those of the events that the device sent with a
	// transaction ID to it.
	TxnIDs(user id.UserID, device id.DeviceID, events []id.EventID) (map[id.EventID]string, error)
	// Events loads events by ID (unknown ones are left out).
	Events(ids []id.EventID) ([]*room.Event, error)
	// AccountData lists the user's account data changed in (since, to].
	AccountData(user id.UserID, since, to int64) ([]AccountData, error)
	// GlobalAccountData is the content of the user's global account data
	// of type typ (nil: none).
	GlobalAccountData(user id.UserID, typ string) (json.RawMessage, error)
	// Receipts lists the receipts in rooms changed in (since, to].
	Receipts(rooms []id.RoomID, since, to int64) ([]Receipt, error)
	// Presence lists the presence, changed in (since, to], of the user
	// and of the users sharing a joined room with them.
	Presence(user id.UserID, since, to int64) ([]Presence, error)
	// ToDevice lists up to limit of the device's to-device messages with
	// positions in (since, to], oldest first.
	ToDevice(user id.UserID, device id.DeviceID, since, to int64, limit int) ([]ToDeviceMessage, error)
	// DeviceListChanges lists the users whose devices or keys changed in
	// (since, to], each once.
	DeviceListChanges(since, to int64) ([]id.UserID, error)
	// SharingEvents is, for each request, the room's m.room.member and
	// m.room.encryption events in (From, To], oldest first (Limit is
	// ignored): the events that change who shares an encrypted room.
	SharingEvents(reqs []TimelineReq) (map[TimelineReq][]*room.Event, error)
	// EncryptedRooms lists those of rooms with m.room.encryption in their
	// current state. Current state, not state at a position: see
	// devicelists.go for why that is enough.
	EncryptedRooms(rooms []id.RoomID) ([]id.RoomID, error)
	// JoinedMembers lists each room's joined members in its current state.
	JoinedMembers(rooms []id.RoomID) (map[id.RoomID][]id.UserID, error)
	// Unread is UnreadStore.Unread inside the snapshot.
	Unread(keys []UnreadKey, to int64) (map[UnreadKey]*RoomUnread, error)
	// UnreadEvents is UnreadStore.UnreadEvents inside the snapshot.
	UnreadEvents(roomID id.RoomID, after, to int64, limit int) ([]UnreadEvent, error)
	// Close ends the transaction.
	Close()
}

// TimelineReq asks for up to Limit of a room's newest events in (From, To].
type TimelineReq struct {
	Room     id.RoomID
	From, To int64
	Limit    int
}

// StateReq asks for a room's state after every event at or below Pos.
type StateReq struct {
	Room id.RoomID
	Pos  int64
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
