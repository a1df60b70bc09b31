package storage

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"maunium.net/go/mautrix/id"

	"github.com/weftchat/weft/account"
	"github.com/weftchat/weft/syncapi"
)

// Accounts implements account.Store.
type Accounts struct{ db *DB }

// Accounts returns the account store.
func (db *DB) Accounts() *Accounts { return &Accounts{db: db} }

var _ account.Store = (*Accounts)(nil)

func isUniqueViolation(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "23505"
}

func notFound(err error) error {
	if errors.Is(err, pgx.ErrNoRows) {
		return account.ErrNotFound
	}
	return err
}

func nullTime(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

func (a *Accounts) CreateUser(ctx context.Context, u account.User, displayName string, sess *account.NewSession, consumeRegToken string) error {
	return a.db.inTx(ctx, pgx.TxOptions{}, func(tx pgx.Tx) error {
		var hash *string
		if u.PasswordHash != "" {
			hash = &u.PasswordHash
		}
		_, err := tx.Exec(ctx, `INSERT INTO users (user_id, localpart, password_hash, is_admin, is_guest) VALUES ($1, $2, $3, $4, $5)`,
			u.UserID, u.Localpart, hash, u.IsAdmin, u.IsGuest)
		if isUniqueViolation(err) {
			return account.ErrUserExists
		}
		if err != nil {
			return fmt.Errorf("inserting user: %w", err)
		}
		if _, err := tx.Exec(ctx, `INSERT INTO profiles (user_id, displayname) VALUES ($1, $2)`, u.UserID, displayName); err != nil {
			return fmt.Errorf("inserting profile: %w", err)
		}
		if consumeRegToken != "" {
			tag, err := tx.Exec(ctx, `UPDATE registration_tokens SET pending = pending - 1, completed = completed + 1
				WHERE token = $1 AND pending > 0`, consumeRegToken)
			if err != nil {
				return fmt.Errorf("consuming registration token: %w", err)
			}
			if tag.RowsAffected() != 1 {
				return fmt.Errorf("registration token %q had no pending use to complete", consumeRegToken)
			}
		}
		if sess != nil {
			return createSession(ctx, tx, u.UserID, *sess)
		}
		return nil
	})
}

// createSession upserts the device and inserts the tokens. A known device
// keeps its display name: the spec ignores initial_device_display_name then.
func createSession(ctx context.Context, tx pgx.Tx, userID id.UserID, s account.NewSession) error {
	_, err := tx.Exec(ctx, `INSERT INTO devices (user_id, device_id, display_name, last_seen_at, last_seen_ip)
		VALUES ($1, $2, $3, now(), nullif($4, ''))
		ON CONFLICT (user_id, device_id) DO UPDATE SET
			last_seen_at = now(), last_seen_ip = coalesce(EXCLUDED.last_seen_ip, devices.last_seen_ip)`,
		userID, s.DeviceID, s.DisplayName, s.RemoteIP)
	if err != nil {
		return fmt.Errorf("upserting device: %w", err)
	}
	var refreshID *int64
	if s.RefreshTokenHash != nil {
		var parent *int64
		if s.RefreshParentID != 0 {
			parent = &s.RefreshParentID
		}
		var rid int64
		if err := tx.QueryRow(ctx, `INSERT INTO refresh_tokens (token_hash, user_id, device_id, parent_id) VALUES ($1, $2, $3, $4) RETURNING id`,
			s.RefreshTokenHash, userID, s.DeviceID, parent).Scan(&rid); err != nil {
			return fmt.Errorf("inserting refresh token: %w", err)
		}
		refreshID = &rid
	}
	if _, err := tx.Exec(ctx, `INSERT INTO access_tokens (token_hash, user_id, device_id, refresh_token_id, expires_at) VALUES ($1, $2, $3, $4, $5)`,
		s.AccessTokenHash, userID, s.DeviceID, refreshID, nullTime(s.AccessExpiresAt)); err != nil {
		return fmt.Errorf("inserting access token: %w", err)
	}
	return nil
}

const userColumns = `user_id, localpart, coalesce(password_hash, ''), is_admin, is_guest, deactivated, locked_until, created_at`

func scanUser(row pgx.Row) (*account.User, error) {
	var u account.User
	var locked *time.Time
	if err := row.Scan(&u.UserID, &u.Localpart, &u.PasswordHash, &u.IsAdmin, &u.IsGuest, &u.Deactivated, &locked, &u.CreatedAt); err != nil {
		return nil, notFound(err)
	}
	if locked != nil {
		u.LockedUntil = *locked
	}
	return &u, nil
}

func (a *Accounts) UserByLocalpart(ctx context.Context, localpart string) (*account.User, error) {
	return scanUser(a.db.pool.QueryRow(ctx, `SELECT `+userColumns+` FROM users WHERE lower(localpart) = lower($1)`, localpart))
}

func (a *Accounts) ListUsers(ctx context.Context) ([]account.User, error) {
	rows, err := a.db.pool.Query(ctx, `SELECT `+userColumns+` FROM users ORDER BY user_id`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []account.User
	for rows.Next() {
		u, err := scanUser(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, *u)
	}
	return out, rows.Err()
}

func (a *Accounts) SetAdmin(ctx context.Context, userID id.UserID, admin bool) error {
	tag, err := a.db.pool.Exec(ctx, `UPDATE users SET is_admin = $2 WHERE user_id = $1`, userID, admin)
	if err == nil && tag.RowsAffected() == 0 {
		return account.ErrNotFound
	}
	return err
}

func (a *Accounts) SetPassword(ctx context.Context, userID id.UserID, hash string, keepAll bool, keep id.DeviceID) ([]id.DeviceID, error) {
	var removed []id.DeviceID
	err := a.db.inTx(ctx, pgx.TxOptions{}, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `UPDATE users SET password_hash = $2 WHERE user_id = $1 AND NOT deactivated`, userID, hash)
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			return account.ErrNotFound
		}
		if keepAll {
			return nil
		}
		rows, err := tx.Query(ctx, `DELETE FROM devices WHERE user_id = $1 AND device_id <> $2 RETURNING device_id`, userID, keep)
		if err != nil {
			return err
		}
		removed, err = pgx.CollectRows(rows, pgx.RowTo[id.DeviceID])
		return err
	})
	return removed, err
}

func (a *Accounts) Deactivate(ctx context.Context, userID id.UserID) error {
	return a.db.inTx(ctx, pgx.TxOptions{}, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `UPDATE users SET deactivated = true, password_hash = NULL WHERE user_id = $1`, userID)
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			return account.ErrNotFound
		}
		if _, err := tx.Exec(ctx, `UPDATE profiles SET displayname = NULL, avatar_url = NULL WHERE user_id = $1`, userID); err != nil {
			return err
		}
		// Devices take their keys with them; the user's cross-signing
		// keys and key backups go too: nobody can use them again.
		for _, q := range []string{
			`DELETE FROM devices WHERE user_id = $1`,
			`DELETE FROM cross_signing_keys WHERE user_id = $1`,
			`DELETE FROM key_backup_versions WHERE user_id = $1`,
		} {
			if _, err := tx.Exec(ctx, q, userID); err != nil {
				return err
			}
		}
		return nil
	})
}

func (a *Accounts) RecordLoginFailure(ctx context.Context, userID id.UserID, now time.Time, window time.Duration, max int, lockUntil time.Time) (time.Time, error) {
	// One statement: concurrent failures cannot lose counts.
	var locked *time.Time
	err := a.db.pool.QueryRow(ctx, `
		UPDATE users SET
			failed_logins = CASE WHEN failure_window_start IS NULL OR failure_window_start <= $2::timestamptz - $3::interval
				THEN 1 ELSE failed_logins + 1 END,
			failure_window_start = CASE WHEN failure_window_start IS NULL OR failure_window_start <= $2::timestamptz - $3::interval
				THEN $2 ELSE failure_window_start END
		WHERE user_id = $1
		RETURNING CASE WHEN failed_logins >= $4 THEN $5::timestamptz END`,
		userID, now, window, max, lockUntil).Scan(&locked)
	if err != nil {
		return time.Time{}, err
	}
	if locked == nil {
		return time.Time{}, nil
	}
	_, err = a.db.pool.Exec(ctx, `UPDATE users SET locked_until = $2, failed_logins = 0, failure_window_start = NULL WHERE user_id = $1`, userID, *locked)
	return *locked, err
}

func (a *Accounts) ClearLoginFailures(ctx context.Context, userID id.UserID) error {
	_, err := a.db.pool.Exec(ctx, `UPDATE users SET failed_logins = 0, failure_window_start = NULL, locked_until = NULL
		WHERE user_id = $1 AND (failed_logins <> 0 OR locked_until IS NOT NULL)`, userID)
	return err
}

func (a *Accounts) CreateSession(ctx context.Context, userID id.UserID, sess account.NewSession) error {
	return a.db.inTx(ctx, pgx.TxOptions{}, func(tx pgx.Tx) error { return createSession(ctx, tx, userID, sess) })
}

func (a *Accounts) AccessToken(ctx context.Context, hash []byte) (*account.TokenInfo, error) {
	var ti account.TokenInfo
	var expires *time.Time
	var refreshID, parentID *int64
	err := a.db.pool.QueryRow(ctx, `
		SELECT t.user_id, t.device_id, u.is_guest, u.is_admin, u.deactivated, t.expires_at, t.refresh_token_id, r.parent_id
		FROM access_tokens t JOIN users u USING (user_id)
		LEFT JOIN refresh_tokens r ON r.id = t.refresh_token_id
		WHERE t.token_hash = $1`, hash).Scan(&ti.UserID, &ti.DeviceID, &ti.IsGuest, &ti.IsAdmin, &ti.Deactivated, &expires, &refreshID, &parentID)
	if err != nil {
		return nil, notFound(err)
	}
	if expires != nil {
		ti.ExpiresAt = *expires
	}
	if refreshID != nil {
		ti.RefreshTokenID = *refreshID
	}
	if parentID != nil {
		ti.RefreshParentID = *parentID
	}
	return &ti, nil
}

func (a *Accounts) RevokeRefreshParent(ctx context.Context, childRefreshID, parentID int64) error {
	// Deleting the parent cascades to its access tokens and sets the
	// child's parent_id to NULL (ON DELETE SET NULL).
	_, err := a.db.pool.Exec(ctx, `DELETE FROM refresh_tokens WHERE id = $1`, parentID)
	return err
}

func (a *Accounts) RefreshToken(ctx context.Context, hash []byte) (int64, id.UserID, id.DeviceID, error) {
	var rid int64
	var u id.UserID
	var d id.DeviceID
	err := a.db.pool.QueryRow(ctx, `SELECT r.id, r.user_id, r.device_id FROM refresh_tokens r JOIN users USING (user_id)
		WHERE r.token_hash = $1 AND NOT users.deactivated`, hash).Scan(&rid, &u, &d)
	return rid, u, d, notFound(err)
}

func (a *Accounts) ReplaceRefreshSession(ctx context.Context, userID id.UserID, sess account.NewSession) error {
	return a.db.inTx(ctx, pgx.TxOptions{}, func(tx pgx.Tx) error {
		// Using a refresh token proves its own parent is no longer needed.
		if _, err := tx.Exec(ctx, `DELETE FROM refresh_tokens WHERE id = (SELECT parent_id FROM refresh_tokens WHERE id = $1)`, sess.RefreshParentID); err != nil {
			return err
		}
		// The access tokens issued with the used refresh token end now.
		if _, err := tx.Exec(ctx, `DELETE FROM access_tokens WHERE refresh_token_id = $1`, sess.RefreshParentID); err != nil {
			return err
		}
		return createSession(ctx, tx, userID, sess)
	})
}

func (a *Accounts) TouchDevice(ctx context.Context, userID id.UserID, deviceID id.DeviceID, ip string, at time.Time) error {
	_, err := a.db.pool.Exec(ctx, `UPDATE devices SET last_seen_at = $3, last_seen_ip = $4 WHERE user_id = $1 AND device_id = $2`, userID, deviceID, at, ip)
	return err
}

func scanDevice(row pgx.Row) (*account.Device, error) {
	var d account.Device
	var seen *time.Time
	if err := row.Scan(&d.DeviceID, &d.DisplayName, &seen, &d.LastSeenIP); err != nil {
		return nil, notFound(err)
	}
	if seen != nil {
		d.LastSeenAt = *seen
	}
	return &d, nil
}

const deviceColumns = `device_id, coalesce(display_name, ''), last_seen_at, coalesce(last_seen_ip, '')`

func (a *Accounts) Devices(ctx context.Context, userID id.UserID) ([]account.Device, error) {
	rows, err := a.db.pool.Query(ctx, `SELECT `+deviceColumns+` FROM devices WHERE user_id = $1 ORDER BY device_id`, userID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []account.Device{}
	for rows.Next() {
		d, err := scanDevice(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, *d)
	}
	return out, rows.Err()
}

func (a *Accounts) Device(ctx context.Context, userID id.UserID, deviceID id.DeviceID) (*account.Device, error) {
	return scanDevice(a.db.pool.QueryRow(ctx, `SELECT `+deviceColumns+` FROM devices WHERE user_id = $1 AND device_id = $2`, userID, deviceID))
}

func (a *Accounts) RenameDevice(ctx context.Context, userID id.UserID, deviceID id.DeviceID, name string) error {
	tag, err := a.db.pool.Exec(ctx, `UPDATE devices SET display_name = $3 WHERE user_id = $1 AND device_id = $2`, userID, deviceID, name)
	if err == nil && tag.RowsAffected() == 0 {
		return account.ErrNotFound
	}
	return err
}

func (a *Accounts) DeleteDevices(ctx context.Context, userID id.UserID, deviceIDs []id.DeviceID) error {
	ids := make([]string, len(deviceIDs))
	for i, d := range deviceIDs {
		ids[i] = string(d)
	}
	_, err := a.db.pool.Exec(ctx, `DELETE FROM devices WHERE user_id = $1 AND device_id = ANY($2)`, userID, ids)
	return err
}

func (a *Accounts) DeleteAllDevices(ctx context.Context, userID id.UserID) error {
	_, err := a.db.pool.Exec(ctx, `DELETE FROM devices WHERE user_id = $1`, userID)
	return err
}

func (a *Accounts) Profile(ctx context.Context, userID id.UserID) (*account.Profile, error) {
	var p account.Profile
	err := a.db.pool.QueryRow(ctx, `SELECT coalesce(displayname, ''), coalesce(avatar_url, '') FROM profiles WHERE user_id = $1`, userID).
		Scan(&p.DisplayName, &p.AvatarURL)
	return &p, notFound(err)
}

func (a *Accounts) SetDisplayName(ctx context.Context, userID id.UserID, name string) error {
	_, err := a.db.pool.Exec(ctx, `UPDATE profiles SET displayname = nullif($2, '') WHERE user_id = $1`, userID, name)
	return err
}

func (a *Accounts) SetAvatarURL(ctx context.Context, userID id.UserID, url string) error {
	_, err := a.db.pool.Exec(ctx, `UPDATE profiles SET avatar_url = nullif($2, '') WHERE user_id = $1`, userID, url)
	return err
}

// SearchUsers matches the term against user IDs and display names,
// case-insensitively, as a substring. Without all, only users who share a
// room with the searcher or are joined to a public room qualify.
func (a *Accounts) SearchUsers(ctx context.Context, searcher id.UserID, term string, all bool, limit int) ([]account.DirectoryEntry, bool, error) {
	pattern := "%" + escapeLike(strings.ToLower(term)) + "%"
	rows, err := a.db.pool.Query(ctx, `
		SELECT u.user_id, coalesce(p.displayname, ''), coalesce(p.avatar_url, '')
		FROM users u JOIN profiles p USING (user_id)
		WHERE NOT u.deactivated AND NOT u.is_guest
		  AND (lower(u.user_id) LIKE $1 OR lower(p.displayname) LIKE $1)
		  AND ($2 OR u.user_id = $3
		       -- shares a room with the searcher
		       OR EXISTS (SELECT 1 FROM current_state a JOIN current_state b ON a.room_id = b.room_id
		                  WHERE a.type = 'm.room.member' AND a.state_key = u.user_id AND a.membership = 'join'
		                    AND b.type = 'm.room.member' AND b.state_key = $3 AND b.membership = 'join')
		       -- is in a room anyone may join
		       OR EXISTS (SELECT 1 FROM current_state m
		                  JOIN current_state jr ON jr.room_id = m.room_id AND jr.type = 'm.room.join_rules' AND jr.state_key = ''
		                  JOIN events je ON je.event_id = jr.event_id
		                  WHERE m.type = 'm.room.member' AND m.state_key = u.user_id AND m.membership = 'join'
		                    AND je.pdu -> 'content' ->> 'join_rule' = 'public'))
		ORDER BY (coalesce(lower(p.displayname) LIKE $4, false) OR lower(u.localpart) LIKE $4) DESC, u.user_id
		LIMIT $5`, pattern, all, searcher, escapeLike(strings.ToLower(term))+"%", limit+1)
	if err != nil {
		return nil, false, err
	}
	defer rows.Close()
	out := []account.DirectoryEntry{}
	for rows.Next() {
		var e account.DirectoryEntry
		if err := rows.Scan(&e.UserID, &e.DisplayName, &e.AvatarURL); err != nil {
			return nil, false, err
		}
		out = append(out, e)
	}
	limited := len(out) > limit
	if limited {
		out = out[:limit]
	}
	return out, limited, rows.Err()
}

func escapeLike(s string) string {
	return strings.NewReplacer(`\`, `\\`, `%`, `\%`, `_`, `\_`).Replace(s)
}

func (a *Accounts) SetAccountData(ctx context.Context, userID id.UserID, roomID id.RoomID, typ string, content json.RawMessage) (int64, error) {
	var pos int64
	err := a.db.inStreamTx(ctx, syncapi.KindAccountData, nil, []id.UserID{userID}, func(tx pgx.Tx, next func() (int64, error)) error {
		var err error
		if pos, err = next(); err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `INSERT INTO account_data (user_id, room_id, type, content, stream_pos) VALUES ($1, $2, $3, $4, $5)
			ON CONFLICT (user_id, room_id, type) DO UPDATE SET content = EXCLUDED.content, stream_pos = EXCLUDED.stream_pos`,
			userID, string(roomID), typ, []byte(content), pos)
		return err
	})
	return pos, err
}

func (a *Accounts) AccountData(ctx context.Context, userID id.UserID, roomID id.RoomID, typ string) (json.RawMessage, error) {
	var c []byte
	err := a.db.pool.QueryRow(ctx, `SELECT content FROM account_data WHERE user_id = $1 AND room_id = $2 AND type = $3`, userID, string(roomID), typ).Scan(&c)
	return c, notFound(err)
}

func (a *Accounts) CreateFilter(ctx context.Context, userID id.UserID, filter json.RawMessage) (string, error) {
	var fid int64
	err := a.db.pool.QueryRow(ctx, `INSERT INTO filters (user_id, filter) VALUES ($1, $2) RETURNING filter_id`, userID, []byte(filter)).Scan(&fid)
	return strconv.FormatInt(fid, 10), err
}

func (a *Accounts) Filter(ctx context.Context, userID id.UserID, filterID string) (json.RawMessage, error) {
	fid, err := strconv.ParseInt(filterID, 10, 64)
	if err != nil {
		return nil, account.ErrNotFound
	}
	var f []byte
	err = a.db.pool.QueryRow(ctx, `SELECT filter FROM filters WHERE user_id = $1 AND filter_id = $2`, userID, fid).Scan(&f)
	return f, notFound(err)
}

func (a *Accounts) CreateUIASession(ctx context.Context, s account.UIASession) error {
	var user *string
	if s.UserID != "" {
		u := string(s.UserID)
		user = &u
	}
	// Expired sessions are swept as new ones start; a reserved registration
	// token use is given back with them.
	if _, err := a.db.pool.Exec(ctx, `
		WITH gone AS (DELETE FROM uia_sessions WHERE expires_at < now() RETURNING reg_token)
		UPDATE registration_tokens t SET pending = pending - g.n
		FROM (SELECT reg_token, count(*) AS n FROM gone WHERE reg_token IS NOT NULL GROUP BY reg_token) g
		WHERE t.token = g.reg_token`); err != nil {
		return fmt.Errorf("sweeping expired UIA sessions: %w", err)
	}
	_, err := a.db.pool.Exec(ctx, `INSERT INTO uia_sessions (session_id, operation, user_id, expires_at) VALUES ($1, $2, $3, $4)`,
		s.ID, s.Operation, user, s.ExpiresAt)
	return err
}

func (a *Accounts) UIASession(ctx context.Context, sid string) (*account.UIASession, error) {
	var s account.UIASession
	var user, regToken *string
	err := a.db.pool.QueryRow(ctx, `SELECT session_id, operation, user_id, completed, reg_token, expires_at FROM uia_sessions
		WHERE session_id = $1 AND expires_at > now()`, sid).Scan(&s.ID, &s.Operation, &user, &s.Completed, &regToken, &s.ExpiresAt)
	if err != nil {
		return nil, notFound(err)
	}
	if user != nil {
		s.UserID = id.UserID(*user)
	}
	if regToken != nil {
		s.RegToken = *regToken
	}
	return &s, nil
}

func (a *Accounts) CompleteUIAStage(ctx context.Context, sessionID, stage, regToken string, now time.Time) error {
	return a.db.inTx(ctx, pgx.TxOptions{}, func(tx pgx.Tx) error {
		if regToken != "" {
			// Reserve a use atomically: two sessions racing for the last
			// use cannot both get it.
			tag, err := tx.Exec(ctx, `UPDATE registration_tokens SET pending = pending + 1
				WHERE token = $1 AND (expiry_time IS NULL OR expiry_time > $2)
				  AND (uses_allowed IS NULL OR pending + completed < uses_allowed)`, regToken, now)
			if err != nil {
				return err
			}
			if tag.RowsAffected() == 0 {
				return account.ErrNotFound
			}
		}
		_, err := tx.Exec(ctx, `UPDATE uia_sessions SET completed = array_append(completed, $2),
			reg_token = coalesce(nullif($3, ''), reg_token) WHERE session_id = $1`, sessionID, stage, regToken)
		return err
	})
}

func (a *Accounts) DeleteUIASession(ctx context.Context, sid string) error {
	_, err := a.db.pool.Exec(ctx, `DELETE FROM uia_sessions WHERE session_id = $1`, sid)
	return err
}

func (a *Accounts) RegistrationToken(ctx context.Context, token string) (*account.RegistrationToken, error) {
	var t account.RegistrationToken
	var expiry *time.Time
	err := a.db.pool.QueryRow(ctx, `SELECT token, uses_allowed, pending, completed, expiry_time FROM registration_tokens WHERE token = $1`, token).
		Scan(&t.Token, &t.UsesAllowed, &t.Pending, &t.Completed, &expiry)
	if err != nil {
		return nil, notFound(err)
	}
	if expiry != nil {
		t.ExpiryTime = *expiry
	}
	return &t, nil
}

func (a *Accounts) CreateRegistrationToken(ctx context.Context, t account.RegistrationToken) error {
	_, err := a.db.pool.Exec(ctx, `INSERT INTO registration_tokens (token, uses_allowed, expiry_time) VALUES ($1, $2, $3)`,
		t.Token, t.UsesAllowed, nullTime(t.ExpiryTime))
	return err
}

func (a *Accounts) CreateNonce(ctx context.Context, nonce string, expires time.Time) error {
	_, err := a.db.pool.Exec(ctx, `
		WITH swept AS (DELETE FROM registration_nonces WHERE expires_at < now())
		INSERT INTO registration_nonces (nonce, expires_at) VALUES ($1, $2)`, nonce, expires)
	return err
}

func (a *Accounts) UseNonce(ctx context.Context, nonce string, now time.Time) (bool, error) {
	tag, err := a.db.pool.Exec(ctx, `DELETE FROM registration_nonces WHERE nonce = $1 AND expires_at > $2`, nonce, now)
	return tag.RowsAffected() == 1, err
}
