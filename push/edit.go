package push

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"
)

// The edit operations of the push rules API (pushrules.yaml), on a ruleset
// as Render gives it. Each either applies its change whole or returns a
// Matrix error and leaves the ruleset as it was. Errors:
//   - 404 M_NOT_FOUND: the rule named by the path does not exist;
//   - 400 M_INVALID_PARAM: the path's rule ID cannot name a rule of its
//     kind (a slash or backslash in it, a room rule not named by a room
//     ID, a sender rule not named by a user ID);
//   - 400 M_UNKNOWN: the rule cannot be configured that way: creating or
//     deleting a server-default rule (the "." namespace), placing a rule
//     before/after a rule that does not exist or is a server-default one.
//     M_UNKNOWN is the errcode pushrules.yaml shows for PUT's 400, whose
//     example is this very case ("before/after rule not found");
//   - 400 M_BAD_JSON: the body is JSON but not a valid rule (no actions,
//     an action or condition that is not one, no pattern for a content
//     rule);
//   - 413 M_TOO_LARGE: the change would exceed maxUserRules or
//     maxRulesetBytes.

// Limits on one user's rules. The ruleset is stored whole, read on every
// /pushrules call and by every /sync that carries it, and compiled for
// every evaluation, so it must stay small. The errcode is M_TOO_LARGE
// (413) rather than M_LIMIT_EXCEEDED: the latter is 429, which clients
// (matrix-js-sdk, mautrix) take for a rate limit and retry after a delay,
// forever, while this limit stays until the user deletes rules.
const (
	maxUserRules    = 1000
	maxRulesetBytes = 64 << 10 // the encoded m.push_rules content
)

func errRuleNotFound() error {
	return mautrix.MNotFound.WithMessage("The push rule was not found.")
}

func errRuleUnknown(format string, args ...any) error {
	return mautrix.MUnknown.WithMessage(format, args...).WithStatus(400) // MUnknown is 500 by default
}

func errRuleBadJSON(format string, args ...any) error {
	return mautrix.MBadJSON.WithMessage(format, args...)
}

func errRuleInvalidParam(format string, args ...any) error {
	return mautrix.MInvalidParam.WithMessage(format, args...)
}

// Get is the rule ruleID of kind k: M_NOT_FOUND when there is none.
func (rs *Ruleset) Get(k Kind, ruleID string) (Rule, error) {
	l := rs.list(k)
	if l == nil {
		return Rule{}, errRuleNotFound()
	}
	i := ruleIndex(*l, ruleID)
	if i < 0 {
		return Rule{}, errRuleNotFound()
	}
	r := (*l)[i]
	if r.Actions == nil {
		r.Actions = []Action{}
	}
	return r, nil
}

// Put creates or replaces the user-defined rule ruleID of kind k from body
// (PUT /pushrules/global/{kind}/{ruleId}): {"actions": [...]} plus
// "conditions" for override and underride rules (none: the rule always
// matches) or "pattern" for content rules (required). Keys of other kinds
// are ignored. A new rule is enabled; a replaced one keeps its enabled
// flag and its place unless before or after moves it.
//
// before (which wins when both are given) or after name a user-defined
// rule of the same kind, which the rule is placed just above or just
// below; with neither, a new rule becomes the most important user-defined
// rule of its kind.
func (rs *Ruleset) Put(k Kind, ruleID string, body json.RawMessage, before, after string) error {
	l := rs.list(k)
	if l == nil {
		return errRuleInvalidParam("Unknown push rule kind %q", string(k))
	}
	if err := checkNewRuleID(k, ruleID); err != nil {
		return err
	}
	rule, err := parseRuleBody(k, ruleID, body)
	if err != nil {
		return err
	}

	rules := slices.Clone(*l)
	at := -1 // where the rule goes in rules (after removing its old self)
	if i := ruleIndex(rules, ruleID); i >= 0 {
		rule.Enabled = rules[i].Enabled
		rules = slices.Delete(rules, i, i+1)
		at = i
	} else if rs.userRuleCount() >= maxUserRules {
		return mautrix.MTooLarge.WithMessage("Too many push rules: at most %d of your own", maxUserRules)
	}
	if anchor, below := before, false; before != "" || after != "" {
		if anchor == "" {
			anchor, below = after, true
		}
		i := ruleIndex(rules, anchor)
		switch {
		case i < 0:
			return errRuleUnknown("There is no %s rule %q to place this rule before or after", k, anchor)
		case rules[i].Default:
			return errRuleUnknown("A rule cannot be placed relative to the server-default rule %q", anchor)
		}
		at = i
		if below {
			at++
		}
	} else if at < 0 {
		at = userRulesStart(k, rules)
	}
	rules = slices.Insert(rules, at, rule)

	old := *l
	*l = rules
	if err := rs.checkSize(); err != nil {
		*l = old
		return err
	}
	return nil
}

// checkNewRuleID refuses the rule IDs a user cannot create.
func checkNewRuleID(k Kind, ruleID string) error {
	switch {
	case ruleID == "":
		return errRuleInvalidParam("A push rule ID cannot be empty")
	case strings.ContainsAny(ruleID, `/\`):
		return errRuleInvalidParam("A push rule ID cannot contain a slash or a backslash")
	case isServerDefaultID(ruleID):
		return errRuleUnknown("Push rule IDs starting with '.' are reserved for server-default rules")
	}
	switch k {
	case Room:
		if !strings.HasPrefix(ruleID, "!") || len(ruleID) < 2 {
			return errRuleInvalidParam("The ID of a room rule must be the room's ID")
		}
	case Sender:
		if _, _, err := id.UserID(ruleID).Parse(); err != nil {
			return errRuleInvalidParam("The ID of a sender rule must be the sender's user ID")
		}
	}
	return nil
}

// parseRuleBody reads a PUT body into a new enabled user-defined rule.
func parseRuleBody(k Kind, ruleID string, body json.RawMessage) (Rule, error) {
	var req struct {
		Actions    *[]json.RawMessage `json:"actions"`
		Conditions *[]json.RawMessage `json:"conditions"`
		Pattern    *string            `json:"pattern"`
	}
	if err := json.Unmarshal(body, &req); err != nil {
		return Rule{}, errRuleBadJSON("Invalid push rule: %v", err)
	}
	if req.Actions == nil {
		return Rule{}, errRuleBadJSON("A push rule needs actions")
	}
	actions, err := parseActions(*req.Actions)
	if err != nil {
		return Rule{}, err
	}
	rule := Rule{RuleID: ruleID, Enabled: true, Actions: actions}
	switch k {
	case Override, Underride:
		rule.Conditions = []Condition{}
		if req.Conditions != nil {
			for _, raw := range *req.Conditions {
				c, err := parseCondition(raw)
				if err != nil {
					return Rule{}, err
				}
				rule.Conditions = append(rule.Conditions, c)
			}
		}
	case Content:
		if req.Pattern == nil {
			return Rule{}, errRuleBadJSON("A content rule needs a pattern")
		}
		rule.Pattern = req.Pattern
	}
	return rule, nil
}

// parseActions checks actions from a request: "notify" and set_tweak
// objects; the historical "dont_notify" and "coalesce" are accepted and
// dropped (older clients still send ["dont_notify"] to mute); anything
// else is refused.
func parseActions(raws []json.RawMessage) ([]Action, error) {
	actions := make([]Action, 0, len(raws))
	for _, raw := range raws {
		var a Action
		if err := json.Unmarshal(raw, &a); err != nil {
			return nil, errRuleBadJSON("Invalid push rule action %s", raw)
		}
		actions = append(actions, a)
	}
	return validActions(actions)
}

// validActions is parseActions for decoded actions.
func validActions(in []Action) ([]Action, error) {
	out := make([]Action, 0, len(in))
	for _, a := range in {
		switch {
		case isHistoricalAction(a):
			continue
		case a.Tweak == "" && a.Action == actionNotify:
		case a.Tweak != "" && a.Action == actionSetTweak:
			if a.Value != nil && !json.Valid(a.Value) {
				return nil, errRuleBadJSON("Invalid value of tweak %q", a.Tweak)
			}
		case a.Action == "":
			return nil, errRuleBadJSON("Invalid push rule action: an object needs a set_tweak string")
		default:
			return nil, errRuleBadJSON("Unknown push rule action %q", a.Action)
		}
		out = append(out, a)
	}
	return out, nil
}

// parseCondition checks one condition from a request. Conditions of the
// kinds the spec defines must have their parameters, of the right types;
// a condition of another kind is kept (the spec says it matches nothing,
// so the rule never matches, but a client may know better in a later
// version) with the spec's fields only.
func parseCondition(raw json.RawMessage) (Condition, error) {
	var c struct {
		Kind    *string         `json:"kind"`
		Key     *string         `json:"key"`
		Pattern *string         `json:"pattern"`
		Is      *string         `json:"is"`
		Value   json.RawMessage `json:"value"`
	}
	if err := json.Unmarshal(raw, &c); err != nil {
		return Condition{}, errRuleBadJSON("Invalid push rule condition: %v", err)
	}
	if c.Kind == nil || *c.Kind == "" {
		return Condition{}, errRuleBadJSON("A push rule condition needs a kind")
	}
	out := Condition{Kind: *c.Kind}
	if c.Key != nil {
		out.Key = *c.Key
	}
	out.Pattern = c.Pattern
	if c.Is != nil {
		out.Is = *c.Is
	}
	if v := bytes.TrimSpace(c.Value); len(v) > 0 {
		var buf bytes.Buffer
		if err := json.Compact(&buf, v); err != nil {
			return Condition{}, errRuleBadJSON("Invalid push rule condition value: %v", err)
		}
		out.Value = buf.Bytes()
	}
	need := func(ok bool, what string) error {
		if !ok {
			return errRuleBadJSON("A %s condition needs %s", out.Kind, what)
		}
		return nil
	}
	switch out.Kind {
	case condEventMatch:
		if err := need(c.Key != nil && out.Key != "", "a key"); err != nil {
			return Condition{}, err
		}
		return out, need(c.Pattern != nil, "a pattern")
	case condPropertyIs, condPropertyContains:
		if err := need(c.Key != nil && out.Key != "", "a key"); err != nil {
			return Condition{}, err
		}
		_, ok := parseScalar(out.Value)
		return out, need(ok, "a value that is a string, an integer, a boolean or null")
	case condMemberCount:
		_, _, ok := parseMemberCount(out.Is)
		return out, need(ok, `"is": an integer with an optional ==, <, >, <= or >= prefix`)
	case condSenderPermission:
		return out, need(c.Key != nil && out.Key != "", "a key")
	}
	return out, nil
}

// Delete removes the user-defined rule ruleID of kind k: M_NOT_FOUND when
// there is none; server-default rules cannot be deleted (they can be
// disabled).
func (rs *Ruleset) Delete(k Kind, ruleID string) error {
	l := rs.list(k)
	if l == nil {
		return errRuleNotFound()
	}
	i := ruleIndex(*l, ruleID)
	if i < 0 {
		return errRuleNotFound()
	}
	if (*l)[i].Default {
		return errRuleUnknown("Server-default push rules cannot be deleted, only disabled")
	}
	*l = slices.Delete(slices.Clone(*l), i, i+1)
	return nil
}

// SetEnabled enables or disables the rule ruleID of kind k, a
// server-default one too: M_NOT_FOUND when there is none.
func (rs *Ruleset) SetEnabled(k Kind, ruleID string, enabled bool) error {
	l := rs.list(k)
	if l == nil {
		return errRuleNotFound()
	}
	i := ruleIndex(*l, ruleID)
	if i < 0 {
		return errRuleNotFound()
	}
	rules := slices.Clone(*l)
	rules[i].Enabled = enabled
	*l = rules
	return nil
}

// SetActions replaces the actions of the rule ruleID of kind k, a
// server-default one too: M_NOT_FOUND when there is none, M_BAD_JSON for
// an action that is not "notify" or a set_tweak (the historical ones are
// dropped).
func (rs *Ruleset) SetActions(k Kind, ruleID string, actions []Action) error {
	l := rs.list(k)
	if l == nil {
		return errRuleNotFound()
	}
	i := ruleIndex(*l, ruleID)
	if i < 0 {
		return errRuleNotFound()
	}
	valid, err := validActions(actions)
	if err != nil {
		return err
	}
	old := *l
	rules := slices.Clone(old)
	rules[i].Actions = valid
	*l = rules
	if err := rs.checkSize(); err != nil {
		*l = old
		return err
	}
	return nil
}

// userRuleCount is the number of user-defined rules of every kind.
func (rs *Ruleset) userRuleCount() int {
	n := 0
	for _, k := range kinds {
		for _, r := range rs.Rules(k) {
			if !r.Default {
				n++
			}
		}
	}
	return n
}

// checkSize refuses a ruleset whose m.push_rules content would exceed
// maxRulesetBytes.
func (rs *Ruleset) checkSize() error {
	raw, err := rs.AccountData()
	if err != nil {
		return fmt.Errorf("measuring push rules: %w", err)
	}
	if len(raw) > maxRulesetBytes {
		return mautrix.MTooLarge.WithMessage("Push rules too large: at most %d bytes in all", maxRulesetBytes)
	}
	return nil
}
