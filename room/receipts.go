package room

import (
	"context"
	"errors"
	"fmt"

	"github.com/tidwall/gjson"
	"maunium.net/go/mautrix/id"
)

// Receipt types a client may send; m.fully_read is the read marker, kept
// as room account data, never shown under m.receipt.
const (
	ReceiptRead        = "m.read"
	ReceiptReadPrivate = "m.read.private"
	FullyRead          = "m.fully_read"
)

// MainThread is the thread ID of a room's main timeline.
const MainThread = "main"

// receiptThreadHops is how many relations are followed to find an event's
// thread (the spec recommends at most 3).
const receiptThreadHops = 3

// ReceiptStore keeps read receipts and fully-read markers. *storage.Rooms
// implements it; the service finds it by type assertion on its Store.
type ReceiptStore interface {
	// PutReadMarks stores the marks of one user in one room in one stream
	// transaction. Each mark only ever moves forward: one whose event is
	// not after (by stream position) the event the stored mark of the same
	// type and thread points at changes nothing. When nothing changes no
	// stream position is taken and no /sync is woken.
	PutReadMarks(ctx context.Context, m ReadMarks) error
}

// ReadMarks are one user's new marks in one room.
type ReadMarks struct {
	RoomID id.RoomID
	UserID id.UserID
	// TS is the receipts' ts (unix ms).
	TS    int64
	Marks []ReadMark
}

// ReadMark is one receipt (m.read, m.read.private) or the m.fully_read
// marker (stored as the room account data {"event_id": EventID}).
type ReadMark struct {
	Type     string
	ThreadID string // "" for an unthreaded receipt
	EventID  id.EventID
	// EventPos is the event's stream position, which orders marks.
	EventPos int64
}

// ReadMarkers is POST /rooms/{roomId}/read_markers: each field optional.
type ReadMarkers struct {
	FullyRead   id.EventID
	Read        id.EventID
	ReadPrivate id.EventID
}

func (s *Service) receiptStore() (ReceiptStore, error) {
	rs, ok := s.store.(ReceiptStore)
	if !ok {
		return nil, errors.New("store keeps no receipts")
	}
	return rs, nil
}

// SendReceipt is POST /rooms/{roomId}/receipt/{receiptType}/{eventId}:
// threadID is the body's thread_id (nil when absent). m.fully_read sets
// the read marker, as /read_markers does.
//
// Errors, in the order checked: an unknown receipt type, an empty
// thread_id or one given with m.fully_read is 400 M_INVALID_PARAM; a user
// not joined to the room is 403 M_FORBIDDEN; an event that is not in the
// room (or not visible to the user) is 404 M_NOT_FOUND; a thread_id the
// event does not belong to is 400 M_INVALID_PARAM (the spec's "event_id
// is not related to the thread_id").
//
// A receipt for an event older than the user's current one of the same
// type and thread is accepted (200) and changes nothing: receipts are "read
// up to" marks and never move back (as in Synapse).
func (s *Service) SendReceipt(ctx context.Context, user id.UserID, roomID id.RoomID, receiptType string, eventID id.EventID, threadID *string) error {
	switch receiptType {
	case ReceiptRead, ReceiptReadPrivate, FullyRead:
	default:
		return errInvalidParam("Receipt type must be m.read, m.read.private or m.fully_read")
	}
	if threadID != nil {
		if *threadID == "" {
			return errInvalidParam("thread_id must be a non-empty string")
		}
		if receiptType == FullyRead {
			return errInvalidParam("thread_id is not compatible with m.fully_read")
		}
	}
	if err := s.requireJoined(ctx, user, roomID); err != nil {
		return err
	}
	ev, err := s.receiptEvent(ctx, user, roomID, eventID)
	if err != nil {
		return err
	}
	mark := ReadMark{Type: receiptType, EventID: ev.ID, EventPos: ev.StreamPos}
	if threadID != nil {
		ok, err := s.inReceiptThread(ctx, ev, *threadID)
		if err != nil {
			return err
		}
		if !ok {
			return errInvalidParam(fmt.Sprintf("Event %s is not related to thread %s", eventID, *threadID))
		}
		mark.ThreadID = *threadID
	}
	return s.putReadMarks(ctx, user, roomID, []ReadMark{mark})
}

// SetReadMarkers is POST /rooms/{roomId}/read_markers: the fully-read
// marker and unthreaded m.read / m.read.private receipts, all optional,
// stored together. The checks are SendReceipt's; an empty request is a
// no-op.
func (s *Service) SetReadMarkers(ctx context.Context, user id.UserID, roomID id.RoomID, m ReadMarkers) error {
	if err := s.requireJoined(ctx, user, roomID); err != nil {
		return err
	}
	var marks []ReadMark
	for _, want := range []struct {
		typ string
		id  id.EventID
	}{{FullyRead, m.FullyRead}, {ReceiptRead, m.Read}, {ReceiptReadPrivate, m.ReadPrivate}} {
		if want.id == "" {
			continue
		}
		ev, err := s.receiptEvent(ctx, user, roomID, want.id)
		if err != nil {
			return err
		}
		marks = append(marks, ReadMark{Type: want.typ, EventID: ev.ID, EventPos: ev.StreamPos})
	}
	if len(marks) == 0 {
		return nil
	}
	return s.putReadMarks(ctx, user, roomID, marks)
}

func (s *Service) putReadMarks(ctx context.Context, user id.UserID, roomID id.RoomID, marks []ReadMark) error {
	rs, err := s.receiptStore()
	if err != nil {
		return err
	}
	if err := rs.PutReadMarks(ctx, ReadMarks{RoomID: roomID, UserID: user, TS: s.now().UnixMilli(), Marks: marks}); err != nil {
		return fmt.Errorf("storing receipts: %w", err)
	}
	return nil
}

// requireJoined answers 403 unless user is joined to roomID now. It is
// read outside any lock: a receipt racing the user's leave may still be
// stored, which only shows the receipt they sent while they were there.
func (s *Service) requireJoined(ctx context.Context, user id.UserID, roomID id.RoomID) error {
	m, _, err := s.store.Membership(ctx, roomID, user)
	if err != nil {
		return fmt.Errorf("reading membership: %w", err)
	}
	if m != "join" {
		return errForbidden("You are not joined to this room")
	}
	return nil
}

// receiptEvent loads the event a receipt points at: it must be in the room
// and visible to the user.
func (s *Service) receiptEvent(ctx context.Context, user id.UserID, roomID id.RoomID, eventID id.EventID) (*Event, error) {
	ev, err := s.store.Event(ctx, eventID)
	if errors.Is(err, ErrNotFound) || (err == nil && ev.RoomID != roomID) {
		return nil, errNotFound("Event not found in this room")
	}
	if err != nil {
		return nil, fmt.Errorf("loading event: %w", err)
	}
	vis, err := s.VisibleTo(ctx, user, roomID, []*Event{ev})
	if err != nil {
		return nil, err
	}
	if len(vis) == 0 {
		return nil, errNotFound("Event not found in this room")
	}
	return ev, nil
}

// inReceiptThread reports whether a receipt for ev may carry threadID.
// ev's thread is found by following its relations (at most
// receiptThreadHops): the first m.thread relation names the thread. An
// event in a thread takes only that thread's ID. An event in no thread
// takes "main", or the ID of a thread root it is (or relates to through
// other relations, like a reaction to the root): thread roots belong to
// the main timeline and to their thread alike.
func (s *Service) inReceiptThread(ctx context.Context, ev *Event, threadID string) (bool, error) {
	cur := ev
	chain := []id.EventID{ev.ID}
	for range receiptThreadHops {
		rel := gjson.GetBytes(cur.PDU.Content, `m\.relates_to`)
		parent := id.EventID(rel.Get("event_id").Str)
		if parent == "" {
			break
		}
		if rel.Get("rel_type").Str == relThread {
			return threadID == string(parent), nil
		}
		chain = append(chain, parent)
		next, err := s.store.Event(ctx, parent)
		if errors.Is(err, ErrNotFound) || (err == nil && next.RoomID != ev.RoomID) {
			break
		}
		if err != nil {
			return false, fmt.Errorf("loading related event: %w", err)
		}
		cur = next
	}
	if threadID == MainThread {
		return true, nil
	}
	for _, e := range chain {
		if string(e) == threadID {
			return true, nil
		}
	}
	return false, nil
}
