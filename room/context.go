package room

import (
	"context"
	"errors"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"
)

// ContextResult is GET /rooms/{roomId}/context/{eventId}.
type ContextResult struct {
	Event        ClientEvent   `json:"event"`
	EventsBefore []ClientEvent `json:"events_before"`
	EventsAfter  []ClientEvent `json:"events_after"`
	Start        string        `json:"start"`
	End          string        `json:"end"`
	State        []ClientEvent `json:"state"`
}

// Context returns an event with up to limit events around it (split evenly
// before and after), all filtered by history visibility, and the state at
// the last event returned.
func (s *Service) Context(ctx context.Context, user id.UserID, roomID id.RoomID, eventID id.EventID, limit int, ignored map[id.UserID]bool) (*ContextResult, error) {
	vis, _, err := s.visibilityFor(ctx, user, roomID)
	if err != nil {
		return nil, err
	}
	e, err := s.store.Event(ctx, eventID)
	if errors.Is(err, ErrNotFound) || (err == nil && e.RoomID != roomID) {
		return nil, errNotFound("Event not found")
	}
	if err != nil {
		return nil, err
	}
	if ok, err := vis.allowed(e); err != nil {
		return nil, err
	} else if !ok {
		return nil, errNotFound("Event not found")
	}
	if limit < 0 {
		return nil, mautrix.MInvalidParam.WithMessage("limit must not be negative")
	}
	limit = min(limit, maxMessagesLimit)
	before, after := limit/2, limit-limit/2
	ev := []ClientEvent{s.ToClient(e)}
	if err := s.bundleAggregations(ctx, vis, ignored, ev); err != nil {
		return nil, err
	}
	res := &ContextResult{Event: ev[0], EventsBefore: []ClientEvent{}, EventsAfter: []ClientEvent{}}
	b, err := s.Messages(ctx, MessagesParams{User: user, RoomID: roomID, From: Token(e.StreamPos - 1).String(), Backward: true, Limit: before, Ignored: ignored})
	if err != nil {
		return nil, err
	}
	a, err := s.Messages(ctx, MessagesParams{User: user, RoomID: roomID, From: Token(e.StreamPos).String(), Limit: after, Ignored: ignored})
	if err != nil {
		return nil, err
	}
	if before > 0 {
		res.EventsBefore = b.Chunk
	}
	if after > 0 {
		res.EventsAfter = a.Chunk
	}
	res.Start, res.End = Token(e.StreamPos-1).String(), Token(e.StreamPos).String()
	if before > 0 && b.End != "" {
		res.Start = b.End
	}
	if after > 0 && a.End != "" {
		res.End = a.End
	}
	last := e.ID
	if n := len(res.EventsAfter); n > 0 {
		last = res.EventsAfter[n-1].EventID
	}
	state, err := s.store.StateAt(ctx, roomID, last, true)
	if err != nil {
		return nil, err
	}
	res.State = make([]ClientEvent, 0, len(state))
	for _, st := range state {
		res.State = append(res.State, s.ToClient(st))
	}
	return res, nil
}

// TimestampToEvent finds the event closest to ts in direction dir ("f": at
// or after, "b": at or before) that the user may see.
func (s *Service) TimestampToEvent(ctx context.Context, user id.UserID, roomID id.RoomID, ts int64, forward bool) (*ClientEvent, error) {
	vis, _, err := s.visibilityFor(ctx, user, roomID)
	if err != nil {
		return nil, err
	}
	finder, ok := s.store.(interface {
		EventsByTime(ctx context.Context, roomID id.RoomID, ts int64, forward bool, limit int) ([]*Event, error)
	})
	if !ok {
		return nil, errors.New("store cannot search by time")
	}
	evs, err := finder.EventsByTime(ctx, roomID, ts, forward, 100)
	if err != nil {
		return nil, err
	}
	for _, e := range evs {
		if ok, err := vis.allowed(e); err != nil {
			return nil, err
		} else if ok {
			ce := s.ToClient(e)
			return &ce, nil
		}
	}
	return nil, errNotFound("No event found in that direction")
}

// Forget hides a room the user has left from their room lists.
func (s *Service) Forget(ctx context.Context, user id.UserID, roomID id.RoomID) error {
	m, _, err := s.store.Membership(ctx, roomID, user)
	if err != nil {
		return err
	}
	if m == "join" || m == "invite" || m == "knock" {
		return mautrix.RespError{ErrCode: "M_UNKNOWN", Err: "Leave the room before forgetting it", StatusCode: 400}
	}
	if m == "" {
		return errNotFound("You were never in this room")
	}
	f, ok := s.store.(interface {
		Forget(ctx context.Context, user id.UserID, roomID id.RoomID) error
	})
	if !ok {
		return errors.New("store cannot forget rooms")
	}
	return f.Forget(ctx, user, roomID)
}
