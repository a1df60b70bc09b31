package storage

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"maunium.net/go/mautrix/id"

	"github.com/weftchat/weft/account"
	"github.com/weftchat/weft/syncapi"
)

var _ account.KeyStore = (*Accounts)(nil)

// Lock order for keys, so that no two transactions wait for each other in a
// cycle: a user's row in users (cross-signing uploads only), then
// cross_signing_keys rows, then device_keys rows, each set in (user_id,
// device_id) order, and the stream lock last (recordDeviceListChange after
// every row write).

func isForeignKeyViolation(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "23503"
}

func (a *Accounts) UploadKeys(ctx context.Context, user id.UserID, device id.DeviceID, up account.KeyUpload) (map[id.KeyAlgorithm]int, error) {
	var rooms []id.RoomID
	if up.Device != nil {
		var err error
		if rooms, err = a.joinedRoomsOf(ctx, []string{string(user)}); err != nil {
			return nil, err
		}
	}
	var counts map[id.KeyAlgorithm]int
	err := a.db.inStreamTx(ctx, syncapi.KindDeviceLists, rooms, []id.UserID{user}, func(tx pgx.Tx, next func() (int64, error)) error {
		// Device keys first: a device's deletion locks that row before the
		// device's others (lock order), and the stream lock last.
		changed := false
		if up.Device != nil {
			var err error
			if changed, err = upsertDeviceKeys(ctx, tx, user, device, up.Device); err != nil {
				return err
			}
		}
		if err := insertOneTimeKeys(ctx, tx, user, device, up.OneTime); err != nil {
			return err
		}
		if len(up.Fallback) > 0 {
			ids, algs, jsons := keyColumns(up.Fallback)
			// Uploading the same key again (a retry) keeps its used mark;
			// any other key replaces it as unused.
			_, err := tx.Exec(ctx, `INSERT INTO fallback_keys (user_id, device_id, algorithm, key_id, key_json)
				SELECT $1, $2, a, k, j::json FROM unnest($3::text[], $4::text[], $5::text[]) AS u(k, a, j)
				ON CONFLICT (user_id, device_id, algorithm) DO UPDATE SET key_id = EXCLUDED.key_id, key_json = EXCLUDED.key_json,
					used = fallback_keys.used AND fallback_keys.key_id = EXCLUDED.key_id AND fallback_keys.key_json::text = EXCLUDED.key_json::text`,
				user, device, ids, algs, jsons)
			if err != nil {
				return fmt.Errorf("storing fallback keys: %w", err)
			}
		}
		var err error
		if counts, _, err = keyCounts(ctx, tx, user, device); err != nil {
			return err
		}
		if changed {
			return recordDeviceListChange(ctx, tx, next, user)
		}
		return nil
	})
	if isForeignKeyViolation(err) {
		return nil, account.ErrNotFound
	}
	return counts, err
}

// insertOneTimeKeys stores new one-time keys. A key ID already stored is
// accepted if its content is the same (a retried upload) and refused
// otherwise. The check runs after the insert: ON CONFLICT waits for a
// concurrent insert of the same key to commit, so the stored row it then
// compares with is final.
func insertOneTimeKeys(ctx context.Context, tx pgx.Tx, user id.UserID, device id.DeviceID, keys []account.OneTimeKeyUpload) error {
	if len(keys) == 0 {
		return nil
	}
	ids, algs, jsons := keyColumns(keys)
	rows, err := tx.Query(ctx, `INSERT INTO one_time_keys (user_id, device_id, key_id, algorithm, key_json)
		SELECT $1, $2, k, a, j::json FROM unnest($3::text[], $4::text[], $5::text[]) WITH ORDINALITY AS u(k, a, j, n) ORDER BY n
		ON CONFLICT (user_id, device_id, key_id) DO NOTHING RETURNING key_id`, user, device, ids, algs, jsons)
	if err != nil {
		return fmt.Errorf("storing one-time keys: %w", err)
	}
	inserted, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return fmt.Errorf("storing one-time keys: %w", err)
	}
	if len(inserted) == len(keys) {
		return nil
	}
	var again []string
	want := map[string]string{}
	for i, k := range ids {
		if !slices.Contains(inserted, k) {
			again = append(again, k)
			want[k] = jsons[i]
		}
	}
	rows, err = tx.Query(ctx, `SELECT key_id, key_json::text FROM one_time_keys WHERE user_id = $1 AND device_id = $2 AND key_id = ANY($3)`,
		user, device, again)
	if err != nil {
		return fmt.Errorf("comparing one-time keys: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var k, j string
		if err := rows.Scan(&k, &j); err != nil {
			return err
		}
		if j != want[k] {
			return fmt.Errorf("%s: %w", k, account.ErrOneTimeKeyReused)
		}
	}
	// A key ID not found now was claimed since the insert skipped it: it
	// is the same key, already handed out, and stays gone.
	return rows.Err()
}

// upsertDeviceKeys stores the device's keys and reports whether what
// /keys/query shows changed. Signatures added later cover everything but
// the signatures: they stay only while the rest is unchanged. The
// conflicting row is locked by ON CONFLICT even when its WHERE skips the
// update, so the follow-up read is current.
func upsertDeviceKeys(ctx context.Context, tx pgx.Tx, user id.UserID, device id.DeviceID, dk *account.DeviceKeysUpload) (bool, error) {
	tag, err := tx.Exec(ctx, `INSERT INTO device_keys (user_id, device_id, key_json, identity) VALUES ($1, $2, $3::json, $4)
		ON CONFLICT (user_id, device_id) DO UPDATE SET key_json = EXCLUDED.key_json,
			extra_sigs = CASE WHEN device_keys.key_json::jsonb - 'signatures' = EXCLUDED.key_json::jsonb - 'signatures'
				THEN device_keys.extra_sigs ELSE '{}' END
		WHERE device_keys.identity = EXCLUDED.identity AND device_keys.key_json::text <> EXCLUDED.key_json::text`,
		user, device, string(dk.JSON), dk.Identity)
	if err != nil {
		return false, fmt.Errorf("storing device keys: %w", err)
	}
	if tag.RowsAffected() == 1 {
		return true, nil
	}
	var same bool
	if err := tx.QueryRow(ctx, `SELECT identity = $3 FROM device_keys WHERE user_id = $1 AND device_id = $2`,
		user, device, dk.Identity).Scan(&same); err != nil {
		return false, fmt.Errorf("comparing device keys: %w", err)
	}
	if !same {
		return false, account.ErrDeviceKeysChanged
	}
	return false, nil
}

func keyColumns(keys []account.OneTimeKeyUpload) (ids, algs, jsons []string) {
	for _, k := range keys {
		ids = append(ids, string(k.KeyID))
		algs = append(algs, string(k.Algorithm))
		jsons = append(jsons, string(k.JSON))
	}
	return ids, algs, jsons
}

// keyCounts reads both answers in one round trip: /sync asks on every
// response.
func keyCounts(ctx context.Context, q interface {
	Query(context.Context, string, ...any) (pgx.Rows, error)
}, user id.UserID, device id.DeviceID) (map[id.KeyAlgorithm]int, []id.KeyAlgorithm, error) {
	rows, err := q.Query(ctx, `
		SELECT algorithm, count(*)::int, false FROM one_time_keys WHERE user_id = $1 AND device_id = $2 GROUP BY algorithm
		UNION ALL
		SELECT algorithm, 0, true FROM fallback_keys WHERE user_id = $1 AND device_id = $2 AND NOT used`, user, device)
	if err != nil {
		return nil, nil, fmt.Errorf("counting keys: %w", err)
	}
	defer rows.Close()
	counts := map[id.KeyAlgorithm]int{}
	fallback := []id.KeyAlgorithm{}
	for rows.Next() {
		var alg id.KeyAlgorithm
		var n int
		var isFallback bool
		if err := rows.Scan(&alg, &n, &isFallback); err != nil {
			return nil, nil, err
		}
		if isFallback {
			fallback = append(fallback, alg)
		} else {
			counts[alg] = n
		}
	}
	slices.Sort(fallback)
	return counts, fallback, rows.Err()
}

func (a *Accounts) OneTimeKeyCounts(ctx context.Context, user id.UserID, device id.DeviceID) (map[id.KeyAlgorithm]int, []id.KeyAlgorithm, error) {
	return keyCounts(ctx, a.db.pool, user, device)
}

func (a *Accounts) DeviceKeys(ctx context.Context, query map[id.UserID][]id.DeviceID) ([]account.StoredDeviceKeys, error) {
	var allOf, pairUsers, pairDevices []string
	for user, devices := range query {
		if len(devices) == 0 {
			allOf = append(allOf, string(user))
			continue
		}
		for _, d := range devices {
			pairUsers = append(pairUsers, string(user))
			pairDevices = append(pairDevices, string(d))
		}
	}
	// Two index lookups rather than one OR, which the planner would answer
	// with a scan of the table. A user is in one list or the other.
	rows, err := a.db.pool.Query(ctx, `
		SELECT k.user_id, k.device_id, coalesce(d.display_name, ''), k.key_json::text, k.extra_sigs::text
		FROM device_keys k JOIN devices d USING (user_id, device_id)
		WHERE k.user_id = ANY($1)
		UNION ALL
		SELECT k.user_id, k.device_id, coalesce(d.display_name, ''), k.key_json::text, k.extra_sigs::text
		FROM unnest($2::text[], $3::text[]) AS p(user_id, device_id)
		JOIN device_keys k USING (user_id, device_id) JOIN devices d USING (user_id, device_id)
		ORDER BY 1, 2`, allOf, pairUsers, pairDevices)
	if err != nil {
		return nil, fmt.Errorf("reading device keys: %w", err)
	}
	defer rows.Close()
	var out []account.StoredDeviceKeys
	for rows.Next() {
		var d account.StoredDeviceKeys
		var keyJSON, extra string
		if err := rows.Scan(&d.UserID, &d.DeviceID, &d.DisplayName, &keyJSON, &extra); err != nil {
			return nil, err
		}
		d.JSON = json.RawMessage(keyJSON)
		if err := json.Unmarshal([]byte(extra), &d.Extra); err != nil {
			return nil, fmt.Errorf("signatures on device %s of %s: %w", d.DeviceID, d.UserID, err)
		}
		out = append(out, d)
	}
	return out, rows.Err()
}

func (a *Accounts) CrossSigningKeys(ctx context.Context, users []id.UserID) ([]account.StoredCrossSigningKey, error) {
	rows, err := a.db.pool.Query(ctx, `SELECT user_id, usage, public_key, key_json::text, extra_sigs::text
		FROM cross_signing_keys WHERE user_id = ANY($1) ORDER BY user_id, usage`, userStrings(users))
	if err != nil {
		return nil, fmt.Errorf("reading cross-signing keys: %w", err)
	}
	defer rows.Close()
	var out []account.StoredCrossSigningKey
	for rows.Next() {
		var k account.StoredCrossSigningKey
		var keyJSON, extra string
		if err := rows.Scan(&k.UserID, &k.Usage, &k.PublicKey, &keyJSON, &extra); err != nil {
			return nil, err
		}
		k.JSON = json.RawMessage(keyJSON)
		if err := json.Unmarshal([]byte(extra), &k.Extra); err != nil {
			return nil, fmt.Errorf("signatures on the %s key of %s: %w", k.Usage, k.UserID, err)
		}
		out = append(out, k)
	}
	return out, rows.Err()
}

// ClaimKeys takes each claimed device's oldest one-time key with DELETE ...
// RETURNING: a row is returned only to the transaction that deleted it, so
// no key is handed out twice. FOR UPDATE SKIP LOCKED makes concurrent
// claims on one device take different keys instead of queueing on the
// oldest (and finding it gone). The fallback keys are read in the same
// transaction, so a claim is all or nothing: a failure loses no key.
func (a *Accounts) ClaimKeys(ctx context.Context, claims []account.KeyClaim) ([]account.ClaimedKey, error) {
	var out []account.ClaimedKey
	err := a.db.inTx(ctx, pgx.TxOptions{}, func(tx pgx.Tx) error {
		out = out[:0]
		users, devices, algs := claimColumns(claims)
		rows, err := tx.Query(ctx, `
			WITH picked AS (
				SELECT o.user_id, o.device_id, o.key_id
				FROM unnest($1::text[], $2::text[], $3::text[]) AS c(user_id, device_id, algorithm)
				CROSS JOIN LATERAL (
					SELECT k.user_id, k.device_id, k.key_id FROM one_time_keys k
					WHERE k.user_id = c.user_id AND k.device_id = c.device_id AND k.algorithm = c.algorithm
					ORDER BY k.seq LIMIT 1 FOR UPDATE SKIP LOCKED) o)
			DELETE FROM one_time_keys k USING picked
			WHERE k.user_id = picked.user_id AND k.device_id = picked.device_id AND k.key_id = picked.key_id
			RETURNING k.user_id, k.device_id, k.key_id, k.key_json::text`, users, devices, algs)
		if err != nil {
			return fmt.Errorf("claiming one-time keys: %w", err)
		}
		got, err := collectClaimed(rows, false)
		if err != nil {
			return fmt.Errorf("claiming one-time keys: %w", err)
		}
		out = append(out, got...)
		var rest []account.KeyClaim
		for _, c := range claims {
			if !slices.ContainsFunc(got, func(k account.ClaimedKey) bool { return k.UserID == c.UserID && k.DeviceID == c.DeviceID }) {
				rest = append(rest, c)
			}
		}
		if len(rest) == 0 {
			return nil
		}
		users, devices, algs = claimColumns(rest)
		// Only the first claim of a fallback key writes (marks it used):
		// later ones only read, so a device that ran out of one-time keys
		// is not a hot row every claimer queues on. The SELECT sees the
		// statement's snapshot; a replacement uploaded meanwhile may be
		// the one marked used, and the client uploads another.
		rows, err = tx.Query(ctx, `
			WITH c AS (SELECT * FROM unnest($1::text[], $2::text[], $3::text[]) AS c(user_id, device_id, algorithm)),
			marked AS (
				UPDATE fallback_keys f SET used = true FROM c
				WHERE f.user_id = c.user_id AND f.device_id = c.device_id AND f.algorithm = c.algorithm AND NOT f.used)
			SELECT f.user_id, f.device_id, f.key_id, f.key_json::text
			FROM fallback_keys f JOIN c USING (user_id, device_id, algorithm)`, users, devices, algs)
		if err != nil {
			return fmt.Errorf("claiming fallback keys: %w", err)
		}
		got, err = collectClaimed(rows, true)
		if err != nil {
			return fmt.Errorf("claiming fallback keys: %w", err)
		}
		out = append(out, got...)
		return nil
	})
	return out, err
}

func claimColumns(claims []account.KeyClaim) (users, devices, algs []string) {
	for _, c := range claims {
		users = append(users, string(c.UserID))
		devices = append(devices, string(c.DeviceID))
		algs = append(algs, string(c.Algorithm))
	}
	return users, devices, algs
}

func collectClaimed(rows pgx.Rows, fallback bool) ([]account.ClaimedKey, error) {
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (account.ClaimedKey, error) {
		var k account.ClaimedKey
		var keyJSON string
		err := row.Scan(&k.UserID, &k.DeviceID, &k.KeyID, &keyJSON)
		k.JSON, k.Fallback = json.RawMessage(keyJSON), fallback
		return k, err
	})
}

func (a *Accounts) UploadCrossSigningKeys(ctx context.Context, user id.UserID, u account.CrossSigningUpdate) error {
	rooms, err := a.joinedRoomsOf(ctx, []string{string(user)})
	if err != nil {
		return err
	}
	return a.db.inStreamTx(ctx, syncapi.KindDeviceLists, rooms, []id.UserID{user}, func(tx pgx.Tx, next func() (int64, error)) error {
		// The user's row serialises their cross-signing uploads, also the
		// first one, when there is no cross_signing_keys row to lock yet.
		if _, err := tx.Exec(ctx, `SELECT 1 FROM users WHERE user_id = $1 FOR UPDATE`, user); err != nil {
			return fmt.Errorf("locking user: %w", err)
		}
		rows, err := tx.Query(ctx, `SELECT usage, public_key FROM cross_signing_keys WHERE user_id = $1 ORDER BY usage FOR UPDATE`, user)
		if err != nil {
			return fmt.Errorf("reading cross-signing keys: %w", err)
		}
		old := map[id.CrossSigningUsage]string{}
		for rows.Next() {
			var usage id.CrossSigningUsage
			var pub string
			if err := rows.Scan(&usage, &pub); err != nil {
				rows.Close()
				return err
			}
			old[usage] = pub
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		if old[id.XSUsageMaster] != u.ExpectMaster {
			return account.ErrCrossSigningChanged
		}
		gone := map[id.CrossSigningUsage]string{} // usage → public key replaced or deleted
		for _, k := range u.Keys {
			// The same public key keeps the signatures added to it.
			if _, err := tx.Exec(ctx, `INSERT INTO cross_signing_keys (user_id, usage, public_key, key_json) VALUES ($1, $2, $3, $4::json)
				ON CONFLICT (user_id, usage) DO UPDATE SET public_key = EXCLUDED.public_key, key_json = EXCLUDED.key_json,
					extra_sigs = CASE WHEN cross_signing_keys.public_key = EXCLUDED.public_key THEN cross_signing_keys.extra_sigs ELSE '{}' END`,
				user, k.Usage, k.PublicKey, string(k.JSON)); err != nil {
				return fmt.Errorf("storing the %s key: %w", k.Usage, err)
			}
			if pub, ok := old[k.Usage]; ok && pub != k.PublicKey {
				gone[k.Usage] = pub
			}
		}
		if len(u.Delete) > 0 {
			usages := make([]string, len(u.Delete))
			for i, d := range u.Delete {
				usages[i] = string(d)
				if pub, ok := old[d]; ok {
					gone[d] = pub
				}
			}
			if _, err := tx.Exec(ctx, `DELETE FROM cross_signing_keys WHERE user_id = $1 AND usage = ANY($2)`, user, usages); err != nil {
				return fmt.Errorf("deleting cross-signing keys: %w", err)
			}
		}
		// A self-signing key's signatures on the user's devices prove
		// nothing once it is replaced. (A replaced user-signing key's
		// signatures on others' master keys are shown only to this user,
		// whose clients check them against the new key and ignore them.)
		if pub, ok := gone[id.XSUsageSelfSigning]; ok {
			if _, err := tx.Exec(ctx, `UPDATE device_keys SET extra_sigs = extra_sigs #- ARRAY[$1, $2]
				WHERE user_id = $1 AND extra_sigs -> $1 ? $2`, string(user), "ed25519:"+pub); err != nil {
				return fmt.Errorf("dropping the old self-signing key's signatures: %w", err)
			}
		}
		return recordDeviceListChange(ctx, tx, next, user)
	})
}

// AddSignatures applies the signatures in the lock order (cross-signing
// keys, then device keys, each in key order), then records one device-list
// change per target user.
func (a *Accounts) AddSignatures(ctx context.Context, sigs []account.KeySignature) ([]bool, error) {
	order := make([]int, len(sigs))
	for i := range order {
		order[i] = i
	}
	slices.SortStableFunc(order, func(x, y int) int {
		sx, sy := sigs[x], sigs[y]
		// Master keys ("" device) before devices, then by user and device.
		if (sx.TargetDevice == "") != (sy.TargetDevice == "") {
			if sx.TargetDevice == "" {
				return -1
			}
			return 1
		}
		if c := strings.Compare(string(sx.TargetUser), string(sy.TargetUser)); c != 0 {
			return c
		}
		return strings.Compare(string(sx.TargetDevice), string(sy.TargetDevice))
	})
	var targets []string
	for _, s := range sigs {
		if !slices.Contains(targets, string(s.TargetUser)) {
			targets = append(targets, string(s.TargetUser))
		}
	}
	slices.Sort(targets)
	rooms, err := a.joinedRoomsOf(ctx, targets)
	if err != nil {
		return nil, err
	}
	users := make([]id.UserID, len(targets))
	for i, t := range targets {
		users[i] = id.UserID(t)
	}
	added := make([]bool, len(sigs))
	err = a.db.inStreamTx(ctx, syncapi.KindDeviceLists, rooms, users, func(tx pgx.Tx, next func() (int64, error)) error {
		clear(added)
		changed := map[id.UserID]bool{}
		for _, i := range order {
			s := sigs[i]
			const merge = `extra_sigs = jsonb_set(extra_sigs, ARRAY[$3::text], coalesce(extra_sigs -> $3::text, '{}') || jsonb_build_object($4::text, $5::text))`
			var tag pgconn.CommandTag
			var err error
			if s.TargetDevice == "" {
				tag, err = tx.Exec(ctx, `UPDATE cross_signing_keys SET `+merge+`
					WHERE user_id = $1 AND usage = 'master' AND key_json::text = $2`,
					s.TargetUser, string(s.Expect), s.Signer, s.SignerKeyID, s.Signature)
			} else {
				tag, err = tx.Exec(ctx, `UPDATE device_keys SET `+merge+`
					WHERE user_id = $1 AND device_id = $6 AND key_json::text = $2`,
					s.TargetUser, string(s.Expect), s.Signer, s.SignerKeyID, s.Signature, s.TargetDevice)
			}
			if err != nil {
				return fmt.Errorf("adding a signature to a key of %s: %w", s.TargetUser, err)
			}
			if tag.RowsAffected() == 1 {
				added[i] = true
				changed[s.TargetUser] = true
			}
		}
		for _, u := range users {
			if changed[u] {
				if err := recordDeviceListChange(ctx, tx, next, u); err != nil {
					return err
				}
			}
		}
		return nil
	})
	return added, err
}

func (a *Accounts) DeleteDevicesWithKeys(ctx context.Context, user id.UserID, devices []id.DeviceID) error {
	rooms, err := a.joinedRoomsOf(ctx, []string{string(user)})
	if err != nil {
		return err
	}
	ids := make([]string, len(devices))
	for i, d := range devices {
		ids[i] = string(d)
	}
	return a.db.inStreamTx(ctx, syncapi.KindDeviceLists, rooms, []id.UserID{user}, func(tx pgx.Tx, next func() (int64, error)) error {
		// Device keys first (the lock order); the rest of the device's
		// keys and tokens go by ON DELETE CASCADE.
		tag, err := tx.Exec(ctx, `DELETE FROM device_keys WHERE user_id = $1 AND device_id = ANY($2)`, user, ids)
		if err != nil {
			return fmt.Errorf("deleting device keys: %w", err)
		}
		if _, err := tx.Exec(ctx, `DELETE FROM devices WHERE user_id = $1 AND device_id = ANY($2)`, user, ids); err != nil {
			return fmt.Errorf("deleting devices: %w", err)
		}
		if tag.RowsAffected() == 0 {
			return nil // no device others could see went
		}
		return recordDeviceListChange(ctx, tx, next, user)
	})
}

func (a *Accounts) RecordDeviceListChange(ctx context.Context, user id.UserID) error {
	rooms, err := a.joinedRoomsOf(ctx, []string{string(user)})
	if err != nil {
		return err
	}
	return a.db.inStreamTx(ctx, syncapi.KindDeviceLists, rooms, []id.UserID{user}, func(tx pgx.Tx, next func() (int64, error)) error {
		return recordDeviceListChange(ctx, tx, next, user)
	})
}
