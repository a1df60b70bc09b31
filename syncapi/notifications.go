package syncapi

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"

	"github.com/weftchat/weft/room"
)

// GET /notifications: the events the user's push rules notified them of,
// newest first, from the same rows as the unread counts.

// NotificationStore lists stored notifications.
type NotificationStore interface {
	// Notifications lists up to q.Limit of the user's notifications with
	// positions below q.Before (0: no bound), newest first.
	Notifications(ctx context.Context, q NotificationsQuery) ([]StoredNotification, error)
}

// NotificationsQuery is one page of a user's notifications.
type NotificationsQuery struct {
	User          id.UserID
	Before        int64
	Limit         int
	HighlightOnly bool
}

// StoredNotification is one notification row and its event.
type StoredNotification struct {
	Pos       int64 // the event's stream position
	Event     *room.Event
	Actions   json.RawMessage
	TS        int64
	Highlight bool
	// Read: the user's receipts for the event's thread or their own later
	// event in the room are at or after it.
	Read bool
}

// Page sizes of GET /notifications.
const (
	DefaultNotificationsLimit = 20
	MaxNotificationsLimit     = 100
)

// NotificationsRequest is one GET /notifications.
type NotificationsRequest struct {
	User id.UserID
	// From is a next_token from an earlier page; "" starts at the newest.
	From string
	// Limit: 0 is DefaultNotificationsLimit; more than
	// MaxNotificationsLimit is cut to it.
	Limit int
	// Only "highlight" keeps the notifications with the highlight tweak;
	// other values are ignored.
	Only string
	// Ignored are senders the user ignores: their events are left out.
	Ignored map[id.UserID]bool
}

// Notifications is the response of GET /notifications.
type Notifications struct {
	NextToken     string         `json:"next_token,omitempty"`
	Notifications []Notification `json:"notifications"`
}

// Notification is one entry of Notifications. profile_tag is not kept:
// the field is optional and left out.
type Notification struct {
	Actions json.RawMessage `json:"actions"`
	Event   json.RawMessage `json:"event"`
	Read    bool            `json:"read"`
	RoomID  id.RoomID       `json:"room_id"`
	TS      int64           `json:"ts"`
}

// Notifications answers GET /notifications. Tokens are stream positions
// (decimal): a page holds notifications below the token, so a page read
// while new ones arrive neither repeats nor skips any. Events the user may
// not see under history visibility (now) are left out of the page, but
// still move next_token past them.
func (s *Service) Notifications(ctx context.Context, req NotificationsRequest) (*Notifications, error) {
	var before int64
	if req.From != "" {
		n, err := strconv.ParseInt(req.From, 10, 64)
		if err != nil || n <= 0 {
			return nil, mautrix.MInvalidParam.WithMessage("Unknown from token")
		}
		before = n
	}
	limit := req.Limit
	switch {
	case limit < 0:
		return nil, mautrix.MInvalidParam.WithMessage("limit must be a non-negative integer")
	case limit == 0:
		limit = DefaultNotificationsLimit
	case limit > MaxNotificationsLimit:
		limit = MaxNotificationsLimit
	}
	rows, err := s.store.Notifications(ctx, NotificationsQuery{User: req.User, Before: before, Limit: limit + 1, HighlightOnly: req.Only == "highlight"})
	if err != nil {
		return nil, fmt.Errorf("listing notifications: %w", err)
	}
	out := &Notifications{Notifications: []Notification{}}
	if len(rows) > limit {
		rows = rows[:limit]
		out.NextToken = strconv.FormatInt(rows[limit-1].Pos, 10)
	}
	visible, err := s.visibleNotifications(ctx, req.User, rows)
	if err != nil {
		return nil, err
	}
	for _, n := range rows {
		if !visible[n.Event.ID] || req.Ignored[n.Event.PDU.Sender] {
			continue
		}
		ce := s.rooms.ToClient(n.Event)
		ce.RoomID = ""
		ev, err := json.Marshal(ce)
		if err != nil {
			return nil, fmt.Errorf("formatting event %s: %w", n.Event.ID, err)
		}
		out.Notifications = append(out.Notifications, Notification{
			Actions: n.Actions, Event: ev, Read: n.Read, RoomID: n.Event.RoomID, TS: n.TS,
		})
	}
	return out, nil
}

// visibleNotifications is the set of the rows' events the user may see,
// checked room by room.
func (s *Service) visibleNotifications(ctx context.Context, user id.UserID, rows []StoredNotification) (map[id.EventID]bool, error) {
	byRoom := map[id.RoomID][]*room.Event{}
	var order []id.RoomID
	for _, n := range rows {
		rid := n.Event.RoomID
		if byRoom[rid] == nil {
			order = append(order, rid)
		}
		byRoom[rid] = append(byRoom[rid], n.Event)
	}
	out := make(map[id.EventID]bool, len(rows))
	for _, rid := range order {
		vis, err := s.rooms.VisibleTo(ctx, user, rid, byRoom[rid])
		if err != nil {
			return nil, fmt.Errorf("history visibility in %s: %w", rid, err)
		}
		for _, e := range vis {
			out[e.ID] = true
		}
	}
	return out, nil
}
