package syncapi

import (
	"context"
	"fmt"
	"slices"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"
)

// SetTyping is PUT /rooms/{roomId}/typing/{userId}: user starts (for
// timeout) or stops typing in a room they are joined to.
func (s *Service) SetTyping(ctx context.Context, user, target id.UserID, roomID id.RoomID, on bool, timeout time.Duration) error {
	if user != target {
		return mautrix.MForbidden.WithMessage("You can only set your own typing state")
	}
	joined, err := s.joinedRooms(ctx, user)
	if err != nil {
		return fmt.Errorf("listing joined rooms: %w", err)
	}
	if !slices.Contains(joined, roomID) {
		return mautrix.MForbidden.WithMessage("You are not joined to this room")
	}
	if on && timeout <= 0 {
		return mautrix.MBadJSON.WithMessage("timeout is required when typing is true")
	}
	s.typing.set(roomID, user, on, timeout)
	return nil
}
