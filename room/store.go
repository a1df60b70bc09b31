package room

import (
	"context"
	"errors"

	"maunium.net/go/mautrix/federation/pdu"
	"maunium.net/go/mautrix/id"
)

// ErrDuplicateTxn is returned by Tx.Append when the event's transaction ID
// was already used: the request is a retry.
var ErrDuplicateTxn = errors.New("transaction ID already used")

// ErrStaleHeads fails a batch whose jobs were built on cached room heads
// that the store found stale when its read of them arrived: nothing was
// written, and the batch runs again (room/batch.go).
var ErrStaleHeads = errors.New("room heads changed since they were cached")

// ErrNotFound is returned by Store lookups that find nothing.
var ErrNotFound = errors.New("not found")

// Event is a stored event: the PDU and what the server knows about it.
type Event struct {
	ID          id.EventID
	RoomID      id.RoomID
	RoomVersion id.RoomVersion
	PDU         *pdu.PDU
	StreamPos   int64
	StateBefore int64 // snapshot ID
	RedactedBy  id.EventID
	// RedactedBecause is the redaction event's PDU when RedactedBy is set.
	RedactedBecause *pdu.PDU
}

// Appended is an authorised event ready to be stored.
type Appended struct {
	ID  id.EventID
	PDU *pdu.PDU
	// Raw is the PDU's JSON, stored byte for byte.
	Raw []byte
	// TxnID, when set, records (sender, device, txn) -> event for idempotency.
	TxnDevice id.DeviceID
	TxnID     string
	// Redacts is the event this redaction applies to (already checked).
	Redacts id.EventID
	// Push is what the event did for the room's local members, written
	// with it (push.go); nil: nothing.
	Push *PushOutcome
}

// Tx is the work done on one room under its lock: reads of its current
// state and graph, and appends. Everything appended commits together.
type Tx interface {
	RoomID() id.RoomID
	RoomVersion() id.RoomVersion
	// CurrentStateIDs returns the event IDs of the given state keys that exist.
	CurrentStateIDs(keys []pdu.StateKey) (map[pdu.StateKey]id.EventID, error)
	// Events loads PDUs by ID (missing ones are absent from the map).
	Events(ids []id.EventID) (map[id.EventID]*pdu.PDU, error)
	// Head returns the forward extremities and the depth of the deepest.
	Head() ([]id.EventID, int64, error)
	// TxnEvent finds a previous send with the same transaction ID.
	TxnEvent(sender id.UserID, device id.DeviceID, txnID string) (id.EventID, bool, error)
	// Append stores an event as the new head of the room: its stream
	// position, the state before it, and, if it is a state event, the new
	// current state.
	Append(e *Appended) (int64, error)
}

// Store is the persistence of rooms.
type Store interface {
	// Batch runs fn in one write transaction, committed once when fn
	// returns nil. All room writes go through it (see batcher).
	Batch(ctx context.Context, fn func(BatchTx) error) error

	RoomVersion(ctx context.Context, roomID id.RoomID) (id.RoomVersion, error)
	Event(ctx context.Context, eventID id.EventID) (*Event, error)
	// CurrentState returns every current state event of the room.
	CurrentState(ctx context.Context, roomID id.RoomID) ([]*Event, error)
	// StateAt returns the room state before (or, with after, including) an event.
	StateAt(ctx context.Context, roomID id.RoomID, eventID id.EventID, after bool) ([]*Event, error)
	// Membership is a user's current membership ("" if none) and its event.
	Membership(ctx context.Context, roomID id.RoomID, userID id.UserID) (string, id.EventID, error)
	JoinedRooms(ctx context.Context, userID id.UserID) ([]id.RoomID, error)
	// Members lists the current member events of a room.
	Members(ctx context.Context, roomID id.RoomID) ([]*Event, error)
	// Timeline returns up to limit events of a room with stream positions
	// in (from, to] going forward, or [to, from) going backward (newest
	// first), and whether more exist.
	Timeline(ctx context.Context, roomID id.RoomID, from, to int64, backward bool, limit int) ([]*Event, error)
	// AliasRoom resolves a local alias (ErrNotFound if unknown).
	AliasRoom(ctx context.Context, alias id.RoomAlias) (id.RoomID, error)
	// MaxStreamPos is the highest committed stream position.
	MaxStreamPos(ctx context.Context) (int64, error)
}
