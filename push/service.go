package push

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"sync"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"
)

// Store keeps users' push rules: their m.push_rules global account data
// (content {"global": ruleset}), written with a stream position so /sync
// delivers each change.
type Store interface {
	// PushRules is the user's stored content; nil when none is stored.
	PushRules(ctx context.Context, user id.UserID) (json.RawMessage, error)
	// PushRulesOf is the stored content of those users who have any.
	PushRulesOf(ctx context.Context, users []id.UserID) (map[id.UserID]json.RawMessage, error)
	// UpdatePushRules replaces the stored content with fn(stored)
	// atomically: concurrent updates of one user do not lose each other.
	UpdatePushRules(ctx context.Context, user id.UserID, fn func(stored json.RawMessage) (json.RawMessage, error)) error
}

// Service is the push rules API and the cache of compiled rules the
// evaluation of new events uses.
type Service struct {
	store Store
	log   *slog.Logger

	// evals caches each user's compiled rules. Only this process writes
	// rules today, and it replaces a user's entry after each write; with
	// several processes a write on another one will have to reach this
	// cache (LISTEN/NOTIFY, like the stream).
	mu    sync.Mutex
	evals map[id.UserID]*Evaluator
	// gen counts writes, so a load that raced a write does not cache what
	// it read before the write (see Evaluators).
	gen uint64
	// defaults serves every user with no rules of their own.
	defaults *Evaluator
}

// maxCachedEvaluators bounds the cache; past it the cache starts over.
const maxCachedEvaluators = 100_000

// NewService builds the push rules service.
func NewService(store Store, log *slog.Logger) *Service {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Service{store: store, log: log, evals: map[id.UserID]*Evaluator{}, defaults: CompileDefaults()}
}

// Rules is the user's whole ruleset: the server defaults with the user's
// changes and own rules.
func (s *Service) Rules(ctx context.Context, user id.UserID) (Ruleset, error) {
	stored, err := s.store.PushRules(ctx, user)
	if err != nil {
		return Ruleset{}, err
	}
	return s.render(stored, user), nil
}

// render is Render, falling back to the defaults (logged) when what is
// stored cannot be read: a user is better off with the defaults than with
// no notifications at all.
func (s *Service) render(stored json.RawMessage, user id.UserID) Ruleset {
	rs, err := Render(stored, user)
	if err != nil {
		s.log.Error("stored push rules are unreadable; using the defaults", "user", user, "err", err)
		return Defaults(user)
	}
	return rs
}

// Rule is one of the user's rules.
func (s *Service) Rule(ctx context.Context, user id.UserID, scope, kind, ruleID string) (Rule, error) {
	k, err := parseScopeKind(scope, kind)
	if err != nil {
		return Rule{}, err
	}
	rs, err := s.Rules(ctx, user)
	if err != nil {
		return Rule{}, err
	}
	return rs.Get(k, ruleID)
}

// PutRule creates or replaces a user-defined rule.
func (s *Service) PutRule(ctx context.Context, user id.UserID, scope, kind, ruleID, before, after string, body json.RawMessage) error {
	return s.edit(ctx, user, scope, kind, func(rs *Ruleset, k Kind) error { return rs.Put(k, ruleID, body, before, after) })
}

// DeleteRule deletes a user-defined rule.
func (s *Service) DeleteRule(ctx context.Context, user id.UserID, scope, kind, ruleID string) error {
	return s.edit(ctx, user, scope, kind, func(rs *Ruleset, k Kind) error { return rs.Delete(k, ruleID) })
}

// SetRuleEnabled enables or disables a rule (server-default ones too).
func (s *Service) SetRuleEnabled(ctx context.Context, user id.UserID, scope, kind, ruleID string, enabled bool) error {
	return s.edit(ctx, user, scope, kind, func(rs *Ruleset, k Kind) error { return rs.SetEnabled(k, ruleID, enabled) })
}

// SetRuleActions replaces a rule's actions (server-default ones too).
func (s *Service) SetRuleActions(ctx context.Context, user id.UserID, scope, kind, ruleID string, actions []Action) error {
	return s.edit(ctx, user, scope, kind, func(rs *Ruleset, k Kind) error { return rs.SetActions(k, ruleID, actions) })
}

// edit applies change to the user's rules and stores the result whole, in
// one transaction with the read, then replaces the user's compiled rules.
func (s *Service) edit(ctx context.Context, user id.UserID, scope, kind string, change func(*Ruleset, Kind) error) error {
	k, err := parseScopeKind(scope, kind)
	if err != nil {
		return err
	}
	var updated Ruleset
	err = s.store.UpdatePushRules(ctx, user, func(stored json.RawMessage) (json.RawMessage, error) {
		rs := s.render(stored, user)
		if err := change(&rs, k); err != nil {
			return nil, err
		}
		updated = rs
		return rs.AccountData()
	})
	if err != nil {
		return err
	}
	ev := Compile(updated, user)
	s.mu.Lock()
	s.gen++
	s.evals[user] = ev
	s.mu.Unlock()
	return nil
}

// parseScopeKind checks the path's scope (only "global" exists) and kind.
func parseScopeKind(scope, kind string) (Kind, error) {
	if scope != "global" {
		return "", mautrix.MInvalidParam.WithMessage(fmt.Sprintf("Unknown push rule scope %q: only global exists", scope))
	}
	return ParseKind(kind)
}

// Evaluators returns the compiled rules of each of users (out[i] is
// users[i]'s), loading those not cached in one query. Users with no rules
// of their own share one evaluator of the server defaults.
func (s *Service) Evaluators(ctx context.Context, users []id.UserID) ([]*Evaluator, error) {
	out := make([]*Evaluator, len(users))
	var missing []id.UserID
	s.mu.Lock()
	gen := s.gen
	for i, u := range users {
		if ev, ok := s.evals[u]; ok {
			out[i] = ev
		} else {
			missing = append(missing, u)
		}
	}
	s.mu.Unlock()
	if len(missing) == 0 {
		return out, nil
	}
	stored, err := s.store.PushRulesOf(ctx, missing)
	if err != nil {
		return nil, err
	}
	loaded := make(map[id.UserID]*Evaluator, len(missing))
	for _, u := range missing {
		if raw, ok := stored[u]; ok {
			loaded[u] = Compile(s.render(raw, u), u)
		} else {
			loaded[u] = s.defaults
		}
	}
	for i, u := range users {
		if out[i] == nil {
			out[i] = loaded[u]
		}
	}
	s.mu.Lock()
	// A write since the read may have replaced a user's rules; what was
	// read is then used for this evaluation only, not cached over it.
	if s.gen == gen {
		if len(s.evals)+len(loaded) > maxCachedEvaluators {
			clear(s.evals)
		}
		for u, ev := range loaded {
			s.evals[u] = ev
		}
	}
	s.mu.Unlock()
	return out, nil
}

// Warm loads into the cache the compiled rules of those of users not in
// it, so that evaluating an event for them later reads nothing.
func (s *Service) Warm(ctx context.Context, users []id.UserID) error {
	_, err := s.Evaluators(ctx, users)
	return err
}
