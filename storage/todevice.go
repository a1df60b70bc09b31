package storage

import (
	"context"
	"fmt"
	"slices"

	"github.com/jackc/pgx/v5"
	"maunium.net/go/mautrix/id"

	"github.com/weftchat/weft/syncapi"
)

// SendToDevice stores one PUT /sendToDevice (table to_device_messages,
// migration 0010): every message at one stream position, since a request
// addresses each device once.
//
// Order of locks, the stream lock last as everywhere: the transaction
// ID's row (a concurrent retry of the same request waits there, then
// finds the ID taken and sends nothing), then the target devices' rows
// (FOR KEY SHARE, which the messages' foreign key would take anyway),
// then the stream lock. Taking the device rows before the stream lock
// matters: a device's deletion locks its row and then records a
// device-list change under the stream lock, so a send that took the
// stream lock first and then waited for that row would deadlock with it.
// Once the row is held, the device cannot go before the messages are
// written, and trimming its backlog waits for nobody holding the stream
// lock.
func (s *Sync) SendToDevice(ctx context.Context, m syncapi.ToDeviceSend) (int, error) {
	var users []id.UserID
	var wanted []string // the targets' devices, "*" for all
	targets := make([]id.UserID, 0, len(m.Messages))
	for u, ds := range m.Messages {
		targets = append(targets, u)
		for d := range ds {
			users, wanted = append(users, u), append(wanted, string(d))
		}
	}
	dropped := 0
	err := s.db.inStreamTx(ctx, syncapi.KindToDevice, nil, targets, func(tx pgx.Tx, next func() (int64, error)) error {
		// One round trip: record the transaction ID, forget the sending
		// device's IDs older than a day (an index range, usually empty),
		// lock the target devices.
		b := &pgx.Batch{}
		b.Queue(`INSERT INTO to_device_txns (user_id, device_id, txn_id) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING`,
			m.Sender, m.SenderDevice, m.TxnID)
		b.Queue(`DELETE FROM to_device_txns WHERE user_id = $1 AND device_id = $2 AND created_at < now() - interval '1 day'`,
			m.Sender, m.SenderDevice)
		b.Queue(`SELECT d.user_id, d.device_id
			FROM unnest($1::text[], $2::text[]) AS w(user_id, device_id)
			JOIN devices d ON d.user_id = w.user_id AND (d.device_id = w.device_id OR w.device_id = '*')
			ORDER BY d.user_id, d.device_id
			FOR KEY SHARE OF d`, users, wanted)
		br := tx.SendBatch(ctx, b)
		tag, err := br.Exec()
		if err == nil {
			_, err = br.Exec()
		}
		var found []deviceRef
		if err == nil {
			var rows pgx.Rows
			if rows, err = br.Query(); err == nil {
				found, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (deviceRef, error) {
					var d deviceRef
					return d, row.Scan(&d.user, &d.device)
				})
			}
		}
		if cerr := br.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("recording the transaction ID and locking the target devices: %w", err)
		}
		if tag.RowsAffected() == 0 {
			return nil // a retry: the first attempt sent them
		}
		if len(found) == 0 {
			return nil // no such devices: nothing to store, no position
		}
		// An explicit device ID wins over "*" for that device.
		// (A device named and covered by "*" comes twice: once is enough.)
		found = slices.Compact(found)
		var tUsers, tDevices, tContents []string
		for _, d := range found {
			c, ok := m.Messages[d.user][d.device]
			if !ok {
				c = m.Messages[d.user]["*"]
			}
			tUsers, tDevices, tContents = append(tUsers, string(d.user)), append(tDevices, string(d.device)), append(tContents, string(c))
		}
		pos, err := next()
		if err != nil {
			return err
		}
		// Each message's seq follows its device's newest waiting one (one
		// probe of the primary key); inserts happen under the stream
		// lock, so none for the same device race.
		rows, err := tx.Query(ctx, `INSERT INTO to_device_messages (user_id, device_id, stream_pos, seq, sender, type, content)
			SELECT t.user_id, t.device_id, $4,
				coalesce((SELECT x.seq FROM to_device_messages x WHERE x.user_id = t.user_id AND x.device_id = t.device_id
					ORDER BY x.stream_pos DESC LIMIT 1), 0) + 1,
				$5, $6, t.content::json
			FROM unnest($1::text[], $2::text[], $3::text[]) AS t(user_id, device_id, content)
			RETURNING user_id, device_id, seq`,
			tUsers, tDevices, tContents, pos, m.Sender, m.Type)
		if err != nil {
			return fmt.Errorf("storing to-device messages: %w", err)
		}
		type stored struct {
			deviceRef
			seq int64
		}
		got, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (stored, error) {
			var s stored
			return s, row.Scan(&s.user, &s.device, &s.seq)
		})
		if err != nil {
			return fmt.Errorf("storing to-device messages: %w", err)
		}
		// A device can hold more than m.Backlog only if its newest seq is
		// above it (seq counts from the oldest up to the newest without a
		// gap). Then drop its messages with seq up to newest - m.Backlog:
		// the cut-off is found by counting that many from the oldest, so
		// the work is the number dropped, not the backlog.
		b = &pgx.Batch{}
		for _, s := range got {
			if s.seq <= int64(m.Backlog) {
				continue
			}
			b.Queue(`WITH oldest AS (
					SELECT seq FROM to_device_messages WHERE user_id = $1 AND device_id = $2 ORDER BY stream_pos LIMIT 1
				)
				DELETE FROM to_device_messages WHERE user_id = $1 AND device_id = $2 AND (SELECT seq FROM oldest) <= $3 AND stream_pos <= (
					SELECT stream_pos FROM to_device_messages WHERE user_id = $1 AND device_id = $2 ORDER BY stream_pos
					OFFSET greatest($3 - (SELECT seq FROM oldest), 0) LIMIT 1)`,
				s.user, s.device, s.seq-int64(m.Backlog))
		}
		if b.Len() == 0 {
			return nil
		}
		br = tx.SendBatch(ctx, b)
		for range b.Len() {
			tag, err := br.Exec()
			if err != nil {
				_ = br.Close()
				return fmt.Errorf("trimming a to-device backlog: %w", err)
			}
			dropped += int(tag.RowsAffected())
		}
		return br.Close()
	})
	if err != nil {
		return 0, err
	}
	return dropped, nil
}

type deviceRef struct {
	user   id.UserID
	device id.DeviceID
}

// AckToDevice deletes the device's messages at or below upTo.
func (s *Sync) AckToDevice(ctx context.Context, user id.UserID, device id.DeviceID, upTo int64) error {
	if _, err := s.db.pool.Exec(ctx, `DELETE FROM to_device_messages WHERE user_id = $1 AND device_id = $2 AND stream_pos <= $3`,
		user, device, upTo); err != nil {
		return fmt.Errorf("deleting delivered to-device messages: %w", err)
	}
	return nil
}

func (r *syncReader) ToDevice(user id.UserID, device id.DeviceID, since, to int64, limit int) ([]syncapi.ToDeviceMessage, error) {
	rows, err := r.tx.Query(r.ctx, `SELECT stream_pos, sender, type, content::text FROM to_device_messages
		WHERE user_id = $1 AND device_id = $2 AND stream_pos > $3 AND stream_pos <= $4
		ORDER BY stream_pos LIMIT $5`, user, device, since, to, limit)
	if err != nil {
		return nil, fmt.Errorf("reading to-device messages: %w", err)
	}
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (syncapi.ToDeviceMessage, error) {
		var m syncapi.ToDeviceMessage
		var content string
		err := row.Scan(&m.Pos, &m.Sender, &m.Type, &content)
		m.Content = []byte(content)
		return m, err
	})
}
