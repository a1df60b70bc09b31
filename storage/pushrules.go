package storage

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"maunium.net/go/mautrix/id"

	"github.com/weftchat/weft/syncapi"
)

// PushRules stores users' push rules as their global m.push_rules account
// data, so /sync delivers a change like any account data. It implements
// push.Store.
type PushRules struct{ db *DB }

// PushRules returns the push rules store.
func (db *DB) PushRules() *PushRules { return &PushRules{db: db} }

const pushRulesType = "m.push_rules"

// PushRules is the user's stored m.push_rules content; nil when none.
func (p *PushRules) PushRules(ctx context.Context, user id.UserID) (json.RawMessage, error) {
	var c []byte
	err := p.db.pool.QueryRow(ctx, `SELECT content FROM account_data WHERE user_id = $1 AND room_id = '' AND type = $2`, user, pushRulesType).Scan(&c)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading push rules of %s: %w", user, err)
	}
	return c, nil
}

// PushRulesOf is the stored m.push_rules of those of users who have any.
func (p *PushRules) PushRulesOf(ctx context.Context, users []id.UserID) (map[id.UserID]json.RawMessage, error) {
	rows, err := p.db.pool.Query(ctx, `SELECT user_id, content FROM account_data WHERE user_id = ANY($1) AND room_id = '' AND type = $2`, users, pushRulesType)
	if err != nil {
		return nil, fmt.Errorf("reading push rules: %w", err)
	}
	defer rows.Close()
	out := map[id.UserID]json.RawMessage{}
	for rows.Next() {
		var u id.UserID
		var c []byte
		if err := rows.Scan(&u, &c); err != nil {
			return nil, fmt.Errorf("reading push rules: %w", err)
		}
		out[u] = c
	}
	return out, rows.Err()
}

// UpdatePushRules replaces the user's m.push_rules with fn(stored), stored
// being nil when there is none. Two writers of one user's rules are
// serialised by the row lock (taken after the stream lock, like every
// stream writer), so neither loses the other's change; a user with no row
// yet is serialised by the insert's unique key instead: the loser's
// transaction fails and is retried once.
func (p *PushRules) UpdatePushRules(ctx context.Context, user id.UserID, fn func(stored json.RawMessage) (json.RawMessage, error)) error {
	update := func() error {
		return p.db.inStreamTx(ctx, syncapi.KindAccountData, nil, []id.UserID{user}, func(tx pgx.Tx, next func() (int64, error)) error {
			pos, err := next()
			if err != nil {
				return err
			}
			var stored []byte
			err = tx.QueryRow(ctx, `SELECT content FROM account_data WHERE user_id = $1 AND room_id = '' AND type = $2 FOR UPDATE`, user, pushRulesType).Scan(&stored)
			exists := err == nil
			if err != nil && !errors.Is(err, pgx.ErrNoRows) {
				return fmt.Errorf("reading push rules of %s: %w", user, err)
			}
			content, err := fn(stored)
			if err != nil {
				return err
			}
			if exists {
				_, err = tx.Exec(ctx, `UPDATE account_data SET content = $4, stream_pos = $5 WHERE user_id = $1 AND room_id = $2 AND type = $3`,
					user, "", pushRulesType, []byte(content), pos)
			} else {
				_, err = tx.Exec(ctx, `INSERT INTO account_data (user_id, room_id, type, content, stream_pos) VALUES ($1, $2, $3, $4, $5)`,
					user, "", pushRulesType, []byte(content), pos)
			}
			if err != nil {
				return fmt.Errorf("writing push rules of %s: %w", user, err)
			}
			return nil
		})
	}
	err := update()
	if isUniqueViolation(err) {
		err = update()
	}
	return err
}
