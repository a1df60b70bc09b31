package room

import (
	"context"
	"encoding/json"
	"errors"
	"strings"

	"github.com/tidwall/gjson"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/federation/pdu"
	"maunium.net/go/mautrix/id"
)

// roomOf is the room an event belongs to (v12 create events carry none).
func roomOf(p *pdu.PDU, version id.RoomVersion) id.RoomID {
	if p.RoomID != "" {
		return p.RoomID
	}
	if rid, err := p.GetRoomID(); err == nil {
		return rid
	}
	_ = version
	return ""
}

// powerLevels loads the room's power levels with its create event, so that
// v12 creators' unlimited power is counted.
func (s *Service) powerLevels(tx Tx) (*event.PowerLevelsEventContent, error) {
	keys := []pdu.StateKey{{Type: "m.room.power_levels"}, {Type: "m.room.create"}}
	ids, err := tx.CurrentStateIDs(keys)
	if err != nil {
		return nil, err
	}
	want := make([]id.EventID, 0, 2)
	for _, eid := range ids {
		want = append(want, eid)
	}
	evs, err := tx.Events(want)
	if err != nil {
		return nil, err
	}
	pl := &event.PowerLevelsEventContent{}
	if e := evs[ids[keys[0]]]; e != nil {
		if err := json.Unmarshal(e.Content, pl); err != nil {
			return nil, errBadJSON("Stored power levels are malformed")
		}
	}
	if e := evs[ids[keys[1]]]; e != nil {
		if ce, err := e.ToClientEvent(tx.RoomVersion()); err == nil {
			_ = ce.Content.ParseRaw(ce.Type)
			pl.CreateEvent = ce
		}
	}
	return pl, nil
}

// MembershipParams is one membership change.
type MembershipParams struct {
	Sender id.UserID
	RoomID id.RoomID
	Target id.UserID // the user whose membership changes (the sender for join/leave)
	Reason string
}

// Join joins the sender to a room (POST /join, /rooms/{id}/join). Joining a
// room you are in already is a no-op that returns success, as clients expect.
func (s *Service) Join(ctx context.Context, p MembershipParams) error {
	return s.changeMembership(ctx, p.Sender, p.RoomID, p.Sender, "join", p.Reason)
}

// Leave leaves a room, or rejects an invite, or retracts a knock.
func (s *Service) Leave(ctx context.Context, p MembershipParams) error {
	return s.changeMembership(ctx, p.Sender, p.RoomID, p.Sender, "leave", p.Reason)
}

// Invite invites the target.
func (s *Service) Invite(ctx context.Context, p MembershipParams) error {
	return s.changeMembership(ctx, p.Sender, p.RoomID, p.Target, "invite", p.Reason)
}

// Kick removes the target (membership leave set by someone else).
func (s *Service) Kick(ctx context.Context, p MembershipParams) error {
	if p.Target == p.Sender {
		return errForbidden("Use /leave to leave a room")
	}
	return s.changeMembership(ctx, p.Sender, p.RoomID, p.Target, "kick", p.Reason)
}

// Ban bans the target.
func (s *Service) Ban(ctx context.Context, p MembershipParams) error {
	return s.changeMembership(ctx, p.Sender, p.RoomID, p.Target, "ban", p.Reason)
}

// Unban lifts a ban (membership leave).
func (s *Service) Unban(ctx context.Context, p MembershipParams) error {
	return s.changeMembership(ctx, p.Sender, p.RoomID, p.Target, "unban", p.Reason)
}

// Knock asks to join a knockable room.
func (s *Service) Knock(ctx context.Context, p MembershipParams) error {
	return s.changeMembership(ctx, p.Sender, p.RoomID, p.Sender, "knock", p.Reason)
}

func (s *Service) changeMembership(ctx context.Context, sender id.UserID, roomID id.RoomID, target id.UserID, action, reason string) error {
	if _, _, err := target.ParseAndValidateRelaxed(); err != nil {
		return mautrix.MInvalidParam.WithMessage("Invalid user ID")
	}
	return s.inRoom(ctx, roomID, func(tx Tx) error {
		key := pdu.StateKey{Type: "m.room.member", StateKey: string(target)}
		cur, err := tx.CurrentStateIDs([]pdu.StateKey{key})
		if err != nil {
			return err
		}
		current := ""
		var currentContent json.RawMessage
		if eid, ok := cur[key]; ok {
			evs, err := tx.Events([]id.EventID{eid})
			if err != nil {
				return err
			}
			if e := evs[eid]; e != nil {
				currentContent = json.RawMessage(e.Content)
				current = gjson.GetBytes(e.Content, "membership").Str
			}
		}
		membership := action
		switch action {
		case "join":
			if current == "join" {
				return nil
			}
		case "leave":
			if current == "" || current == "leave" {
				return errForbidden("You are not in this room")
			}
			if current == "ban" {
				return errForbidden("You are banned from this room")
			}
		case "kick":
			if current != "join" && current != "invite" && current != "knock" {
				return errForbidden("The user is not in this room")
			}
			membership = "leave"
		case "unban":
			if current != "ban" {
				return mautrix.MBadState.WithMessage("The user is not banned").WithStatus(403)
			}
			membership = "leave"
		case "invite":
			if current == "join" {
				return errForbidden("The user is already in the room")
			}
			if current == "ban" {
				return errForbidden("The user is banned from the room")
			}
		case "ban":
			if current == "ban" {
				return nil
			}
		case "knock":
			if current == "join" || current == "invite" || current == "ban" {
				return errForbidden("You cannot knock on a room you are in, invited to, or banned from")
			}
		}
		var displayName, avatar string
		switch membership {
		case "join", "invite", "knock":
			displayName, avatar, err = s.profiles.MemberProfile(ctx, target)
			if err != nil {
				return err
			}
		}
		isDirect := membership == "join" && gjson.GetBytes(currentContent, "is_direct").Bool()
		_, err = s.appendEvent(tx, eventRequest{
			Sender: sender, Type: "m.room.member", StateKey: strptr(string(target)),
			Content: memberContent(membership, displayName, avatar, isDirect, reason),
		})
		return err
	})
}

// UpdateProfile sends a new member event, with the new display name and
// avatar, into every room the user is joined to.
func (s *Service) UpdateProfile(ctx context.Context, userID id.UserID) error {
	rooms, err := s.store.JoinedRooms(ctx, userID)
	if err != nil {
		return err
	}
	dn, av, err := s.profiles.MemberProfile(ctx, userID)
	if err != nil {
		return err
	}
	for _, rid := range rooms {
		err := s.inRoom(ctx, rid, func(tx Tx) error {
			_, err := s.appendEvent(tx, eventRequest{
				Sender: userID, Type: "m.room.member", StateKey: strptr(string(userID)),
				Content: memberContent("join", dn, av, false, ""),
			})
			return err
		})
		if err != nil {
			s.log.Warn("updating member event after profile change", "room_id", rid, "user_id", userID, "err", err)
		}
	}
	return nil
}

// LeaveAll leaves every room a deactivated user was in (or invited to).
func (s *Service) LeaveAll(ctx context.Context, userID id.UserID) error {
	rooms, err := s.store.JoinedRooms(ctx, userID)
	if err != nil {
		return err
	}
	for _, rid := range rooms {
		if err := s.Leave(ctx, MembershipParams{Sender: userID, RoomID: rid}); err != nil {
			s.log.Warn("leaving room on deactivation", "room_id", rid, "user_id", userID, "err", err)
		}
	}
	return nil
}

// ResolveRoom turns a room ID or a local alias into a room ID.
func (s *Service) ResolveRoom(ctx context.Context, idOrAlias string) (id.RoomID, error) {
	switch {
	case strings.HasPrefix(idOrAlias, "!"):
		return id.RoomID(idOrAlias), nil
	case strings.HasPrefix(idOrAlias, "#"):
		rid, err := s.store.AliasRoom(ctx, id.RoomAlias(idOrAlias))
		if errors.Is(err, ErrNotFound) {
			return "", errNotFound("Unknown room alias")
		}
		return rid, err
	}
	return "", mautrix.MInvalidParam.WithMessage("Not a room ID or alias")
}
