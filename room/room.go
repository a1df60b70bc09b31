// Package room is the domain of rooms: building, signing and authorising
// events, the room state, membership, and reading rooms with history
// visibility applied. It knows nothing of HTTP or SQL: api calls it, and
// storage implements the Store it declares.
package room

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"encoding/json/jsontext"
	jsonv2 "encoding/json/v2"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"slices"
	"strconv"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/federation/eventauth"
	"maunium.net/go/mautrix/federation/pdu"
	"maunium.net/go/mautrix/id"
)

// Signer is this server's event signing key.
type Signer struct {
	ServerName string
	KeyID      id.KeyID
	Key        ed25519.PrivateKey
}

// Profiles gives the display name and avatar copied into member events.
type Profiles interface {
	MemberProfile(ctx context.Context, userID id.UserID) (displayName, avatarURL string, err error)
}

// Config is what the room domain needs to know.
type Config struct {
	Signer         Signer
	DefaultVersion id.RoomVersion
}

// Service implements room operations.
type Service struct {
	cfg      Config
	store    Store
	profiles Profiles
	log      *slog.Logger
	now      func() time.Time
	batch    *batcher
	// push evaluates push rules for new events (nil: off); memberCache
	// holds the members it evaluates for (push.go).
	push        PushRules
	memberCache roomMembers
	// auth remembers the message events the auth rules allowed (authmemo.go).
	auth authMemo
}

// New builds the room service.
func New(cfg Config, store Store, profiles Profiles, log *slog.Logger) *Service {
	if cfg.DefaultVersion == "" {
		cfg.DefaultVersion = id.RoomV12
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Service{cfg: cfg, store: store, profiles: profiles, log: log, now: time.Now, batch: &batcher{run: store.Batch}}
}

// SupportedVersions are the room versions Weft creates and joins.
var supportedVersions = []id.RoomVersion{id.RoomV10, id.RoomV11, id.RoomV12}

// IsSupportedVersion reports whether v can be created here.
func IsSupportedVersion(v id.RoomVersion) bool { return slices.Contains(supportedVersions, v) }

// maxEventBytes is the spec's limit on a whole PDU.
const maxEventBytes = 65536

func errForbidden(msg string) error { return mautrix.MForbidden.WithMessage(msg) }
func errNotFound(msg string) error  { return mautrix.MNotFound.WithMessage(msg) }
func errBadJSON(msg string) error   { return mautrix.MBadJSON.WithMessage(msg) }

// eventRequest is an event a local user wants to send.
type eventRequest struct {
	Sender   id.UserID
	Type     string
	StateKey *string
	Content  json.RawMessage
	Redacts  id.EventID
	// TS overrides origin_server_ts (the v12 create event, whose ID was
	// computed in advance); 0 means now.
	TS int64
	// TxnDevice/TxnID make client sends idempotent.
	TxnDevice id.DeviceID
	TxnID     string
}

// appendEvent builds, signs and authorises ev on the locked room and appends
// it. An auth failure answers M_FORBIDDEN naming the rule, and nothing is
// written.
func (s *Service) appendEvent(tx Tx, ev eventRequest) (id.EventID, error) {
	version := tx.RoomVersion()
	if err := checkContent(ev.Content, version); err != nil {
		return "", err
	}
	prev, depth, err := tx.Head()
	if err != nil {
		return "", err
	}
	p := &pdu.PDU{
		Sender:         ev.Sender,
		Type:           ev.Type,
		StateKey:       ev.StateKey,
		Content:        jsontext.Value(ev.Content),
		OriginServerTS: ev.TS,
		PrevEvents:     prev,
		AuthEvents:     []id.EventID{},
		Depth:          min(depth+1, math.MaxInt64),
	}
	if p.OriginServerTS == 0 {
		p.OriginServerTS = s.now().UnixMilli()
	}
	if p.PrevEvents == nil {
		p.PrevEvents = []id.EventID{}
	}
	isCreate := ev.Type == "m.room.create" && ev.StateKey != nil && *ev.StateKey == ""
	if !isCreate || !version.RoomIDIsCreateEventID() {
		p.RoomID = tx.RoomID()
	}
	if ev.Redacts != "" && !version.RedactsInContent() {
		r := ev.Redacts
		p.Redacts = &r
	}
	keys := p.AuthEventSelection(version)
	have, err := tx.CurrentStateIDs(keys)
	if err != nil {
		return "", err
	}
	for _, k := range keys { // selection order, so auth_events is deterministic
		if eid, ok := have[k]; ok {
			p.AuthEvents = append(p.AuthEvents, eid)
		}
	}
	if err := p.Sign(version, s.cfg.Signer.ServerName, s.cfg.Signer.KeyID, s.cfg.Signer.Key); err != nil {
		return "", fmt.Errorf("signing event: %w", err)
	}
	raw, err := jsonv2.Marshal(p)
	if err != nil {
		return "", fmt.Errorf("encoding event: %w", err)
	}
	if len(raw) > maxEventBytes {
		return "", mautrix.MTooLarge.WithMessage(fmt.Sprintf("Event is %d bytes; the limit is %d", len(raw), maxEventBytes))
	}
	eventID, err := p.GetEventID(version)
	if err != nil {
		return "", fmt.Errorf("computing event ID: %w", err)
	}
	getEvents := func(ids []id.EventID) ([]*pdu.PDU, error) {
		found, err := tx.Events(ids)
		if err != nil {
			return nil, err
		}
		// For the v12 create event lookup, "not found" is an empty result;
		// for auth_events, a nil in place reports the missing event.
		if len(ids) == 1 && ids[0] == createEventID(tx.RoomID()) && found[ids[0]] == nil {
			return nil, nil
		}
		out := make([]*pdu.PDU, len(ids))
		for i, eid := range ids {
			out[i] = found[eid]
		}
		return out, nil
	}
	if err := s.authorize(version, p, getEvents); err != nil {
		return "", err
	}
	pushed, members, err := s.pushFor(tx, p, eventID)
	if err != nil {
		return "", err
	}
	if _, err := tx.Append(&Appended{ID: eventID, PDU: p, Raw: raw, TxnDevice: ev.TxnDevice, TxnID: ev.TxnID, Redacts: ev.Redacts, Push: pushed}); err != nil {
		s.memberCache.forget(tx.RoomID())
		return "", fmt.Errorf("appending event: %w", err)
	}
	if members != nil {
		s.memberCache.put(tx.RoomID(), members)
	}
	return eventID, nil
}

// authorize checks p against the auth rules on its auth events
// (eventauth), answering M_FORBIDDEN with the rule that failed.
func (s *Service) authorize(version id.RoomVersion, p *pdu.PDU, getEvents eventauth.GetEventsFunc) error {
	key, memo := authMemoKey(version, p)
	if memo && s.auth.allowed(key) {
		return nil
	}
	if err := eventauth.Authorize(version, p, nil, getEvents, noKeys); err != nil {
		var afe eventauth.AuthFailError
		if errors.As(err, &afe) {
			return errForbidden(fmt.Sprintf("%s (auth rule %s)", afe.Message, afe.Index))
		}
		return errForbidden("Event not allowed: " + err.Error())
	}
	if memo {
		s.auth.allow(key)
	}
	return nil
}

// noKeys is the key lookup for third-party invite signatures, which Weft
// does not support yet: such invites fail authorisation.
func noKeys(string, id.KeyID, time.Time) (id.SigningKey, time.Time, error) {
	return "", time.Time{}, errors.New("third-party invites are not supported")
}

// checkContent enforces canonical JSON on event content: an object, with no
// floats and no integers outside ±(2^53-1), as every room version Weft
// supports requires.
func checkContent(content json.RawMessage, _ id.RoomVersion) error {
	if canonicalContent(content) {
		return nil
	}
	// Refused by the scan: the decoding check decides (it accepts
	// trailing data after the object) and words the error.
	return checkContentDecoded(content)
}

// canonicalContent reports, without decoding into values, whether content
// is exactly one JSON object whose numbers are all integers within
// ±(2^53-1). Such content passes checkContentDecoded too (which also
// takes duplicate names and invalid UTF-8, and checks only the last of
// duplicate names' values, where this checks them all); the scan costs a
// fraction of the decoding, and nearly every event's content passes it.
func canonicalContent(content []byte) bool {
	dec := jsontext.NewDecoder(bytes.NewReader(content), jsontext.AllowDuplicateNames(true), jsontext.AllowInvalidUTF8(true))
	tok, err := dec.ReadToken()
	if err != nil || tok.Kind() != '{' {
		return false
	}
	for dec.StackDepth() > 0 {
		switch dec.PeekKind() {
		case '{', '[', '}', ']':
			_, err = dec.ReadToken()
		case '0':
			var raw jsontext.Value
			if raw, err = dec.ReadValue(); err == nil && !safeInteger(raw) {
				return false
			}
		default: // names, strings and literals: read raw, not decoded
			_, err = dec.ReadValue()
		}
		if err != nil {
			return false
		}
	}
	_, err = dec.ReadToken()
	return err == io.EOF
}

// safeInteger: the JSON number raw is an integer within ±(2^53-1).
func safeInteger(raw []byte) bool {
	if bytes.ContainsAny(raw, ".eE") {
		return false
	}
	n, err := strconv.ParseInt(string(raw), 10, 64)
	return err == nil && n <= maxSafeInt && n >= -maxSafeInt
}

// checkContentDecoded is checkContent by decoding content into values, with
// encoding/json's leniency; its errors name the offending member.
func checkContentDecoded(content json.RawMessage) error {
	dec := json.NewDecoder(bytes.NewReader(content))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return mautrix.MNotJSON.WithMessage("Content is not JSON")
	}
	if _, ok := v.(map[string]any); !ok {
		return errBadJSON("Content must be a JSON object")
	}
	return checkCanonical(v, "content")
}

const maxSafeInt = 1<<53 - 1

func checkCanonical(v any, path string) error {
	switch t := v.(type) {
	case json.Number:
		n, err := t.Int64()
		if err != nil {
			return errBadJSON(path + ": floats are not allowed in events (canonical JSON)")
		}
		if n > maxSafeInt || n < -maxSafeInt {
			return errBadJSON(path + ": integer out of the range canonical JSON allows (±2^53-1)")
		}
	case map[string]any:
		for k, e := range t {
			if err := checkCanonical(e, path+"."+k); err != nil {
				return err
			}
		}
	case []any:
		for i, e := range t {
			if err := checkCanonical(e, fmt.Sprintf("%s[%d]", path, i)); err != nil {
				return err
			}
		}
	}
	return nil
}

// createEventID is the event ID of a v12 room's create event.
func createEventID(roomID id.RoomID) id.EventID {
	if len(roomID) == 0 {
		return ""
	}
	return id.EventID("$" + string(roomID[1:]))
}
