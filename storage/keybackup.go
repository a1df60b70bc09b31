package storage

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/jackc/pgx/v5"
	"maunium.net/go/mautrix/id"

	"github.com/weftchat/weft/account"
)

var _ account.KeyBackupStore = (*Accounts)(nil)

// keyBackupLockSpace is the first key of the two-key advisory lock that
// serialises the writes to one user's key backup; the second is
// hashtext(user_id). Under it, "which version is current", a version's
// stored keys, key_count and etag are read and written without races:
// two uploads of one session cannot both find the slot empty, and a
// version created meanwhile cannot take keys meant for the one checked.
// Two-key advisory locks never collide with the one-key stream and
// migration locks; two users whose IDs share a hash merely wait for each
// other. Reads take no lock: each is one statement, one snapshot.
const keyBackupLockSpace int32 = 0x6b62 // "kb"

func lockKeyBackup(ctx context.Context, tx pgx.Tx, user id.UserID) error {
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1, hashtext($2))`, keyBackupLockSpace, string(user)); err != nil {
		return fmt.Errorf("locking the key backup of %s: %w", user, err)
	}
	return nil
}

// inKeyBackupTx runs fn in a transaction holding user's backup lock.
func (a *Accounts) inKeyBackupTx(ctx context.Context, user id.UserID, fn func(pgx.Tx) error) error {
	return a.db.inTx(ctx, pgx.TxOptions{}, func(tx pgx.Tx) error {
		if err := lockKeyBackup(ctx, tx, user); err != nil {
			return err
		}
		return fn(tx)
	})
}

func (a *Accounts) CreateKeyBackupVersion(ctx context.Context, user id.UserID, algorithm string, authData json.RawMessage) (int64, error) {
	var version int64
	err := a.inKeyBackupTx(ctx, user, func(tx pgx.Tx) error {
		// The maximum counts deleted versions too: numbers are never reused.
		return tx.QueryRow(ctx, `INSERT INTO key_backup_versions (user_id, version, algorithm, auth_data)
			SELECT $1, COALESCE(max(version), 0) + 1, $2, $3 FROM key_backup_versions WHERE user_id = $1
			RETURNING version`, string(user), algorithm, string(authData)).Scan(&version)
	})
	if err != nil {
		return 0, fmt.Errorf("storing a key backup version: %w", err)
	}
	return version, nil
}

func (a *Accounts) KeyBackupVersion(ctx context.Context, user id.UserID, version int64) (*account.KeyBackupInfo, error) {
	v := account.KeyBackupInfo{}
	var authData []byte
	err := a.db.pool.QueryRow(ctx, `SELECT version, algorithm, auth_data, key_count, etag FROM key_backup_versions
		WHERE user_id = $1 AND NOT deleted AND ($2 = 0 OR version = $2)
		ORDER BY version DESC LIMIT 1`, string(user), version).
		Scan(&v.Version, &v.Algorithm, &authData, &v.Count, &v.ETag)
	if err != nil {
		return nil, notFound(err)
	}
	v.AuthData = authData
	return &v, nil
}

func (a *Accounts) UpdateKeyBackupAuthData(ctx context.Context, user id.UserID, version int64, algorithm string, authData json.RawMessage) error {
	return a.inKeyBackupTx(ctx, user, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `UPDATE key_backup_versions SET auth_data = $4
			WHERE user_id = $1 AND version = $2 AND algorithm = $3 AND NOT deleted`,
			string(user), version, algorithm, string(authData))
		if err != nil {
			return fmt.Errorf("updating key backup version %d: %w", version, err)
		}
		if tag.RowsAffected() == 0 {
			return account.ErrNotFound
		}
		return nil
	})
}

func (a *Accounts) DeleteKeyBackupVersion(ctx context.Context, user id.UserID, version int64) error {
	return a.inKeyBackupTx(ctx, user, func(tx pgx.Tx) error {
		var deleted bool
		err := tx.QueryRow(ctx, `SELECT deleted FROM key_backup_versions WHERE user_id = $1 AND version = $2`,
			string(user), version).Scan(&deleted)
		if err != nil {
			return notFound(err)
		}
		if deleted {
			return nil
		}
		if _, err := tx.Exec(ctx, `DELETE FROM key_backup_keys WHERE user_id = $1 AND version = $2`, string(user), version); err != nil {
			return fmt.Errorf("deleting the keys of backup version %d: %w", version, err)
		}
		// The etag moves too, in case a client still holds the old one.
		if _, err := tx.Exec(ctx, `UPDATE key_backup_versions
			SET deleted = true, auth_data = NULL, key_count = 0, etag = etag + 1
			WHERE user_id = $1 AND version = $2`, string(user), version); err != nil {
			return fmt.Errorf("deleting backup version %d: %w", version, err)
		}
		return nil
	})
}

// backupSlot names one session's key within a version.
type backupSlot struct {
	room    id.RoomID
	session id.SessionID
}

func (a *Accounts) PutBackupKeys(ctx context.Context, user id.UserID, version int64, keys []account.BackupSessionKey, replace func(stored, candidate account.BackupKey) bool) (account.KeyBackupState, error) {
	var st account.KeyBackupState
	err := a.inKeyBackupTx(ctx, user, func(tx pgx.Tx) error {
		var current int64
		err := tx.QueryRow(ctx, `SELECT COALESCE(max(version), 0) FROM key_backup_versions WHERE user_id = $1 AND NOT deleted`,
			string(user)).Scan(&current)
		if err != nil {
			return fmt.Errorf("finding the current backup version: %w", err)
		}
		if current == 0 {
			return account.ErrNotFound
		}
		if version != current {
			return account.BackupVersionNotCurrent{Current: current}
		}
		stored, err := storedBackupKeys(ctx, tx, user, version, keys)
		if err != nil {
			return err
		}
		// writes holds one entry per slot: a slot named twice in keys is
		// decided against the better of the stored key and the earlier one.
		writes := make([]account.BackupSessionKey, 0, len(keys))
		at := make(map[backupSlot]int, len(keys))
		var added int64
		for _, k := range keys {
			slot := backupSlot{k.RoomID, k.SessionID}
			if i, ok := at[slot]; ok {
				if replace(writes[i].BackupKey, k.BackupKey) {
					writes[i] = k
				}
				continue
			}
			if old, ok := stored[slot]; ok {
				if !replace(old, k.BackupKey) {
					continue
				}
			} else {
				added++
			}
			at[slot] = len(writes)
			writes = append(writes, k)
		}
		if len(writes) == 0 {
			return tx.QueryRow(ctx, `SELECT key_count, etag FROM key_backup_versions WHERE user_id = $1 AND version = $2`,
				string(user), version).Scan(&st.Count, &st.ETag)
		}
		n := len(writes)
		rooms, sessions, data := make([]string, n), make([]string, n), make([]string, n)
		firsts, forwards, verified := make([]int64, n), make([]int64, n), make([]bool, n)
		for i, k := range writes {
			rooms[i], sessions[i], data[i] = string(k.RoomID), string(k.SessionID), string(k.SessionData)
			firsts[i], forwards[i], verified[i] = k.FirstMessageIndex, k.ForwardedCount, k.IsVerified
		}
		// Every row here won against what is stored (decided above, under
		// the lock), so a conflict simply overwrites.
		_, err = tx.Exec(ctx, `INSERT INTO key_backup_keys
			(user_id, version, room_id, session_id, first_message_index, forwarded_count, is_verified, session_data)
			SELECT $1, $2, u.room_id, u.session_id, u.first, u.forwarded, u.verified, u.data::json
			FROM unnest($3::text[], $4::text[], $5::bigint[], $6::bigint[], $7::boolean[], $8::text[])
				AS u(room_id, session_id, first, forwarded, verified, data)
			ON CONFLICT (user_id, version, room_id, session_id) DO UPDATE SET
				first_message_index = EXCLUDED.first_message_index,
				forwarded_count = EXCLUDED.forwarded_count,
				is_verified = EXCLUDED.is_verified,
				session_data = EXCLUDED.session_data`,
			string(user), version, rooms, sessions, firsts, forwards, verified, data)
		if err != nil {
			return fmt.Errorf("storing %d backup keys: %w", n, err)
		}
		return tx.QueryRow(ctx, `UPDATE key_backup_versions SET key_count = key_count + $3, etag = etag + 1
			WHERE user_id = $1 AND version = $2 RETURNING key_count, etag`,
			string(user), version, added).Scan(&st.Count, &st.ETag)
	})
	return st, err
}

// storedBackupKeys reads the metadata of the stored keys for the slots of
// keys (session_data is not needed to compare).
func storedBackupKeys(ctx context.Context, tx pgx.Tx, user id.UserID, version int64, keys []account.BackupSessionKey) (map[backupSlot]account.BackupKey, error) {
	rooms, sessions := make([]string, len(keys)), make([]string, len(keys))
	for i, k := range keys {
		rooms[i], sessions[i] = string(k.RoomID), string(k.SessionID)
	}
	rows, err := tx.Query(ctx, `SELECT k.room_id, k.session_id, k.first_message_index, k.forwarded_count, k.is_verified
		FROM key_backup_keys k
		JOIN unnest($3::text[], $4::text[]) AS u(room_id, session_id)
			ON k.room_id = u.room_id AND k.session_id = u.session_id
		WHERE k.user_id = $1 AND k.version = $2`, string(user), version, rooms, sessions)
	if err != nil {
		return nil, fmt.Errorf("reading stored backup keys: %w", err)
	}
	defer rows.Close()
	stored := map[backupSlot]account.BackupKey{}
	for rows.Next() {
		var slot backupSlot
		var k account.BackupKey
		if err := rows.Scan(&slot.room, &slot.session, &k.FirstMessageIndex, &k.ForwardedCount, &k.IsVerified); err != nil {
			return nil, fmt.Errorf("reading stored backup keys: %w", err)
		}
		stored[slot] = k
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("reading stored backup keys: %w", err)
	}
	return stored, nil
}

// backupKeyScope is the condition on key_backup_keys k (beyond user and
// version, $1 and $2) for all keys, a room's or one session's, and its
// arguments from $3. One query text per scope, so each is planned as a
// prefix of the primary key.
func backupKeyScope(room id.RoomID, session id.SessionID) (string, []any) {
	switch {
	case room == "":
		return "", nil
	case session == "":
		return " AND k.room_id = $3", []any{string(room)}
	default:
		return " AND k.room_id = $3 AND k.session_id = $4", []any{string(room), string(session)}
	}
}

func (a *Accounts) BackupKeys(ctx context.Context, user id.UserID, version int64, room id.RoomID, session id.SessionID) ([]account.BackupSessionKey, error) {
	cond, args := backupKeyScope(room, session)
	// One statement, so the version's existence and its keys come from one
	// snapshot: the version row always matches, with NULLs when it holds
	// no key in scope.
	rows, err := a.db.pool.Query(ctx, `SELECT k.room_id, k.session_id, k.first_message_index, k.forwarded_count, k.is_verified, k.session_data
		FROM key_backup_versions v
		LEFT JOIN key_backup_keys k ON k.user_id = v.user_id AND k.version = v.version`+cond+`
		WHERE v.user_id = $1 AND v.version = $2 AND NOT v.deleted
		ORDER BY k.room_id, k.session_id`, append([]any{string(user), version}, args...)...)
	if err != nil {
		return nil, fmt.Errorf("reading backup keys: %w", err)
	}
	defer rows.Close()
	found := false
	var out []account.BackupSessionKey
	for rows.Next() {
		found = true
		var roomID, sessionID *string
		var first, forwarded *int64
		var verified *bool
		var data []byte
		if err := rows.Scan(&roomID, &sessionID, &first, &forwarded, &verified, &data); err != nil {
			return nil, fmt.Errorf("reading backup keys: %w", err)
		}
		if roomID == nil {
			continue // the version, without keys in scope
		}
		out = append(out, account.BackupSessionKey{
			RoomID: id.RoomID(*roomID), SessionID: id.SessionID(*sessionID),
			BackupKey: account.BackupKey{FirstMessageIndex: *first, ForwardedCount: *forwarded, IsVerified: *verified, SessionData: data},
		})
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("reading backup keys: %w", err)
	}
	if !found {
		return nil, account.ErrNotFound
	}
	return out, nil
}

func (a *Accounts) DeleteBackupKeys(ctx context.Context, user id.UserID, version int64, room id.RoomID, session id.SessionID) (account.KeyBackupState, error) {
	var st account.KeyBackupState
	err := a.inKeyBackupTx(ctx, user, func(tx pgx.Tx) error {
		err := tx.QueryRow(ctx, `SELECT key_count, etag FROM key_backup_versions WHERE user_id = $1 AND version = $2 AND NOT deleted`,
			string(user), version).Scan(&st.Count, &st.ETag)
		if err != nil {
			return notFound(err)
		}
		cond, args := backupKeyScope(room, session)
		tag, err := tx.Exec(ctx, `DELETE FROM key_backup_keys k WHERE k.user_id = $1 AND k.version = $2`+cond,
			append([]any{string(user), version}, args...)...)
		if err != nil {
			return fmt.Errorf("deleting backup keys: %w", err)
		}
		if tag.RowsAffected() == 0 {
			return nil
		}
		return tx.QueryRow(ctx, `UPDATE key_backup_versions SET key_count = key_count - $3, etag = etag + 1
			WHERE user_id = $1 AND version = $2 RETURNING key_count, etag`,
			string(user), version, tag.RowsAffected()).Scan(&st.Count, &st.ETag)
	})
	return st, err
}
