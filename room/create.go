package room

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"encoding/json/jsontext"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/federation/pdu"
	"maunium.net/go/mautrix/id"
)

// StateEvent is an initial_state entry.
type StateEvent struct {
	Type     string          `json:"type"`
	StateKey string          `json:"state_key"`
	Content  json.RawMessage `json:"content"`
}

// CreateParams is POST /createRoom.
type CreateParams struct {
	Creator                   id.UserID
	Preset                    string // private_chat, trusted_private_chat, public_chat
	Visibility                string // public or private
	RoomAliasName             string
	Name                      string
	Topic                     *string
	Invite                    []id.UserID
	IsDirect                  bool
	InitialState              []StateEvent
	CreationContent           map[string]json.RawMessage
	PowerLevelContentOverride map[string]json.RawMessage
	RoomVersion               id.RoomVersion
}

func strptr(s string) *string { return &s }

func mustJSON(v any) json.RawMessage {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err) // only called with values that always marshal
	}
	return b
}

// Create makes a room the way the spec's createRoom describes, in one
// transaction: create, the creator's join, power levels, alias, the preset's
// rules, initial_state, name, topic, then invites.
func (s *Service) Create(ctx context.Context, p CreateParams) (id.RoomID, error) {
	version := p.RoomVersion
	if version == "" {
		version = s.cfg.DefaultVersion
	}
	if !IsSupportedVersion(version) {
		return "", mautrix.MUnsupportedRoomVersion.WithMessage("Room version " + string(version) + " is not supported here (10, 11, 12 are)")
	}
	if p.Visibility != "" && p.Visibility != "public" && p.Visibility != "private" {
		return "", mautrix.MInvalidParam.WithMessage("visibility must be public or private")
	}
	preset := p.Preset
	if preset == "" {
		preset = "private_chat"
		if p.Visibility == "public" {
			preset = "public_chat"
		}
	}
	if preset != "private_chat" && preset != "trusted_private_chat" && preset != "public_chat" {
		return "", mautrix.MInvalidParam.WithMessage("Unknown preset " + preset)
	}
	for _, inv := range p.Invite {
		if _, _, err := inv.ParseAndValidateRelaxed(); err != nil {
			return "", mautrix.MInvalidParam.WithMessage("Invalid user ID in invite: " + string(inv))
		}
	}
	var alias id.RoomAlias
	if p.RoomAliasName != "" {
		if strings.ContainsAny(p.RoomAliasName, ":# \x00") {
			return "", mautrix.MInvalidParam.WithMessage("room_alias_name must be the localpart only")
		}
		alias = id.NewRoomAlias(p.RoomAliasName, s.cfg.Signer.ServerName)
		if len(alias) > 255 {
			return "", mautrix.MInvalidParam.WithMessage("Alias is too long")
		}
	}

	createContent := map[string]any{}
	for k, v := range p.CreationContent {
		createContent[k] = v
	}
	createContent["room_version"] = version
	if version.CreatorInContent() {
		createContent["creator"] = p.Creator
	} else {
		delete(createContent, "creator")
	}
	if preset == "trusted_private_chat" && version.PrivilegedRoomCreators() && len(p.Invite) > 0 {
		// v12: the way to give invitees the creator's power is to make them
		// creators, added to any creation_content gave (deduplicated, as
		// createRoom's creation_content asks).
		var creators []string
		if raw, ok := p.CreationContent["additional_creators"]; ok {
			if err := json.Unmarshal(raw, &creators); err != nil {
				return "", mautrix.MBadJSON.WithMessage("creation_content.additional_creators must be an array of user IDs")
			}
		}
		for _, inv := range p.Invite {
			if !slices.Contains(creators, string(inv)) {
				creators = append(creators, string(inv))
			}
		}
		createContent["additional_creators"] = creators
	}

	for attempt := 0; ; attempt++ {
		roomID, err := s.create(ctx, p, version, preset, alias, createContent)
		// Two identical v12 create events in one millisecond would share a
		// room ID; the second simply tries again a moment later.
		if errors.Is(err, ErrRoomExists) && attempt < 5 {
			time.Sleep(time.Millisecond)
			continue
		}
		return roomID, err
	}
}

// ErrRoomExists is returned by Store.CreateRoom for a room ID in use.
var ErrRoomExists = errors.New("room exists")

func (s *Service) create(ctx context.Context, p CreateParams, version id.RoomVersion, preset string, alias id.RoomAlias, createContent map[string]any) (id.RoomID, error) {
	roomID := id.RoomID("")
	createTS := s.now().UnixMilli()
	if !version.RoomIDIsCreateEventID() {
		roomID = id.RoomID(fmt.Sprintf("!%s:%s", randomID(18), s.cfg.Signer.ServerName))
	} else {
		// The room ID is the create event's ID: build it first, outside
		// the room (which does not exist yet).
		rid, err := s.v12RoomID(p.Creator, mustJSON(createContent), createTS)
		if err != nil {
			return "", err
		}
		roomID = rid
	}

	err := s.inNewRoom(ctx, roomID, version, func(tx Tx) error {
		steps := []eventRequest{
			{Type: "m.room.create", StateKey: strptr(""), Content: mustJSON(createContent), TS: createTS},
		}
		displayName, avatar, err := s.profiles.MemberProfile(ctx, p.Creator)
		if err != nil {
			return err
		}
		steps = append(steps, eventRequest{Type: "m.room.member", StateKey: strptr(string(p.Creator)), Content: memberContent("join", displayName, avatar, false, "")})
		pl, err := powerLevels(version, p, preset)
		if err != nil {
			return err
		}
		steps = append(steps, eventRequest{Type: "m.room.power_levels", StateKey: strptr(""), Content: pl})
		if alias != "" {
			steps = append(steps, eventRequest{Type: "m.room.canonical_alias", StateKey: strptr(""), Content: mustJSON(map[string]any{"alias": alias})})
		}
		joinRule, guest := "invite", "can_join"
		if preset == "public_chat" {
			joinRule, guest = "public", "forbidden"
		}
		steps = append(steps,
			eventRequest{Type: "m.room.join_rules", StateKey: strptr(""), Content: mustJSON(map[string]string{"join_rule": joinRule})},
			eventRequest{Type: "m.room.history_visibility", StateKey: strptr(""), Content: mustJSON(map[string]string{"history_visibility": "shared"})},
			eventRequest{Type: "m.room.guest_access", StateKey: strptr(""), Content: mustJSON(map[string]string{"guest_access": guest})},
		)
		for _, st := range p.InitialState {
			if st.Type == "m.room.create" || st.Type == "m.room.member" || st.Type == "m.room.power_levels" {
				return mautrix.MInvalidParam.WithMessage("initial_state may not contain " + st.Type)
			}
			steps = append(steps, eventRequest{Type: st.Type, StateKey: strptr(st.StateKey), Content: st.Content})
		}
		if p.Name != "" {
			steps = append(steps, eventRequest{Type: "m.room.name", StateKey: strptr(""), Content: mustJSON(map[string]string{"name": p.Name})})
		}
		if p.Topic != nil {
			steps = append(steps, eventRequest{Type: "m.room.topic", StateKey: strptr(""), Content: mustJSON(map[string]string{"topic": *p.Topic})})
		}
		for _, inv := range p.Invite {
			dn, av, err := s.profiles.MemberProfile(ctx, inv)
			if err != nil {
				return err
			}
			steps = append(steps, eventRequest{Type: "m.room.member", StateKey: strptr(string(inv)), Content: memberContent("invite", dn, av, p.IsDirect, "")})
		}
		for _, st := range steps {
			st.Sender = p.Creator
			if _, err := s.appendEvent(tx, st); err != nil {
				return fmt.Errorf("creating room (%s): %w", st.Type, err)
			}
		}
		if alias != "" {
			if err := tx.(aliasTx).CreateAlias(alias, p.Creator); err != nil {
				return err
			}
		}
		if p.Visibility == "public" {
			return tx.(aliasTx).SetPublished(true)
		}
		return nil
	})
	if err != nil {
		return "", err
	}
	s.log.Info("room created", "room_id", roomID, "version", version, "creator", p.Creator, "preset", preset)
	return roomID, nil
}

// aliasTx are the room directory writes available inside a room transaction.
type aliasTx interface {
	// CreateAlias fails with M_ROOM_IN_USE for a taken alias.
	CreateAlias(alias id.RoomAlias, creator id.UserID) error
	SetPublished(bool) error
}

// v12RoomID computes the room ID of a v12 room from its create event. The
// create event appended inside the transaction is built from the same
// sender, content and timestamp, so it gets this very ID; appendEvent's
// authorisation (rule 2: the room ID is the create event's ID) checks it.
func (s *Service) v12RoomID(creator id.UserID, content json.RawMessage, ts int64) (id.RoomID, error) {
	p := &pdu.PDU{
		Sender: creator, Type: "m.room.create", StateKey: strptr(""),
		Content: jsontext.Value(content), OriginServerTS: ts,
		PrevEvents: []id.EventID{}, AuthEvents: []id.EventID{}, Depth: 1,
	}
	if err := p.Sign(id.RoomV12, s.cfg.Signer.ServerName, s.cfg.Signer.KeyID, s.cfg.Signer.Key); err != nil {
		return "", err
	}
	return p.GetRoomID()
}

func randomID(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return strings.NewReplacer("-", "", "_", "").Replace(base64.RawURLEncoding.EncodeToString(b))
}

// memberContent is an m.room.member content.
func memberContent(membership, displayName, avatar string, isDirect bool, reason string) json.RawMessage {
	c := map[string]any{"membership": membership}
	if displayName != "" {
		c["displayname"] = displayName
	}
	if avatar != "" {
		c["avatar_url"] = avatar
	}
	if isDirect {
		c["is_direct"] = true
	}
	if reason != "" {
		c["reason"] = reason
	}
	return mustJSON(c)
}

// powerLevels is the initial m.room.power_levels content: the spec's
// defaults, the creator's (and trusted invitees') power, then the client's
// override on top.
func powerLevels(version id.RoomVersion, p CreateParams, preset string) (json.RawMessage, error) {
	users := map[string]any{}
	if !version.PrivilegedRoomCreators() {
		users[string(p.Creator)] = 100
		if preset == "trusted_private_chat" {
			for _, inv := range p.Invite {
				users[string(inv)] = 100
			}
		}
	}
	pl := map[string]any{
		"users":          users,
		"users_default":  0,
		"events_default": 0,
		"state_default":  50,
		"ban":            50,
		"kick":           50,
		"redact":         50,
		"invite":         0,
		"events": map[string]int{
			"m.room.name":               50,
			"m.room.avatar":             50,
			"m.room.topic":              50,
			"m.room.canonical_alias":    50,
			"m.room.power_levels":       100,
			"m.room.history_visibility": 100,
			"m.room.tombstone":          100,
			"m.room.server_acl":         100,
			"m.room.encryption":         100,
		},
		"notifications": map[string]int{"room": 50},
	}
	if preset == "public_chat" {
		pl["invite"] = 50
	}
	keys := slices.Sorted(maps.Keys(p.PowerLevelContentOverride))
	for _, k := range keys {
		pl[k] = p.PowerLevelContentOverride[k]
	}
	if version.PrivilegedRoomCreators() {
		// v12 creators have unlimited power and the auth rules refuse them
		// in users; clients written for older versions still list them.
		if raw, ok := pl["users"].(json.RawMessage); ok {
			var users map[string]json.RawMessage
			if err := json.Unmarshal(raw, &users); err != nil {
				return nil, mautrix.MBadJSON.WithMessage("power_level_content_override.users must be an object")
			}
			delete(users, string(p.Creator))
			if preset == "trusted_private_chat" {
				for _, inv := range p.Invite {
					delete(users, string(inv))
				}
			}
			pl["users"] = mustJSON(users)
		}
	}
	return mustJSON(pl), nil
}
