package syncapi

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"sync"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"
)

// Send-to-device messaging. A message is stored for each target device
// with the stream position of the request that sent it, delivered by
// /sync in position order, and deleted only when the device syncs with a
// token at or past it: a response lost on the way (the client syncs again
// with its old token) delivers the same messages again.
//
// At most maxToDevicePerSync messages go in one response. When more are
// waiting, the whole response is cut at the position of the last message
// it carries: rooms, account data and everything else are read up to that
// position too and next_batch is that position, so the response is an
// ordinary consistent response for a shorter window and the next sync
// (which answers at once: its token is behind) carries on from there.
// Cutting only the to-device part while next_batch went further would
// skip the messages left out for good.

// maxToDevicePerSync is the spec's recommended cap on messages per response.
const maxToDevicePerSync = 100

// DefaultToDeviceBacklog bounds each device's waiting messages when
// Config.ToDeviceBacklog is not set: a device that never syncs again must
// not grow the table forever. The oldest beyond it are dropped.
const DefaultToDeviceBacklog = 10_000

// maxAckEntries bounds Service.acks; forgetting entries only costs a
// DELETE that finds nothing.
const maxAckEntries = 100_000

// ToDeviceStore writes to-device messages.
type ToDeviceStore interface {
	// SendToDevice stores one request's messages in one stream
	// transaction (KindToDevice, telling the target users), all at one
	// position, unless the sending device already used the transaction
	// ID: then it stores nothing. "*" addresses every device of the user;
	// an explicit device ID wins over "*" for that device, and unknown
	// devices get nothing. It returns how many of the targets' oldest
	// messages it deleted to keep each at most m.Backlog.
	SendToDevice(ctx context.Context, m ToDeviceSend) (dropped int, err error)
	// AckToDevice deletes the device's messages at or below upTo.
	AckToDevice(ctx context.Context, user id.UserID, device id.DeviceID, upTo int64) error
}

// ToDeviceSend is one PUT /sendToDevice, reduced to local users.
type ToDeviceSend struct {
	Sender       id.UserID
	SenderDevice id.DeviceID
	TxnID        string
	Type         string
	// Messages maps each target user's device IDs (or "*") to the
	// message content, a JSON object kept byte for byte.
	Messages map[id.UserID]map[id.DeviceID]json.RawMessage
	// Backlog is the most messages a device may have waiting.
	Backlog int
}

// ToDeviceMessage is one message waiting for a device.
type ToDeviceMessage struct {
	Pos     int64
	Sender  id.UserID
	Type    string
	Content json.RawMessage
}

// deviceKey names one device.
type deviceKey struct {
	user   id.UserID
	device id.DeviceID
}

// toDeviceAcks remembers, per device, a position at or below which the
// device has no messages left: every one was deleted by an ack, and no
// message can be added there later (new messages take positions above
// the notifier's, and a token is never above it). An ack is then only
// sent to the database when a message for the user may have arrived
// since: an idle long-poll's request costs no write.
type toDeviceAcks struct {
	mu   sync.Mutex
	upTo map[deviceKey]int64
}

// SendToDevice is PUT /sendToDevice/{eventType}/{txnId}: messages maps
// users to device IDs (or "*") to content. Messages for users of other
// servers are dropped (federation is not there yet).
func (s *Service) SendToDevice(ctx context.Context, sender id.UserID, device id.DeviceID, eventType, txnID string, messages map[id.UserID]map[id.DeviceID]json.RawMessage) error {
	if eventType == "" || txnID == "" {
		return mautrix.MInvalidParam.WithMessage("The event type and transaction ID must not be empty")
	}
	local := map[id.UserID]map[id.DeviceID]json.RawMessage{}
	remote := 0
	for user, devices := range messages {
		if _, server, err := user.Parse(); err != nil || server == "" {
			return mautrix.MInvalidParam.WithMessage(fmt.Sprintf("%q is not a user ID", user))
		}
		for dev, content := range devices {
			if dev == "" {
				return mautrix.MInvalidParam.WithMessage("A device ID must not be empty")
			}
			if c := bytes.TrimLeft(content, " \t\r\n"); len(c) == 0 || c[0] != '{' {
				return mautrix.MBadJSON.WithMessage(fmt.Sprintf("The message for %s's device %s must be a JSON object", user, dev))
			}
		}
		if s.cfg.ServerName != "" && user.Homeserver() != s.cfg.ServerName {
			remote += len(devices)
			continue
		}
		if len(devices) > 0 {
			local[user] = devices
		}
	}
	if remote > 0 {
		s.log.Info("dropping to-device messages for remote users: no federation yet", "sender", sender, "type", eventType, "messages", remote)
	}
	if len(local) == 0 {
		return nil
	}
	backlog := s.cfg.ToDeviceBacklog
	if backlog <= 0 {
		backlog = DefaultToDeviceBacklog
	}
	dropped, err := s.store.SendToDevice(ctx, ToDeviceSend{
		Sender: sender, SenderDevice: device, TxnID: txnID, Type: eventType, Messages: local, Backlog: backlog,
	})
	if err != nil {
		return fmt.Errorf("storing to-device messages: %w", err)
	}
	if dropped > 0 {
		s.toDeviceDropped.Add(uint64(dropped))
		s.log.Warn("to-device backlog full: dropped the oldest messages", "sender", sender, "type", eventType, "dropped", dropped, "backlog", backlog)
	}
	return nil
}

// ToDeviceDropped is how many waiting to-device messages this process
// dropped because their device's backlog was full.
func (s *Service) ToDeviceDropped() uint64 { return s.toDeviceDropped.Load() }

// ackToDevice deletes the device's messages at or below since: the
// device's sync with since shows it received everything up to there.
func (s *Service) ackToDevice(ctx context.Context, user id.UserID, device id.DeviceID, since int64) error {
	if device == "" {
		return nil
	}
	k := deviceKey{user, device}
	// Read before the delete: a message told after this has a position
	// above the notifier's, so above since, and is not the delete's.
	last := s.n.userLastChange(user, KindToDevice)
	s.acks.mu.Lock()
	done, ok := s.acks.upTo[k]
	s.acks.mu.Unlock()
	if ok && (since <= done || last <= done) {
		return nil
	}
	if err := s.store.AckToDevice(ctx, user, device, since); err != nil {
		return fmt.Errorf("deleting delivered to-device messages: %w", err)
	}
	s.acks.mu.Lock()
	defer s.acks.mu.Unlock()
	if len(s.acks.upTo) >= maxAckEntries {
		clear(s.acks.upTo)
	}
	s.acks.upTo[k] = max(s.acks.upTo[k], since)
	return nil
}

// toDevice reads the device's messages into the response. With more than
// maxToDevicePerSync waiting, it cuts the response's upper bound at the
// last one it delivers (see the top of this file).
func (b *builder) toDevice() error {
	if b.req.Device == "" {
		return nil
	}
	if b.since != nil && !b.s.n.userChangedAfter(b.req.User, KindToDevice, b.since.Pos) {
		return nil
	}
	msgs, err := b.rd.ToDevice(b.req.User, b.req.Device, b.sincePos(), b.to.Pos, maxToDevicePerSync+1)
	if err != nil {
		return fmt.Errorf("reading to-device messages: %w", err)
	}
	if len(msgs) == 0 {
		return nil
	}
	b.deviceOnly = true
	if len(msgs) > maxToDevicePerSync {
		msgs = msgs[:maxToDevicePerSync]
		b.to.Pos = msgs[len(msgs)-1].Pos
		b.resp.NextBatch = b.to.String()
	}
	evs := make([]json.RawMessage, 0, len(msgs))
	for _, m := range msgs {
		ev, err := json.Marshal(struct {
			Sender  id.UserID       `json:"sender"`
			Type    string          `json:"type"`
			Content json.RawMessage `json:"content"`
		}{m.Sender, m.Type, m.Content})
		if err != nil {
			return fmt.Errorf("formatting a to-device message: %w", err)
		}
		evs = append(evs, ev)
	}
	b.resp.ToDevice = &EventList{Events: evs}
	return nil
}

// ToDevice reads the device's waiting messages. Not cached: they are the
// device's own.
func (r *reader) ToDevice(user id.UserID, device id.DeviceID, since, to int64, limit int) ([]ToDeviceMessage, error) {
	db, err := r.db()
	if err != nil {
		return nil, err
	}
	return db.ToDevice(user, device, since, to, limit)
}

// complete adds what every response carries, news or not: the device's
// one-time key counts and unused fallback key types (an empty list
// without the hook: FallbackKeyTypes is never null). They are not news:
// they are added after a long-poll decided to answer, so they never make
// an idle one return.
func (s *Service) complete(ctx context.Context, req Request, resp *Response) error {
	if s.cfg.KeyCounts == nil || req.Device == "" {
		return nil
	}
	counts, fallback, err := s.cfg.KeyCounts(ctx, req.User, req.Device)
	if err != nil {
		return fmt.Errorf("reading one-time key counts: %w", err)
	}
	// signed_curve25519 is always there, 0 included: a client may read a
	// missing count as no news and never top its keys up.
	if _, ok := counts[id.KeyAlgorithmSignedCurve25519]; ok {
		// The hook's map (the key service caches it): only read.
		resp.DeviceOneTimeKeysCount = counts
	} else {
		resp.DeviceOneTimeKeysCount = map[id.KeyAlgorithm]int{id.KeyAlgorithmSignedCurve25519: 0}
		for alg, n := range counts {
			resp.DeviceOneTimeKeysCount[alg] = n
		}
	}
	resp.DeviceUnusedFallbackKeyTypes = fallback
	return nil
}
