package push

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"strings"
	"time"
	"unicode/utf8"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"
)

// Pushers are the HTTP pushers of users (GET /pushers, POST /pushers/set):
// where a user's devices want their notifications sent. Delivery is the
// Deliverer's (deliver.go).

// PusherKindHTTP is the only kind of pusher served. Email pushers need a
// mail relay this server does not have.
const PusherKindHTTP = "http"

// NotifyPath is the only path a pusher's URL may have: the push gateway
// API's notify endpoint (pusher.yaml: "MUST be an HTTPS URL with a path of
// /_matrix/push/v1/notify").
const NotifyPath = "/_matrix/push/v1/notify"

// FormatEventIDOnly is the data.format that sends only the event's and
// room's IDs, the counts and the devices.
const FormatEventIDOnly = "event_id_only"

// Limits of what a client may store in a pusher.
const (
	// MaxAppIDChars and MaxPushKeyBytes are the spec's (pusher.yaml).
	MaxAppIDChars   = 64
	MaxPushKeyBytes = 512
	// maxPusherDataBytes bounds data, which is stored and sent to the
	// gateway with every notification; gateways' own payload limits are a
	// few KiB, so anything larger is a mistake or abuse.
	maxPusherDataBytes = 8 << 10
	// maxPusherTextBytes bounds the display names, lang and profile_tag.
	maxPusherTextBytes = 1 << 10
)

// Pusher is one pusher as stored. (UserID, AppID, PushKey) identifies it.
type Pusher struct {
	UserID id.UserID
	// DeviceID is the device that set it; the pusher is deleted with it.
	DeviceID          id.DeviceID
	AppID             string
	PushKey           string
	Kind              string
	AppDisplayName    string
	DeviceDisplayName string
	ProfileTag        string
	Lang              string
	// Data is the JSON object the client gave, url included.
	Data json.RawMessage
	// PushKeyTS is when the pushkey was last set (unix ms).
	PushKeyTS int64
	// LastPos is the delivery cursor: every notification of the user at or
	// below this stream position was delivered, skipped or given up on.
	LastPos int64
	// FailingSince is when the first failed attempt at delivering the
	// notification after LastPos was made (unix ms); 0: not failing.
	FailingSince int64
}

// PusherStore keeps pushers.
type PusherStore interface {
	// Pushers lists the user's pushers, ordered by app ID and pushkey.
	Pushers(ctx context.Context, user id.UserID) ([]Pusher, error)
	// SetPusher creates or replaces the pusher (p.UserID, p.AppID,
	// p.PushKey). A new pusher's cursor starts at the stream's current
	// position (nothing from before it is pushed); a replaced one keeps
	// its cursor, its failing state is cleared. With exclusive, the pushers
	// of other users with the same app ID and pushkey are deleted in the
	// same transaction.
	SetPusher(ctx context.Context, p Pusher, exclusive bool) error
	// DeletePusher deletes the user's pusher; deleting none is no error.
	DeletePusher(ctx context.Context, user id.UserID, appID, pushKey string) error
}

// Pushers is the pushers API.
type Pushers struct {
	store PusherStore
	now   func() time.Time
}

// NewPushers builds the pushers API over store.
func NewPushers(store PusherStore) *Pushers {
	return &Pushers{store: store, now: time.Now}
}

// Pushers is the pushers API over the service's store, which keeps
// pushers too (found by type assertion, as the room domain finds its
// small stores); nil when it does not.
func (s *Service) Pushers() *Pushers {
	ps, ok := s.store.(PusherStore)
	if !ok {
		return nil
	}
	return NewPushers(ps)
}

// SetPusherRequest is the body of POST /pushers/set. Kind and Data are raw
// so that a missing kind, kind: null and a string can be told apart, and
// data is stored (and forwarded to the gateway) exactly as given.
type SetPusherRequest struct {
	Kind              json.RawMessage `json:"kind"`
	AppID             *string         `json:"app_id"`
	PushKey           *string         `json:"pushkey"`
	AppDisplayName    *string         `json:"app_display_name"`
	DeviceDisplayName *string         `json:"device_display_name"`
	ProfileTag        string          `json:"profile_tag"`
	Lang              *string         `json:"lang"`
	Data              json.RawMessage `json:"data"`
	Append            bool            `json:"append"`
}

// errPusherMissingParam is the spec's 400 for absent required fields.
var errPusherMissingParam = mautrix.RespError{ErrCode: "M_MISSING_PARAM", StatusCode: 400}

// errPusherGuest refuses guests: the pushers API is not among the endpoints
// the guest access module allows them.
var errPusherGuest = mautrix.RespError{ErrCode: "M_GUEST_ACCESS_FORBIDDEN", StatusCode: 403, Err: "Guests cannot use pushers"}

// List is GET /pushers: the user's pushers in the spec's shape.
func (p *Pushers) List(ctx context.Context, user id.UserID, guest bool) ([]mautrix.Pusher, error) {
	if guest {
		return nil, errPusherGuest
	}
	stored, err := p.store.Pushers(ctx, user)
	if err != nil {
		return nil, fmt.Errorf("listing pushers: %w", err)
	}
	out := make([]mautrix.Pusher, 0, len(stored))
	for _, s := range stored {
		var data mautrix.PusherData
		if err := json.Unmarshal(s.Data, &data); err != nil {
			return nil, fmt.Errorf("pusher %s/%s of %s: stored data: %w", s.AppID, s.PushKey, user, err)
		}
		kind := mautrix.PusherKind(s.Kind)
		out = append(out, mautrix.Pusher{
			AppDisplayName: s.AppDisplayName, AppID: mautrix.PusherAppID(s.AppID), Data: data,
			DeviceDisplayName: s.DeviceDisplayName, Kind: &kind, Language: s.Lang,
			ProfileTag: s.ProfileTag, PushKey: s.PushKey,
		})
	}
	return out, nil
}

// Set is POST /pushers/set for the user's device: creates, replaces or
// (kind: null) deletes the pusher (app_id, pushkey) of the user.
func (p *Pushers) Set(ctx context.Context, user id.UserID, device id.DeviceID, guest bool, req SetPusherRequest) error {
	if guest {
		return errPusherGuest
	}
	kind := bytes.TrimSpace(req.Kind)
	var missing []string
	if len(kind) == 0 {
		missing = append(missing, "kind")
	}
	if req.AppID == nil {
		missing = append(missing, "app_id")
	}
	if req.PushKey == nil {
		missing = append(missing, "pushkey")
	}
	if len(missing) > 0 {
		return errPusherMissingParam.WithMessage("Missing parameters: " + strings.Join(missing, ", "))
	}
	appID, pushKey := *req.AppID, *req.PushKey
	if err := checkPusherKey(appID, pushKey); err != nil {
		return err
	}
	if string(kind) == "null" {
		if err := p.store.DeletePusher(ctx, user, appID, pushKey); err != nil {
			return fmt.Errorf("deleting pusher: %w", err)
		}
		return nil
	}
	var kindName string
	if err := json.Unmarshal(kind, &kindName); err != nil {
		return mautrix.MBadJSON.WithMessage("kind must be a string or null")
	}
	if req.AppDisplayName == nil {
		missing = append(missing, "app_display_name")
	}
	if req.DeviceDisplayName == nil {
		missing = append(missing, "device_display_name")
	}
	if req.Lang == nil {
		missing = append(missing, "lang")
	}
	if len(req.Data) == 0 || string(bytes.TrimSpace(req.Data)) == "null" {
		missing = append(missing, "data")
	}
	if len(missing) > 0 {
		return errPusherMissingParam.WithMessage("Missing parameters: " + strings.Join(missing, ", "))
	}
	if kindName != PusherKindHTTP {
		// pusher.yaml names "http" and "email"; an email pusher would need
		// a mail relay, which this server does not have. Both it and
		// unknown kinds are an invalid value of kind.
		return mautrix.MInvalidParam.WithMessage("Unsupported pusher kind %q: only %q is supported", kindName, PusherKindHTTP)
	}
	for name, v := range map[string]string{
		"app_display_name": *req.AppDisplayName, "device_display_name": *req.DeviceDisplayName,
		"lang": *req.Lang, "profile_tag": req.ProfileTag,
	} {
		if len(v) > maxPusherTextBytes {
			return mautrix.MInvalidParam.WithMessage("%s is longer than %d bytes", name, maxPusherTextBytes)
		}
	}
	data, err := checkHTTPPusherData(req.Data)
	if err != nil {
		return err
	}
	err = p.store.SetPusher(ctx, Pusher{
		UserID: user, DeviceID: device, AppID: appID, PushKey: pushKey, Kind: kindName,
		AppDisplayName: *req.AppDisplayName, DeviceDisplayName: *req.DeviceDisplayName,
		ProfileTag: req.ProfileTag, Lang: *req.Lang, Data: data, PushKeyTS: p.now().UnixMilli(),
	}, !req.Append)
	if err != nil {
		return fmt.Errorf("setting pusher: %w", err)
	}
	return nil
}

func checkPusherKey(appID, pushKey string) error {
	switch {
	case appID == "":
		return mautrix.MInvalidParam.WithMessage("app_id must not be empty")
	case utf8.RuneCountInString(appID) > MaxAppIDChars:
		return mautrix.MInvalidParam.WithMessage("app_id is longer than %d characters", MaxAppIDChars)
	case pushKey == "":
		return mautrix.MInvalidParam.WithMessage("pushkey must not be empty")
	case len(pushKey) > MaxPushKeyBytes:
		return mautrix.MInvalidParam.WithMessage("pushkey is longer than %d bytes", MaxPushKeyBytes)
	}
	return nil
}

// checkHTTPPusherData validates an http pusher's data and returns it
// compacted: an object whose url is an absolute http(s) URL of a gateway's
// notify endpoint, and whose format, if any, is event_id_only. Every other
// key is the client's business and is forwarded to the gateway as is.
//
// Plain http is accepted although the spec says HTTPS: self-hosted
// gateways on an internal network (allowed by the operator's CIDR list)
// are commonly plain HTTP. Which addresses may be reached is decided when
// connecting, not here: a name can resolve anywhere later.
func checkHTTPPusherData(raw json.RawMessage) (json.RawMessage, error) {
	if len(raw) > maxPusherDataBytes {
		return nil, mautrix.MInvalidParam.WithMessage("data is larger than %d bytes", maxPusherDataBytes)
	}
	var data map[string]json.RawMessage
	if err := json.Unmarshal(raw, &data); err != nil || data == nil {
		return nil, mautrix.MBadJSON.WithMessage("data must be an object")
	}
	rawURL, ok := data["url"]
	if !ok {
		return nil, errPusherMissingParam.WithMessage("data.url is required for an http pusher")
	}
	var s string
	if err := json.Unmarshal(rawURL, &s); err != nil {
		return nil, mautrix.MInvalidParam.WithMessage("data.url must be a string")
	}
	if err := checkNotifyURL(s); err != nil {
		return nil, err
	}
	if f, ok := data["format"]; ok {
		var format string
		if err := json.Unmarshal(f, &format); err != nil || format != FormatEventIDOnly {
			return nil, mautrix.MInvalidParam.WithMessage("data.format must be %q or absent", FormatEventIDOnly)
		}
	}
	var buf bytes.Buffer
	if err := json.Compact(&buf, raw); err != nil {
		return nil, mautrix.MBadJSON.WithMessage("data is not valid JSON")
	}
	return buf.Bytes(), nil
}

// checkNotifyURL accepts absolute http(s) URLs with a host, no
// credentials (they would be logged and sent in the clear) and the path
// of the notify endpoint.
func checkNotifyURL(s string) error {
	u, err := url.Parse(s)
	if err != nil || !u.IsAbs() || (u.Scheme != "http" && u.Scheme != "https") || u.Hostname() == "" || u.Opaque != "" {
		return mautrix.MInvalidParam.WithMessage("data.url must be an absolute http(s) URL")
	}
	if u.User != nil {
		return mautrix.MInvalidParam.WithMessage("data.url must not carry credentials")
	}
	if u.Path != NotifyPath {
		return mautrix.MInvalidParam.WithMessage("data.url must have the path %s", NotifyPath)
	}
	return nil
}
