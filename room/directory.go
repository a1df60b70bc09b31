package room

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/tidwall/gjson"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/federation/pdu"
	"maunium.net/go/mautrix/id"
)

// The room directory: local aliases (#alias:server -> room), the published
// room list, and content reports. Aliases live in their own table, not in
// room state; m.room.canonical_alias only advertises them, and
// checkCanonicalAlias refuses to advertise one that does not point here.

// DirectoryStore is the persistence of the directory outside a room
// transaction. storage.Rooms implements it next to Store.
type DirectoryStore interface {
	// RoomAliases lists the local aliases of a room, sorted.
	RoomAliases(ctx context.Context, roomID id.RoomID) ([]id.RoomAlias, error)
	// Published reports whether a room is in the published room directory
	// (ErrNotFound for an unknown room).
	Published(ctx context.Context, roomID id.RoomID) (bool, error)
	// PublicRooms lists published rooms, see PublicRoomsQuery.
	PublicRooms(ctx context.Context, q PublicRoomsQuery) (rooms []PublicRoom, total int, err error)
	// InsertReport stores a content report for the operator.
	InsertReport(ctx context.Context, r Report) error
}

// DirectoryTx are the directory reads and writes done under a room's lock,
// next to aliasTx's CreateAlias and SetPublished.
type DirectoryTx interface {
	// Alias returns the room and the creator of an alias (ErrNotFound).
	Alias(alias id.RoomAlias) (id.RoomID, id.UserID, error)
	// DeleteAlias removes an alias.
	DeleteAlias(alias id.RoomAlias) error
}

// directoryTx is the whole set of directory operations a room Tx offers.
type directoryTx interface {
	aliasTx
	DirectoryTx
}

func (s *Service) directoryStore() (DirectoryStore, error) {
	ds, ok := s.store.(DirectoryStore)
	if !ok {
		return nil, errors.New("room store does not implement the directory")
	}
	return ds, nil
}

func asDirectoryTx(tx Tx) (directoryTx, error) {
	dt, ok := tx.(directoryTx)
	if !ok {
		return nil, errors.New("room transaction does not implement the directory")
	}
	return dt, nil
}

func errInvalidParam(msg string) error { return mautrix.MInvalidParam.WithMessage(msg) }

// maxAliasBytes is the spec's limit on room aliases (as on all identifiers).
const maxAliasBytes = 255

// parseAlias checks the grammar #localpart:server_name. The localpart may
// hold any character but ':' and NUL; Weft also refuses whitespace and
// control characters, which only serve to spoof.
func parseAlias(s string) (localpart, server string, err error) {
	rest, ok := strings.CutPrefix(s, "#")
	if !ok {
		return "", "", errInvalidParam("A room alias starts with #")
	}
	localpart, server, ok = strings.Cut(rest, ":")
	switch {
	case !ok || localpart == "" || server == "":
		return "", "", errInvalidParam("A room alias is #localpart:server")
	case len(s) > maxAliasBytes:
		return "", "", errInvalidParam(fmt.Sprintf("A room alias may be at most %d bytes long", maxAliasBytes))
	case !utf8.ValidString(s):
		return "", "", errInvalidParam("A room alias must be valid UTF-8")
	case strings.IndexFunc(localpart, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }) >= 0:
		return "", "", errInvalidParam("A room alias may not contain whitespace or control characters")
	case strings.IndexFunc(server, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) || r == '/' }) >= 0:
		return "", "", errInvalidParam("The server name of the room alias is malformed")
	}
	return localpart, server, nil
}

// localAlias parses an alias that must belong to this server.
func (s *Service) localAlias(a string) (id.RoomAlias, error) {
	_, server, err := parseAlias(a)
	if err != nil {
		return "", err
	}
	if server != s.cfg.Signer.ServerName {
		return "", errInvalidParam("Room aliases can only be created here for " + s.cfg.Signer.ServerName)
	}
	return id.RoomAlias(a), nil
}

// txMembership is a user's current membership in the locked room ("" if none).
func txMembership(tx Tx, user id.UserID) (string, error) {
	key := pdu.StateKey{Type: "m.room.member", StateKey: string(user)}
	cur, err := tx.CurrentStateIDs([]pdu.StateKey{key})
	if err != nil {
		return "", err
	}
	eid, ok := cur[key]
	if !ok {
		return "", nil
	}
	evs, err := tx.Events([]id.EventID{eid})
	if err != nil {
		return "", err
	}
	if e := evs[eid]; e != nil {
		return gjson.GetBytes(e.Content, "membership").Str, nil
	}
	return "", nil
}

// canManageDirectory is "joined, with the power to send
// m.room.canonical_alias": the right to drop other people's aliases and to
// publish the room.
func (s *Service) canManageDirectory(tx Tx, user id.UserID) (bool, error) {
	m, err := txMembership(tx, user)
	if err != nil || m != "join" {
		return false, err
	}
	pl, err := s.powerLevels(tx)
	if err != nil {
		return false, err
	}
	return pl.GetUserLevel(user) >= pl.GetEventLevel(event.StateCanonicalAlias), nil
}

// CreateAlias is PUT /directory/room/{roomAlias}: any member joined to the
// room may give it a local alias. A taken alias is 409 M_UNKNOWN, as the
// spec says (createRoom answers M_ROOM_IN_USE instead).
func (s *Service) CreateAlias(ctx context.Context, creator id.UserID, alias string, roomID id.RoomID) error {
	a, err := s.localAlias(alias)
	if err != nil {
		return err
	}
	if !strings.HasPrefix(string(roomID), "!") || len(roomID) > 255 {
		return errInvalidParam("room_id is not a room ID")
	}
	errTaken := mautrix.MUnknown.WithMessage("Room alias " + alias + " already exists").WithStatus(409)
	return s.inRoom(ctx, roomID, func(tx Tx) error {
		dt, err := asDirectoryTx(tx)
		if err != nil {
			return err
		}
		if m, err := txMembership(tx, creator); err != nil {
			return err
		} else if m != "join" {
			return errForbidden("You must be joined to the room to give it an alias")
		}
		if _, _, err := dt.Alias(a); err == nil {
			return errTaken
		} else if !errors.Is(err, ErrNotFound) {
			return err
		}
		err = dt.CreateAlias(a, creator)
		// A concurrent PUT for the same alias in another room took it
		// between the check and the insert.
		var re mautrix.RespError
		if errors.As(err, &re) && re.ErrCode == mautrix.MRoomInUse.ErrCode {
			return errTaken
		}
		if err == nil {
			s.log.Info("room alias created", "alias", a, "room_id", roomID, "creator", creator)
		}
		return err
	})
}

// ResolveAlias is GET /directory/room/{roomAlias}. Aliases of other servers
// need federation, which Weft does not have yet: they are not found.
func (s *Service) ResolveAlias(ctx context.Context, alias string) (id.RoomID, []string, error) {
	_, server, err := parseAlias(alias)
	if err != nil {
		return "", nil, err
	}
	if server != s.cfg.Signer.ServerName {
		return "", nil, errNotFound("Room alias " + alias + " not found (aliases of other servers cannot be resolved yet)")
	}
	rid, err := s.store.AliasRoom(ctx, id.RoomAlias(alias))
	if errors.Is(err, ErrNotFound) {
		return "", nil, errNotFound("Room alias " + alias + " not found")
	}
	if err != nil {
		return "", nil, err
	}
	return rid, []string{s.cfg.Signer.ServerName}, nil
}

// DeleteAlias is DELETE /directory/room/{roomAlias}: allowed to the alias's
// creator, to members with the power to send m.room.canonical_alias, and to
// server admins. If the room's m.room.canonical_alias advertises the alias,
// an update without it is sent as the requester; when they lack the power
// for that, the alias is deleted all the same, as the spec recommends.
func (s *Service) DeleteAlias(ctx context.Context, user id.UserID, isAdmin bool, alias string) error {
	a, err := s.localAlias(alias)
	if err != nil {
		if _, _, perr := parseAlias(alias); perr == nil {
			// Well formed but another server's: it is not in our directory.
			return errNotFound("Room alias " + alias + " not found")
		}
		return err
	}
	roomID, err := s.store.AliasRoom(ctx, a)
	if errors.Is(err, ErrNotFound) {
		return errNotFound("Room alias " + alias + " not found")
	}
	if err != nil {
		return err
	}
	return s.inRoom(ctx, roomID, func(tx Tx) error {
		dt, err := asDirectoryTx(tx)
		if err != nil {
			return err
		}
		// Re-read under the room lock: the alias may have been deleted
		// (or deleted and re-created elsewhere) since the lookup.
		rid, creator, err := dt.Alias(a)
		if errors.Is(err, ErrNotFound) || (err == nil && rid != roomID) {
			return errNotFound("Room alias " + alias + " not found")
		}
		if err != nil {
			return err
		}
		if creator != user && !isAdmin {
			ok, err := s.canManageDirectory(tx, user)
			if err != nil {
				return err
			}
			if !ok {
				return errForbidden("Only the alias's creator, a room moderator with the power to change m.room.canonical_alias, or a server admin may delete it")
			}
		}
		if err := dt.DeleteAlias(a); err != nil {
			return err
		}
		s.log.Info("room alias deleted", "alias", a, "room_id", roomID, "by", user)
		return s.dropCanonicalAlias(tx, user, a)
	})
}

// dropCanonicalAlias removes alias from the room's m.room.canonical_alias,
// if it is there, by sending an updated event as user. An auth failure
// leaves the event as it is (nothing was written); other errors abort.
func (s *Service) dropCanonicalAlias(tx Tx, user id.UserID, alias id.RoomAlias) error {
	key := pdu.StateKey{Type: "m.room.canonical_alias"}
	cur, err := tx.CurrentStateIDs([]pdu.StateKey{key})
	if err != nil {
		return err
	}
	eid, ok := cur[key]
	if !ok {
		return nil
	}
	evs, err := tx.Events([]id.EventID{eid})
	if err != nil || evs[eid] == nil {
		return err
	}
	var content map[string]json.RawMessage
	if json.Unmarshal(evs[eid].Content, &content) != nil {
		return nil
	}
	changed := false
	var main string
	if json.Unmarshal(content["alias"], &main) == nil && main == string(alias) {
		delete(content, "alias")
		changed = true
	}
	var alts []string
	if json.Unmarshal(content["alt_aliases"], &alts) == nil && slices.Contains(alts, string(alias)) {
		alts = slices.DeleteFunc(alts, func(x string) bool { return x == string(alias) })
		content["alt_aliases"] = mustJSON(alts)
		changed = true
	}
	if !changed {
		return nil
	}
	_, err = s.appendEvent(tx, eventRequest{Sender: user, Type: "m.room.canonical_alias", StateKey: strptr(""), Content: mustJSON(content)})
	var re mautrix.RespError
	if errors.As(err, &re) && re.ErrCode == mautrix.MForbidden.ErrCode {
		s.log.Info("alias deleted but m.room.canonical_alias still lists it: the deleter may not change it",
			"alias", alias, "room_id", tx.RoomID(), "by", user)
		return nil
	}
	return err
}

// LocalAliases is GET /rooms/{roomId}/aliases: for members joined to the
// room, anyone if it is world-readable, and server admins.
func (s *Service) LocalAliases(ctx context.Context, user id.UserID, isAdmin bool, roomID id.RoomID) ([]id.RoomAlias, error) {
	ds, err := s.directoryStore()
	if err != nil {
		return nil, err
	}
	if !isAdmin {
		if _, err := s.store.RoomVersion(ctx, roomID); errors.Is(err, ErrNotFound) {
			return nil, errForbidden("You are not in this room")
		} else if err != nil {
			return nil, err
		}
		m, _, err := s.store.Membership(ctx, roomID, user)
		if err != nil {
			return nil, err
		}
		if m != "join" {
			hv, err := s.currentHistoryVisibility(ctx, roomID)
			if err != nil {
				return nil, err
			}
			if hv != "world_readable" {
				return nil, errForbidden("You are not in this room")
			}
		}
	}
	aliases, err := ds.RoomAliases(ctx, roomID)
	if aliases == nil {
		aliases = []id.RoomAlias{}
	}
	return aliases, err
}

// Directory visibilities.
const (
	VisibilityPublic  = "public"
	VisibilityPrivate = "private"
)

// DirectoryVisibility is GET /directory/list/room/{roomId}.
func (s *Service) DirectoryVisibility(ctx context.Context, roomID id.RoomID) (string, error) {
	ds, err := s.directoryStore()
	if err != nil {
		return "", err
	}
	pub, err := ds.Published(ctx, roomID)
	if errors.Is(err, ErrNotFound) {
		return "", errNotFound("Room not found")
	}
	if err != nil {
		return "", err
	}
	if pub {
		return VisibilityPublic, nil
	}
	return VisibilityPrivate, nil
}

// SetDirectoryVisibility is PUT /directory/list/room/{roomId}: publishing
// (or hiding) a room is for members with the power to send
// m.room.canonical_alias, and server admins. visibility "" is public, the
// spec's default.
func (s *Service) SetDirectoryVisibility(ctx context.Context, user id.UserID, isAdmin bool, roomID id.RoomID, visibility string) error {
	if visibility == "" {
		visibility = VisibilityPublic
	}
	if visibility != VisibilityPublic && visibility != VisibilityPrivate {
		return errInvalidParam("visibility must be public or private")
	}
	return s.inRoom(ctx, roomID, func(tx Tx) error {
		dt, err := asDirectoryTx(tx)
		if err != nil {
			return err
		}
		if !isAdmin {
			ok, err := s.canManageDirectory(tx, user)
			if err != nil {
				return err
			}
			if !ok {
				return errForbidden("Only room members with the power to change m.room.canonical_alias, or server admins, may publish the room")
			}
		}
		if err := dt.SetPublished(visibility == VisibilityPublic); err != nil {
			return err
		}
		s.log.Info("room directory visibility set", "room_id", roomID, "visibility", visibility, "by", user)
		return nil
	})
}

// PublicRoom is one entry of /publicRooms. (mautrix.PublicRoomInfo always
// sends room_type, as "" for rooms without a type; the spec omits it.)
type PublicRoom struct {
	RoomID           id.RoomID    `json:"room_id"`
	NumJoinedMembers int          `json:"num_joined_members"`
	WorldReadable    bool         `json:"world_readable"`
	GuestCanJoin     bool         `json:"guest_can_join"`
	Name             string       `json:"name,omitempty"`
	Topic            string       `json:"topic,omitempty"`
	CanonicalAlias   id.RoomAlias `json:"canonical_alias,omitempty"`
	AvatarURL        string       `json:"avatar_url,omitempty"`
	JoinRule         string       `json:"join_rule,omitempty"`
	RoomType         string       `json:"room_type,omitempty"`
}

// PublicRoomsCursor is a position in the directory's order (joined
// members descending, then room ID ascending).
type PublicRoomsCursor struct {
	Joined int
	RoomID id.RoomID
}

// PublicRoomsQuery is what the store lists: published rooms that anyone can
// join, knock on or read, matching the filter, after (or, Backward, before)
// the cursor, up to Limit of them, in directory order (Backward: reversed,
// nearest the cursor first).
type PublicRoomsQuery struct {
	// SearchTerm matches name, topic and canonical alias, ignoring case.
	SearchTerm string
	// FilterTypes restricts to rooms whose type is in Types, or has no
	// type if IncludeUntyped.
	FilterTypes    bool
	Types          []string
	IncludeUntyped bool
	Cursor         *PublicRoomsCursor
	Backward       bool
	Limit          int
}

// PublicRoomsParams is GET/POST /publicRooms.
type PublicRoomsParams struct {
	Limit int
	Since string
	// Server is the directory asked for; "" is this server's.
	Server     string
	SearchTerm string
	// RoomTypes filters by room type; a nil entry is "no type". An empty
	// list does not filter.
	RoomTypes []*string
	// ThirdPartyInstanceID asks for a bridged network's rooms; there are
	// none yet.
	ThirdPartyInstanceID string
}

// PublicRooms is the /publicRooms response.
type PublicRooms struct {
	Chunk                  []PublicRoom `json:"chunk"`
	NextBatch              string       `json:"next_batch,omitempty"`
	PrevBatch              string       `json:"prev_batch,omitempty"`
	TotalRoomCountEstimate int          `json:"total_room_count_estimate"`
}

// Directory page sizes.
const (
	maxPublicRoomsLimit     = 500
	defaultPublicRoomsLimit = 100
)

// PublicRooms lists this server's published room directory.
func (s *Service) PublicRooms(ctx context.Context, p PublicRoomsParams) (*PublicRooms, error) {
	if p.Server != "" && p.Server != s.cfg.Signer.ServerName {
		return nil, errInvalidParam("Only this server's room directory (" + s.cfg.Signer.ServerName + ") can be listed; federation is not available yet")
	}
	if p.Limit < 0 {
		return nil, errInvalidParam("limit must not be negative")
	}
	out := &PublicRooms{Chunk: []PublicRoom{}}
	if p.ThirdPartyInstanceID != "" {
		return out, nil // no bridged networks
	}
	ds, err := s.directoryStore()
	if err != nil {
		return nil, err
	}
	q := PublicRoomsQuery{SearchTerm: strings.TrimSpace(p.SearchTerm), Limit: p.Limit}
	if q.Limit == 0 {
		q.Limit = defaultPublicRoomsLimit
	}
	q.Limit = min(q.Limit, maxPublicRoomsLimit)
	for _, t := range p.RoomTypes {
		q.FilterTypes = true
		if t == nil {
			q.IncludeUntyped = true
		} else {
			q.Types = append(q.Types, *t)
		}
	}
	if p.Since != "" {
		c, backward, err := parsePublicRoomsToken(p.Since)
		if err != nil {
			return nil, err
		}
		q.Cursor, q.Backward = &c, backward
	}
	want := q.Limit
	q.Limit++ // one more tells whether another page exists
	rooms, total, err := ds.PublicRooms(ctx, q)
	if err != nil {
		return nil, err
	}
	more := len(rooms) > want
	if more {
		rooms = rooms[:want]
	}
	if q.Backward {
		slices.Reverse(rooms)
	}
	out.Chunk = append(out.Chunk, rooms...)
	out.TotalRoomCountEstimate = total
	if len(rooms) == 0 {
		return out, nil
	}
	first, last := rooms[0], rooms[len(rooms)-1]
	// A page reached from a token has rooms on the side it came from.
	if q.Backward {
		if more {
			out.PrevBatch = publicRoomsToken(first, true)
		}
		out.NextBatch = publicRoomsToken(last, false)
	} else {
		if more {
			out.NextBatch = publicRoomsToken(last, false)
		}
		if q.Cursor != nil {
			out.PrevBatch = publicRoomsToken(first, true)
		}
	}
	return out, nil
}

// publicRoomsToken is an opaque pagination token: the direction and the
// room the page ends at, base64url encoded.
func publicRoomsToken(r PublicRoom, backward bool) string {
	dir := "n"
	if backward {
		dir = "p"
	}
	return base64.RawURLEncoding.EncodeToString([]byte(dir + strconv.Itoa(r.NumJoinedMembers) + "_" + string(r.RoomID)))
}

func parsePublicRoomsToken(tok string) (PublicRoomsCursor, bool, error) {
	bad := errInvalidParam("Invalid since token")
	raw, err := base64.RawURLEncoding.DecodeString(tok)
	if err != nil || len(raw) < 2 {
		return PublicRoomsCursor{}, false, bad
	}
	s := string(raw)
	backward := s[0] == 'p'
	if s[0] != 'p' && s[0] != 'n' {
		return PublicRoomsCursor{}, false, bad
	}
	num, rid, ok := strings.Cut(s[1:], "_")
	n, err := strconv.Atoi(num)
	if !ok || err != nil || n < 0 || !strings.HasPrefix(rid, "!") {
		return PublicRoomsCursor{}, false, bad
	}
	return PublicRoomsCursor{Joined: n, RoomID: id.RoomID(rid)}, backward, nil
}

// Report is a user's report of a room or an event, kept for the operator.
type Report struct {
	Reporter id.UserID
	RoomID   id.RoomID
	EventID  id.EventID // "" for a report of the whole room
	Reason   string
	Score    *int // the deprecated score (-100 most offensive .. 0)
	At       time.Time
}

// ReportEvent is POST /rooms/{roomId}/report/{eventId}. The reporter must be
// joined to the room and able to see the event; otherwise, as for an
// unknown event, the answer is 404, so a report reveals nothing.
func (s *Service) ReportEvent(ctx context.Context, reporter id.UserID, roomID id.RoomID, eventID id.EventID, reason string, score *int) error {
	if score != nil && (*score < -100 || *score > 0) {
		return errInvalidParam("score must be between -100 and 0")
	}
	ds, err := s.directoryStore()
	if err != nil {
		return err
	}
	notFound := errNotFound("The event was not found or you are not joined to the room")
	m, _, err := s.store.Membership(ctx, roomID, reporter)
	if err != nil {
		return err
	}
	if m != "join" {
		return notFound
	}
	if _, err := s.Event(ctx, reporter, roomID, eventID, nil); err != nil {
		var re mautrix.RespError
		if errors.As(err, &re) && (re.ErrCode == mautrix.MNotFound.ErrCode || re.ErrCode == mautrix.MForbidden.ErrCode) {
			return notFound
		}
		return err
	}
	if err := ds.InsertReport(ctx, Report{Reporter: reporter, RoomID: roomID, EventID: eventID, Reason: reason, Score: score, At: s.now()}); err != nil {
		return err
	}
	s.log.Info("event reported", "room_id", roomID, "event_id", eventID, "reporter", reporter)
	return nil
}

// ReportRoom is POST /rooms/{roomId}/report (spec v1.13): anyone may report
// a room the server knows, joined or not.
func (s *Service) ReportRoom(ctx context.Context, reporter id.UserID, roomID id.RoomID, reason string) error {
	ds, err := s.directoryStore()
	if err != nil {
		return err
	}
	if _, err := s.store.RoomVersion(ctx, roomID); errors.Is(err, ErrNotFound) {
		return errNotFound("The room was not found")
	} else if err != nil {
		return err
	}
	if err := ds.InsertReport(ctx, Report{Reporter: reporter, RoomID: roomID, Reason: reason, At: s.now()}); err != nil {
		return err
	}
	s.log.Info("room reported", "room_id", roomID, "reporter", reporter)
	return nil
}
