package room

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/tidwall/gjson"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// transferredState are the state types copied into an upgraded room (the
// spec's recommendation; power levels are handled separately).
var transferredState = []string{
	"m.room.server_acl", "m.room.encryption", "m.room.name", "m.room.avatar", "m.room.topic",
	"m.room.guest_access", "m.room.history_visibility", "m.room.join_rules",
}

// Upgrade is POST /rooms/{roomId}/upgrade: a new room in newVersion with
// the old room as predecessor, the transferable state, the local aliases,
// and a tombstone plus restricted power levels left in the old room.
func (s *Service) Upgrade(ctx context.Context, user id.UserID, oldRoom id.RoomID, newVersion id.RoomVersion, additionalCreators []id.UserID) (id.RoomID, error) {
	if !IsSupportedVersion(newVersion) {
		return "", mautrix.MUnsupportedRoomVersion.WithMessage("Room version " + string(newVersion) + " is not supported here")
	}
	var lastEvent id.EventID
	var state []*Event
	err := s.inRoom(ctx, oldRoom, func(tx Tx) error {
		pl, err := s.powerLevels(tx)
		if err != nil {
			return err
		}
		if pl.GetUserLevel(user) < pl.GetEventLevel(event.StateTombstone) {
			return errForbidden("You need the power to send m.room.tombstone to upgrade this room")
		}
		prev, _, err := tx.Head()
		if err != nil || len(prev) == 0 {
			return fmt.Errorf("reading room head: %w", err)
		}
		lastEvent = prev[0]
		return nil
	})
	if err != nil {
		return "", err
	}
	if state, err = s.store.CurrentState(ctx, oldRoom); err != nil {
		return "", err
	}
	byType := map[string]*Event{}
	for _, e := range state {
		if e.PDU.StateKey != nil && *e.PDU.StateKey == "" {
			byType[e.PDU.Type] = e
		}
	}
	predecessor := map[string]any{"room_id": oldRoom}
	if !newVersion.RoomIDIsCreateEventID() {
		predecessor["event_id"] = lastEvent
	}
	creation := map[string]json.RawMessage{"predecessor": mustJSON(predecessor)}
	if c := byType["m.room.create"]; c != nil {
		if t := gjson.GetBytes(c.PDU.Content, "type"); t.Exists() {
			creation["type"] = json.RawMessage(t.Raw)
		}
	}
	if len(additionalCreators) > 0 && newVersion.PrivilegedRoomCreators() {
		creation["additional_creators"] = mustJSON(additionalCreators)
	}
	var initial []StateEvent
	for _, typ := range transferredState {
		if e := byType[typ]; e != nil {
			initial = append(initial, StateEvent{Type: typ, Content: json.RawMessage(e.PDU.Content)})
		}
	}
	plOverride, err := upgradedPowerLevels(byType["m.room.power_levels"], user, additionalCreators, newVersion)
	if err != nil {
		return "", err
	}
	newRoom, err := s.Create(ctx, CreateParams{
		Creator: user, Preset: "private_chat", RoomVersion: newVersion,
		CreationContent: creation, PowerLevelContentOverride: plOverride, InitialState: initial,
	})
	if err != nil {
		return "", err
	}
	mover, ok := s.store.(interface {
		MoveAliases(ctx context.Context, from, to id.RoomID) error
	})
	if !ok {
		return "", errors.New("store cannot move aliases")
	}
	if err := mover.MoveAliases(ctx, oldRoom, newRoom); err != nil {
		return "", fmt.Errorf("moving aliases: %w", err)
	}
	if ca := byType["m.room.canonical_alias"]; ca != nil {
		if _, err := s.SetState(ctx, user, newRoom, "m.room.canonical_alias", "", json.RawMessage(ca.PDU.Content)); err != nil {
			s.log.Warn("copying canonical alias to upgraded room", "room_id", newRoom, "err", err)
		}
	}
	tomb := mustJSON(map[string]any{"body": "This room has been replaced", "replacement_room": newRoom})
	if _, err := s.SetState(ctx, user, oldRoom, "m.room.tombstone", "", tomb); err != nil {
		return "", fmt.Errorf("sending tombstone: %w", err)
	}
	if err := s.restrictOldRoom(ctx, user, oldRoom); err != nil {
		s.log.Warn("restricting the old room's power levels", "room_id", oldRoom, "err", err)
	}
	s.log.Info("room upgraded", "old_room", oldRoom, "new_room", newRoom, "version", newVersion)
	return newRoom, nil
}

// upgradedPowerLevels copies the old power levels, leaving creators of a
// v12+ new room out of users (they have unlimited power there and the auth
// rules forbid listing them) and making sure the upgrader keeps their power
// in older versions.
func upgradedPowerLevels(old *Event, user id.UserID, extraCreators []id.UserID, version id.RoomVersion) (map[string]json.RawMessage, error) {
	out := map[string]json.RawMessage{}
	if old == nil {
		return out, nil
	}
	if err := json.Unmarshal(old.PDU.Content, &out); err != nil {
		return nil, errBadJSON("The old room's power levels are malformed")
	}
	users := map[string]json.RawMessage{}
	if raw, ok := out["users"]; ok {
		_ = json.Unmarshal(raw, &users)
	}
	if version.PrivilegedRoomCreators() {
		delete(users, string(user))
		for _, c := range extraCreators {
			delete(users, string(c))
		}
	} else if _, listed := users[string(user)]; !listed {
		users[string(user)] = json.RawMessage("100") // a v12 creator had unlimited power
	}
	out["users"] = mustJSON(users)
	return out, nil
}

// restrictOldRoom raises events_default and invite so the old room is not used.
func (s *Service) restrictOldRoom(ctx context.Context, user id.UserID, roomID id.RoomID) error {
	st, err := s.store.CurrentState(ctx, roomID)
	if err != nil {
		return err
	}
	for _, e := range st {
		if e.PDU.Type != "m.room.power_levels" {
			continue
		}
		var pl map[string]any
		if err := json.Unmarshal(e.PDU.Content, &pl); err != nil {
			return err
		}
		level := max(50, int(gjson.GetBytes(e.PDU.Content, "users_default").Int())+1)
		pl["events_default"], pl["invite"] = level, level
		_, err := s.SetState(ctx, user, roomID, "m.room.power_levels", "", mustJSON(pl))
		return err
	}
	return nil
}
