package room

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/tidwall/gjson"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/federation/pdu"
	"maunium.net/go/mautrix/id"
)

// SendParams is PUT /rooms/{roomId}/send/{eventType}/{txnId}.
type SendParams struct {
	Sender  id.UserID
	Device  id.DeviceID
	RoomID  id.RoomID
	Type    string
	TxnID   string
	Content json.RawMessage
}

// Send appends a message event. The transaction ID is recorded per device
// in the same transaction as the event, so a retry (after a timeout or a
// crash) returns the first event's ID and never a duplicate.
func (s *Service) Send(ctx context.Context, p SendParams) (id.EventID, error) {
	if p.Type == "" || len(p.Type) > 255 {
		return "", mautrix.MInvalidParam.WithMessage("Invalid event type")
	}
	var eventID id.EventID
	txn := txnScope(p.TxnID, "send", string(p.RoomID), p.Type)
	// No lookup before appending: the transaction ID is recorded with the
	// event under a unique key, so a retry fails its append (rolled back
	// alone, see batch.go) with ErrDuplicateTxn, and only then is the first
	// event looked up. Retries are rare; this saves a query on every send
	// (only threads and annotations are looked at first: checkRelation).
	err := s.inRoom(ctx, p.RoomID, func(tx Tx) error {
		retried, err := checkRelation(tx, p, txn)
		if err != nil || retried != "" {
			eventID = retried
			return err
		}
		eventID, err = s.appendEvent(tx, eventRequest{Sender: p.Sender, Type: p.Type, Content: p.Content, TxnDevice: p.Device, TxnID: txn})
		return err
	})
	if errors.Is(err, ErrDuplicateTxn) {
		err = s.inRoom(ctx, p.RoomID, func(tx Tx) error {
			prev, ok, err := tx.TxnEvent(p.Sender, p.Device, txn)
			if err == nil && !ok {
				err = fmt.Errorf("transaction %s reported as duplicate but not found", p.TxnID)
			}
			eventID = prev
			return err
		})
	}
	return eventID, err
}

// checkRelation refuses the relations the spec asks servers to refuse
// from clients: a thread started from an event that is itself a relation
// (400 M_UNKNOWN, the spec having no errcode for it), and a second
// annotation by the same sender of the same event with the same event
// type and key while the first is not redacted (400
// M_DUPLICATE_ANNOTATION). An unknown parent is let through, as it is
// without the checks (it may yet arrive over federation). Sends without
// m.relates_to cost nothing more.
//
// A refusal is only given to a member of the room: anyone else learns
// nothing of the room's events, and is refused by the auth rules when the
// event is appended. A retry of a send that passed (the same transaction
// ID) is no duplicate: its first event is returned, to be answered.
func checkRelation(tx Tx, p SendParams, txn string) (retried id.EventID, err error) {
	refusal, err := relationRefusal(tx, p.Sender, p.Type, p.Content)
	if err != nil || refusal == nil {
		return "", err
	}
	if txn != "" {
		if prev, ok, err := tx.TxnEvent(p.Sender, p.Device, txn); err != nil || ok {
			return prev, err
		}
	}
	if m, err := txMembership(tx, p.Sender); err != nil || m != "join" {
		return "", err
	}
	return "", *refusal
}

// relationRefusal is the refusal checkRelation's rules give, if any.
func relationRefusal(tx Tx, sender id.UserID, typ string, content json.RawMessage) (*mautrix.RespError, error) {
	rel := gjson.GetBytes(content, `m\.relates_to`)
	if !rel.IsObject() {
		return nil, nil
	}
	relType := rel.Get("rel_type").Str
	parent := id.EventID(rel.Get("event_id").Str)
	if parent == "" || (relType != relThread && relType != relAnnotation) {
		return nil, nil
	}
	rt, ok := tx.(RelationTx)
	if !ok {
		return nil, errors.New("room transaction has no relations index")
	}
	switch relType {
	case relThread:
		parentRel, err := rt.RelTypeOf(parent)
		if errors.Is(err, ErrNotFound) || (err == nil && parentRel == "") {
			return nil, nil
		} else if err != nil {
			return nil, err
		}
		r := mautrix.MUnknown.WithMessage("Cannot start a thread from an event with a relation (" + parentRel + ")").WithStatus(400)
		return &r, nil
	case relAnnotation:
		key := rel.Get("key")
		if key.Type != gjson.String {
			return nil, nil // encrypted reactions carry no key in the clear
		}
		dup, err := rt.HasAnnotation(sender, parent, typ, key.Str)
		if err != nil || !dup {
			return nil, err
		}
		return &mautrix.RespError{ErrCode: "M_DUPLICATE_ANNOTATION", Err: "You already sent this annotation of this event", StatusCode: 400}, nil
	}
	return nil, nil
}

// txnScope is the key a client transaction ID is stored under. The spec
// scopes a transaction ID to one device and one request path, so the same
// ID sent to another room, event type or endpoint is a new request, not a
// retry. "" (no transaction) stays "".
func txnScope(txnID, endpoint string, path ...string) string {
	if txnID == "" {
		return ""
	}
	return string(mustJSON(append([]string{endpoint}, append(path, txnID)...)))
}

// ClientTxnID is the client's transaction ID inside a scoped one (the last
// element of txnScope's list).
func ClientTxnID(scoped string) string {
	var parts []string
	if err := json.Unmarshal([]byte(scoped), &parts); err != nil || len(parts) == 0 {
		return scoped
	}
	return parts[len(parts)-1]
}

// SetState is PUT /rooms/{roomId}/state/{eventType}/{stateKey}. Content equal
// to the current state's returns the existing event, and nothing is sent.
func (s *Service) SetState(ctx context.Context, sender id.UserID, roomID id.RoomID, typ, stateKey string, content json.RawMessage) (id.EventID, error) {
	if typ == "" || len(typ) > 255 || len(stateKey) > 255 {
		return "", mautrix.MInvalidParam.WithMessage("Invalid event type or state key")
	}
	// m.room.member is allowed here too (Element's /myroomnick sets a
	// per-room display name this way); the auth rules judge the transition.
	if typ == "m.room.create" {
		return "", errForbidden("The room's create event cannot be changed")
	}
	var eventID id.EventID
	err := s.inRoom(ctx, roomID, func(tx Tx) error {
		key := pdu.StateKey{Type: typ, StateKey: stateKey}
		cur, err := tx.CurrentStateIDs([]pdu.StateKey{key})
		if err != nil {
			return err
		}
		if eid, ok := cur[key]; ok {
			evs, err := tx.Events([]id.EventID{eid})
			if err != nil {
				return err
			}
			if e := evs[eid]; e != nil && e.Sender == sender && sameJSON(e.Content, content) {
				eventID = eid
				return nil
			}
		}
		if typ == "m.room.canonical_alias" {
			if err := s.checkCanonicalAlias(tx, content); err != nil {
				return err
			}
		}
		eventID, err = s.appendEvent(tx, eventRequest{Sender: sender, Type: typ, StateKey: &stateKey, Content: content})
		return err
	})
	return eventID, err
}

// sameJSON compares two JSON documents by value.
func sameJSON(a, b []byte) bool {
	var x, y any
	if json.Unmarshal(a, &x) != nil || json.Unmarshal(b, &y) != nil {
		return bytes.Equal(a, b)
	}
	xa, _ := json.Marshal(x)
	ya, _ := json.Marshal(y)
	return bytes.Equal(xa, ya)
}

// checkCanonicalAlias refuses aliases that do not exist or point elsewhere.
func (s *Service) checkCanonicalAlias(tx Tx, content json.RawMessage) error {
	var c struct {
		Alias      *string  `json:"alias"`
		AltAliases []string `json:"alt_aliases"`
	}
	if err := json.Unmarshal(content, &c); err != nil {
		return errBadJSON("m.room.canonical_alias content is malformed")
	}
	aliases := c.AltAliases
	if c.Alias != nil && *c.Alias != "" {
		aliases = append(aliases, *c.Alias)
	}
	lookup, ok := tx.(interface {
		AliasRoom(alias id.RoomAlias) (id.RoomID, error)
	})
	if !ok {
		return nil
	}
	for _, a := range aliases {
		if !strings.HasPrefix(a, "#") || !strings.Contains(a, ":") {
			return mautrix.RespError{ErrCode: "M_BAD_ALIAS", Err: fmt.Sprintf("%q is not a room alias", a), StatusCode: 400}
		}
		rid, err := lookup.AliasRoom(id.RoomAlias(a))
		if err != nil || rid != tx.RoomID() {
			return mautrix.RespError{ErrCode: "M_BAD_ALIAS", Err: fmt.Sprintf("Alias %s does not point at this room", a), StatusCode: 400}
		}
	}
	return nil
}

// Redact is PUT /rooms/{roomId}/redact/{eventId}/{txnId}. Since room v3 the
// auth rules leave redactions to the receiver: only the original sender or
// someone with the redact power level may redact.
func (s *Service) Redact(ctx context.Context, sender id.UserID, device id.DeviceID, roomID id.RoomID, target id.EventID, txnID, reason string) (id.EventID, error) {
	var eventID id.EventID
	txn := txnScope(txnID, "redact", string(roomID), string(target))
	err := s.inRoom(ctx, roomID, func(tx Tx) error {
		if prev, ok, err := tx.TxnEvent(sender, device, txn); err != nil || ok {
			eventID = prev
			return err
		}
		evs, err := tx.Events([]id.EventID{target})
		if err != nil {
			return err
		}
		orig := evs[target]
		if orig == nil || roomOf(orig, tx.RoomVersion()) != roomID {
			return errNotFound("Unknown event")
		}
		if orig.Sender != sender {
			level, redactLevel, err := s.powerOf(tx, sender)
			if err != nil {
				return err
			}
			if level < redactLevel {
				return errForbidden("You need the redact power level to redact other people's events")
			}
		}
		content := map[string]any{}
		if reason != "" {
			content["reason"] = reason
		}
		if tx.RoomVersion().RedactsInContent() {
			content["redacts"] = target
		}
		eventID, err = s.appendEvent(tx, eventRequest{Sender: sender, Type: "m.room.redaction", Content: mustJSON(content), Redacts: target, TxnDevice: device, TxnID: txn})
		return err
	})
	return eventID, err
}

// powerOf returns the user's power level and the room's redact level.
func (s *Service) powerOf(tx Tx, user id.UserID) (int, int, error) {
	pl, err := s.powerLevels(tx)
	if err != nil {
		return 0, 0, err
	}
	return pl.GetUserLevel(user), pl.Redact(), nil
}
