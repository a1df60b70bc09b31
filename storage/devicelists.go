package storage

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
	"maunium.net/go/mautrix/id"
)

// recordDeviceListChange gives a change to user's devices or keys a stream
// position, inside a stream transaction (inStreamTx with
// syncapi.KindDeviceLists): call it in the same transaction as the change,
// so that a reader sees both or neither.
func recordDeviceListChange(ctx context.Context, tx pgx.Tx, next func() (int64, error), user id.UserID) error {
	pos, err := next()
	if err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, `INSERT INTO device_list_changes (stream_pos, user_id) VALUES ($1, $2)`, pos, user); err != nil {
		return fmt.Errorf("recording a device list change of %s: %w", user, err)
	}
	return nil
}
