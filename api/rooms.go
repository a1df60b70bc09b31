package api

import (
	"bytes"
	"encoding/json"
	"encoding/json/jsontext"
	"io"
	"net/http"
	"strconv"

	"maunium.net/go/mautrix/id"

	"github.com/weftchat/weft/room"
)

func pathRoom(r *http.Request) id.RoomID { return id.RoomID(pathParam(r, "roomId")) }

// POST /_matrix/client/v3/createRoom
func (s *server) createRoom(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Preset                    string                     `json:"preset"`
		Visibility                string                     `json:"visibility"`
		RoomAliasName             string                     `json:"room_alias_name"`
		Name                      string                     `json:"name"`
		Topic                     *string                    `json:"topic"`
		Invite                    []id.UserID                `json:"invite"`
		IsDirect                  bool                       `json:"is_direct"`
		InitialState              []room.StateEvent          `json:"initial_state"`
		CreationContent           map[string]json.RawMessage `json:"creation_content"`
		PowerLevelContentOverride map[string]json.RawMessage `json:"power_level_content_override"`
		RoomVersion               id.RoomVersion             `json:"room_version"`
	}
	if err := decodeJSON(r, &req); err != nil {
		writeError(w, r, s.log, err)
		return
	}
	roomID, err := s.opts.Rooms.Create(r.Context(), room.CreateParams{
		Creator: requester(r).UserID, Preset: req.Preset, Visibility: req.Visibility,
		RoomAliasName: req.RoomAliasName, Name: req.Name, Topic: req.Topic, Invite: req.Invite,
		IsDirect: req.IsDirect, InitialState: req.InitialState, CreationContent: req.CreationContent,
		PowerLevelContentOverride: req.PowerLevelContentOverride, RoomVersion: req.RoomVersion,
	})
	s.respond(w, r, map[string]id.RoomID{"room_id": roomID}, err)
}

// readContent reads an event content body: a JSON object, compacted.
func readContent(r *http.Request) (json.RawMessage, error) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		return nil, bodyReadError(err)
	}
	v := jsontext.Value(bytes.TrimSpace(body))
	// Nearly every body is strictly valid JSON (unique names, UTF-8):
	// compacted in place, it is the content as it came.
	if len(v) > 0 && v[0] == '{' && v.IsValid() {
		if err := v.Compact(); err == nil {
			return json.RawMessage(v), nil
		}
	}
	// Otherwise encoding/json's reading of it, as for every body
	// (decodeBody): the last of duplicate names wins, invalid UTF-8 is
	// replaced, and its errors are the answer.
	var c map[string]json.RawMessage
	if err := decodeBody(body, &c); err != nil {
		return nil, err
	}
	return json.Marshal(c)
}

// PUT /_matrix/client/v3/rooms/{roomId}/send/{eventType}/{txnId}
func (s *server) sendEvent(w http.ResponseWriter, r *http.Request) {
	content, err := readContent(r)
	if err != nil {
		writeError(w, r, s.log, err)
		return
	}
	me := requester(r)
	eventID, err := s.opts.Rooms.Send(r.Context(), room.SendParams{
		Sender: me.UserID, Device: me.DeviceID, RoomID: pathRoom(r),
		Type: pathParam(r, "eventType"), TxnID: pathParam(r, "txnId"), Content: content,
	})
	s.respond(w, r, map[string]id.EventID{"event_id": eventID}, err)
}

// PUT /_matrix/client/v3/rooms/{roomId}/state/{eventType}[/{stateKey}]
func (s *server) putState(w http.ResponseWriter, r *http.Request) {
	content, err := readContent(r)
	if err != nil {
		writeError(w, r, s.log, err)
		return
	}
	eventID, err := s.opts.Rooms.SetState(r.Context(), requester(r).UserID, pathRoom(r), pathParam(r, "eventType"), pathParam(r, "stateKey"), content)
	s.respond(w, r, map[string]id.EventID{"event_id": eventID}, err)
}

// GET /_matrix/client/v3/rooms/{roomId}/state/{eventType}[/{stateKey}]: the
// content, or the whole event with ?format=event.
func (s *server) getState(w http.ResponseWriter, r *http.Request) {
	ev, err := s.opts.Rooms.StateEvent(r.Context(), requester(r).UserID, pathRoom(r), pathParam(r, "eventType"), pathParam(r, "stateKey"))
	if err != nil {
		writeError(w, r, s.log, err)
		return
	}
	if r.URL.Query().Get("format") == "event" {
		writeJSON(w, http.StatusOK, ev)
		return
	}
	writeJSON(w, http.StatusOK, ev.Content)
}

// GET /_matrix/client/v3/rooms/{roomId}/state
func (s *server) getAllState(w http.ResponseWriter, r *http.Request) {
	evs, err := s.opts.Rooms.State(r.Context(), requester(r).UserID, pathRoom(r))
	s.respond(w, r, evs, err)
}

type membershipBody struct {
	UserID id.UserID `json:"user_id"`
	Reason string    `json:"reason"`
}

// membershipHandler serves the membership endpoints, which share a body shape.
func (s *server) membershipHandler(action string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var body membershipBody
		if r.ContentLength != 0 {
			if err := decodeJSON(r, &body); err != nil {
				writeError(w, r, s.log, err)
				return
			}
		}
		me := requester(r).UserID
		roomArg := pathParam(r, "roomId")
		if roomArg == "" {
			roomArg = pathParam(r, "roomIdOrAlias")
		}
		roomID, err := s.opts.Rooms.ResolveRoom(r.Context(), roomArg)
		if err != nil {
			writeError(w, r, s.log, err)
			return
		}
		p := room.MembershipParams{Sender: me, RoomID: roomID, Target: body.UserID, Reason: body.Reason}
		needsTarget := action == "invite" || action == "kick" || action == "ban" || action == "unban"
		if needsTarget && body.UserID == "" {
			writeError(w, r, s.log, matrixError("M_MISSING_PARAM", "user_id is required"))
			return
		}
		switch action {
		case "join":
			err = s.opts.Rooms.Join(r.Context(), p)
		case "leave":
			err = s.opts.Rooms.Leave(r.Context(), p)
		case "invite":
			err = s.opts.Rooms.Invite(r.Context(), p)
		case "kick":
			err = s.opts.Rooms.Kick(r.Context(), p)
		case "ban":
			err = s.opts.Rooms.Ban(r.Context(), p)
		case "unban":
			err = s.opts.Rooms.Unban(r.Context(), p)
		case "knock":
			err = s.opts.Rooms.Knock(r.Context(), p)
		}
		if err != nil {
			writeError(w, r, s.log, err)
			return
		}
		if action == "join" || action == "knock" {
			writeJSON(w, http.StatusOK, map[string]id.RoomID{"room_id": roomID})
			return
		}
		writeJSON(w, http.StatusOK, struct{}{})
	}
}

// GET /_matrix/client/v3/rooms/{roomId}/messages
func (s *server) messages(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	dir := q.Get("dir")
	if dir != "b" && dir != "f" {
		writeError(w, r, s.log, matrixError("M_INVALID_PARAM", "dir must be b or f"))
		return
	}
	limit, set, ok := s.queryInt(w, r, r.URL.Query(), "limit", 0)
	if !ok {
		return
	}
	if !set {
		limit = 10
	}
	me := requester(r)
	filter, err := room.ParseEventFilter(q.Get("filter"))
	if err != nil {
		writeError(w, r, s.log, err)
		return
	}
	res, err := s.opts.Rooms.Messages(r.Context(), room.MessagesParams{
		User: me.UserID, RoomID: pathRoom(r), From: q.Get("from"), To: q.Get("to"),
		Backward: dir == "b", Limit: limit, Ignored: s.ignoredUsers(r, me.UserID), Filter: filter,
	})
	s.respond(w, r, res, err)
}

// GET /_matrix/client/v3/rooms/{roomId}/event/{eventId}
func (s *server) getEvent(w http.ResponseWriter, r *http.Request) {
	me := requester(r)
	ev, err := s.opts.Rooms.Event(r.Context(), me.UserID, pathRoom(r), id.EventID(pathParam(r, "eventId")), s.ignoredUsers(r, me.UserID))
	s.respond(w, r, ev, err)
}

// GET /_matrix/client/v3/rooms/{roomId}/members
func (s *server) members(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	evs, err := s.opts.Rooms.Members(r.Context(), requester(r).UserID, pathRoom(r), q.Get("at"), q.Get("membership"), q.Get("not_membership"))
	s.respond(w, r, map[string]any{"chunk": evs}, err)
}

// GET /_matrix/client/v3/rooms/{roomId}/joined_members
func (s *server) joinedMembers(w http.ResponseWriter, r *http.Request) {
	m, err := s.opts.Rooms.JoinedMembers(r.Context(), requester(r).UserID, pathRoom(r))
	s.respond(w, r, map[string]any{"joined": m}, err)
}

// GET /_matrix/client/v3/joined_rooms
func (s *server) joinedRooms(w http.ResponseWriter, r *http.Request) {
	rooms, err := s.opts.Rooms.JoinedRooms(r.Context(), requester(r).UserID)
	s.respond(w, r, map[string]any{"joined_rooms": rooms}, err)
}

// PUT /_matrix/client/v3/rooms/{roomId}/redact/{eventId}/{txnId}
func (s *server) redact(w http.ResponseWriter, r *http.Request) {
	var body struct {
		Reason string `json:"reason"`
	}
	if r.ContentLength != 0 {
		if err := decodeJSON(r, &body); err != nil {
			writeError(w, r, s.log, err)
			return
		}
	}
	me := requester(r)
	eventID, err := s.opts.Rooms.Redact(r.Context(), me.UserID, me.DeviceID, pathRoom(r), id.EventID(pathParam(r, "eventId")), pathParam(r, "txnId"), body.Reason)
	s.respond(w, r, map[string]id.EventID{"event_id": eventID}, err)
}

// GET /_matrix/client/v3/rooms/{roomId}/context/{eventId}
func (s *server) roomContext(w http.ResponseWriter, r *http.Request) {
	limit, set, ok := s.queryInt(w, r, r.URL.Query(), "limit", 0)
	if !ok {
		return
	}
	if !set {
		limit = 10
	}
	me := requester(r)
	res, err := s.opts.Rooms.Context(r.Context(), me.UserID, pathRoom(r), id.EventID(pathParam(r, "eventId")), limit, s.ignoredUsers(r, me.UserID))
	s.respond(w, r, res, err)
}

// GET /_matrix/client/v1/rooms/{roomId}/timestamp_to_event
func (s *server) timestampToEvent(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	ts, err := strconv.ParseInt(q.Get("ts"), 10, 64)
	if err != nil {
		writeError(w, r, s.log, matrixError("M_INVALID_PARAM", "ts must be a timestamp in milliseconds"))
		return
	}
	dir := q.Get("dir")
	if dir != "f" && dir != "b" {
		writeError(w, r, s.log, matrixError("M_INVALID_PARAM", "dir must be f or b"))
		return
	}
	ev, err := s.opts.Rooms.TimestampToEvent(r.Context(), requester(r).UserID, pathRoom(r), ts, dir == "f")
	if err != nil {
		writeError(w, r, s.log, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"event_id": ev.EventID, "origin_server_ts": ev.OriginServerTS})
}

// POST /_matrix/client/v3/rooms/{roomId}/forget
func (s *server) forget(w http.ResponseWriter, r *http.Request) {
	if err := s.opts.Rooms.Forget(r.Context(), requester(r).UserID, pathRoom(r)); err != nil {
		writeError(w, r, s.log, err)
		return
	}
	writeJSON(w, http.StatusOK, struct{}{})
}

// ignoredUsers reads the requester's m.ignored_user_list, whose senders are
// left out of what they read.
func (s *server) ignoredUsers(r *http.Request, me id.UserID) map[id.UserID]bool {
	raw, err := s.opts.Accounts.AccountData(r.Context(), requester(r), me, "", "m.ignored_user_list")
	if err != nil {
		return nil
	}
	return room.IgnoredUsers(raw)
}

// POST /_matrix/client/v3/rooms/{roomId}/upgrade
func (s *server) upgradeRoom(w http.ResponseWriter, r *http.Request) {
	var body struct {
		NewVersion         id.RoomVersion `json:"new_version"`
		AdditionalCreators []id.UserID    `json:"additional_creators"`
	}
	if err := decodeJSON(r, &body); err != nil {
		writeError(w, r, s.log, err)
		return
	}
	if body.NewVersion == "" {
		writeError(w, r, s.log, matrixError("M_MISSING_PARAM", "new_version is required"))
		return
	}
	newRoom, err := s.opts.Rooms.Upgrade(r.Context(), requester(r).UserID, pathRoom(r), body.NewVersion, body.AdditionalCreators)
	s.respond(w, r, map[string]id.RoomID{"replacement_room": newRoom}, err)
}
