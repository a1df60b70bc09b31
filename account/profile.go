package account

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"

	"maunium.net/go/mautrix/id"
)

// Profile returns a local user's profile; M_NOT_FOUND for unknown users.
func (s *Service) Profile(ctx context.Context, userID id.UserID) (*Profile, error) {
	if !s.isLocal(userID) {
		return nil, errNotFound("Profile lookup over federation is not available yet")
	}
	p, err := s.store.Profile(ctx, userID)
	if errors.Is(err, ErrNotFound) {
		return nil, errNotFound("Unknown user")
	}
	if err != nil {
		return nil, fmt.Errorf("loading profile: %w", err)
	}
	return p, nil
}

// maxProfileField bounds display names and avatar URLs.
const maxProfileField = 256

// SetDisplayName changes the requester's own display name.
func (s *Service) SetDisplayName(ctx context.Context, r *Requester, target id.UserID, name string) error {
	if r.UserID != target {
		return errForbidden("You can only change your own display name")
	}
	if utf8.RuneCountInString(name) > maxProfileField {
		return errInvalidParam(fmt.Sprintf("displayname is longer than %d characters", maxProfileField))
	}
	if err := s.store.SetDisplayName(ctx, target, name); err != nil {
		return err
	}
	return s.profileChanged(ctx, target)
}

// profileChanged fans the new profile out as member events. A failure there
// does not undo the profile change; it is logged by the room domain.
func (s *Service) profileChanged(ctx context.Context, userID id.UserID) error {
	if s.hooks.ProfileChanged != nil {
		return s.hooks.ProfileChanged(ctx, userID)
	}
	return nil
}

// SetAvatarURL changes the requester's own avatar; it must be an mxc:// URI
// (or empty, to remove it).
func (s *Service) SetAvatarURL(ctx context.Context, r *Requester, target id.UserID, url string) error {
	if r.UserID != target {
		return errForbidden("You can only change your own avatar")
	}
	if url != "" {
		if _, err := id.ParseContentURI(url); err != nil || !strings.HasPrefix(url, "mxc://") || len(url) > maxProfileField {
			return errInvalidParam("avatar_url must be an mxc:// URI")
		}
	}
	if err := s.store.SetAvatarURL(ctx, target, url); err != nil {
		return err
	}
	return s.profileChanged(ctx, target)
}

// maxAccountData bounds one account data object.
const maxAccountData = 64 * 1024

// reservedAccountData are types the server manages itself (spec: the client
// must use their dedicated APIs).
var reservedAccountData = map[string]string{
	"m.fully_read": "Use /read_markers to set m.fully_read",
	"m.push_rules": "Use the /pushrules API to change push rules",
}

// SetAccountData stores account data (global when roomID is ""); only your own.
func (s *Service) SetAccountData(ctx context.Context, r *Requester, target id.UserID, roomID id.RoomID, typ string, content json.RawMessage) error {
	if r.UserID != target {
		return errForbidden("You can only set your own account data")
	}
	if msg, reserved := reservedAccountData[typ]; reserved {
		return errBadJSON(msg)
	}
	if typ == "" || len(typ) > 255 {
		return errInvalidParam("Invalid account data type")
	}
	if roomID != "" && !validRoomID(roomID) {
		return errInvalidParam("Invalid room ID")
	}
	if len(content) > maxAccountData {
		return errTooLarge("Account data is larger than 64 KiB")
	}
	if _, err := s.store.SetAccountData(ctx, target, roomID, typ, content); err != nil {
		return fmt.Errorf("storing account data: %w", err)
	}
	return nil
}

// AccountData reads one account data object; only your own.
func (s *Service) AccountData(ctx context.Context, r *Requester, target id.UserID, roomID id.RoomID, typ string) (json.RawMessage, error) {
	if r.UserID != target {
		return nil, errForbidden("You can only read your own account data")
	}
	if roomID != "" && !validRoomID(roomID) {
		return nil, errInvalidParam("Invalid room ID")
	}
	c, err := s.store.AccountData(ctx, target, roomID, typ)
	if errors.Is(err, ErrNotFound) {
		return nil, errNotFound("Account data not found")
	}
	if err != nil {
		return nil, fmt.Errorf("loading account data: %w", err)
	}
	return c, nil
}

func validRoomID(r id.RoomID) bool {
	return strings.HasPrefix(string(r), "!") && len(r) <= 255 && len(r) > 1
}

// CreateFilter validates and stores a filter; only for yourself.
func (s *Service) CreateFilter(ctx context.Context, r *Requester, target id.UserID, raw []byte) (string, error) {
	if r.UserID != target {
		return "", errForbidden("You can only create filters for yourself")
	}
	f, err := ValidateFilter(raw)
	if err != nil {
		return "", err
	}
	fid, err := s.store.CreateFilter(ctx, target, f)
	if err != nil {
		return "", fmt.Errorf("storing filter: %w", err)
	}
	return fid, nil
}

// Filter returns a stored filter; only your own.
func (s *Service) Filter(ctx context.Context, r *Requester, target id.UserID, filterID string) (json.RawMessage, error) {
	if r.UserID != target {
		return nil, errForbidden("You can only read your own filters")
	}
	f, err := s.store.Filter(ctx, target, filterID)
	if errors.Is(err, ErrNotFound) {
		return nil, errNotFound("Unknown filter")
	}
	if err != nil {
		return nil, fmt.Errorf("loading filter: %w", err)
	}
	return f, nil
}

// SearchDirectory is the user directory search. By default it finds users
// who share a room with the searcher or are in public rooms; with
// SearchAllUsers, every local user. Deactivated users never appear.
func (s *Service) SearchDirectory(ctx context.Context, r *Requester, term string, limit int) ([]DirectoryEntry, bool, error) {
	if limit <= 0 {
		limit = 10
	}
	if limit > 100 {
		limit = 100
	}
	term = strings.TrimSpace(term)
	if term == "" {
		return nil, false, nil
	}
	res, limited, err := s.store.SearchUsers(ctx, r.UserID, term, s.cfg.SearchAllUsers, limit)
	if err != nil {
		return nil, false, fmt.Errorf("searching users: %w", err)
	}
	return res, limited, nil
}
