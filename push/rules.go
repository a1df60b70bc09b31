package push

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"
)

// A user's push rules are stored whole as their m.push_rules global account
// data, {"global": ruleset}, and read back through Render, which lays the
// user's changes over the current server-default rules: when the defaults
// change (a new spec version), every user gets the new ones without a
// migration, keeping what they changed of the old ones.
//
// The types are weft's own rather than mautrix's pushrules package, whose
// marshalling does not give the spec's JSON: it drops an empty "pattern"
// (the "state_key" == "" conditions of .m.rule.tombstone and
// .m.rule.room.server_acl would match any state key), drops an empty
// "conditions" list (.m.rule.master always matches because it has none),
// and writes {"set_tweak":"highlight","value":null} for a bare highlight
// tweak.

// Kind is one of the five kinds of push rules, which are also the keys of
// a ruleset, in the order they are evaluated.
type Kind string

const (
	Override  Kind = "override"
	Content   Kind = "content"
	Room      Kind = "room"
	Sender    Kind = "sender"
	Underride Kind = "underride"
)

// kinds is every kind in evaluation order.
var kinds = [...]Kind{Override, Content, Room, Sender, Underride}

// ParseKind checks a kind from a request: M_INVALID_PARAM unless it is one
// of the five kinds.
func ParseKind(s string) (Kind, error) {
	switch k := Kind(s); k {
	case Override, Content, Room, Sender, Underride:
		return k, nil
	}
	return "", mautrix.MInvalidParam.WithMessage(fmt.Sprintf("Unknown push rule kind %q: must be override, underride, sender, room or content", s))
}

// Ruleset is a user's rules of each kind, each list in priority order
// (the spec's Ruleset). It is written with every kind as a JSON array,
// never null.
type Ruleset struct {
	Override  []Rule `json:"override"`
	Content   []Rule `json:"content"`
	Room      []Rule `json:"room"`
	Sender    []Rule `json:"sender"`
	Underride []Rule `json:"underride"`
}

// Rule is one push rule as the spec's PushRule schema writes it.
type Rule struct {
	RuleID  string `json:"rule_id"`
	Default bool   `json:"default"`
	Enabled bool   `json:"enabled"`
	// Conditions is written whenever it is not nil, even empty: a rule with
	// no conditions always matches (.m.rule.master). Content, room and
	// sender rules have none (nil): their condition is implied by their
	// pattern or rule ID.
	Conditions []Condition `json:"conditions,omitzero"`
	// Pattern is the glob of a content rule; nil for other kinds. "" is a
	// pattern.
	Pattern *string `json:"pattern,omitempty"`
	// Actions is written as an array even when nil.
	Actions []Action `json:"actions"`
}

// Condition is one condition of an override or underride rule. Only the
// fields of its kind are set; Pattern is a pointer because "" is a pattern
// (matching an empty state key), and Value is raw JSON because null is a
// value (event_property_is) distinct from no value (nil).
type Condition struct {
	Kind    string          `json:"kind"`
	Key     string          `json:"key,omitempty"`
	Pattern *string         `json:"pattern,omitempty"`
	Is      string          `json:"is,omitempty"`
	Value   json.RawMessage `json:"value,omitempty"`
}

// Action is one action: a bare action such as "notify" (Tweak empty), or a
// set_tweak object (Action "set_tweak") with a value unless Value is nil.
// Value is raw JSON so that tweaks the server does not know (the spec lets
// clients and gateways agree on their own) pass through unchanged.
type Action struct {
	Action string
	Tweak  string
	Value  json.RawMessage
}

// Action names the spec defines. "dont_notify" and "coalesce" are historical:
// the spec says to ignore them, which Weft does by stripping them wherever
// actions are read.
const (
	actionNotify   = "notify"
	actionSetTweak = "set_tweak"
)

func isHistoricalAction(a Action) bool {
	return a.Tweak == "" && (a.Action == "dont_notify" || a.Action == "coalesce")
}

// MarshalJSON writes the spec's forms: "notify", or {"set_tweak": ...,
// "value": ...} with value left out when there is none.
func (a Action) MarshalJSON() ([]byte, error) {
	if a.Tweak == "" {
		return json.Marshal(a.Action)
	}
	tweak := struct {
		SetTweak string          `json:"set_tweak"`
		Value    json.RawMessage `json:"value,omitempty"`
	}{a.Tweak, a.Value}
	return json.Marshal(tweak)
}

// UnmarshalJSON reads either form. An object without a set_tweak string is
// read as the zero Action, which SetActions and Put refuse and stored rules
// drop: the spec has no such action. A null value is no value (a bare
// highlight tweak means true).
func (a *Action) UnmarshalJSON(raw []byte) error {
	*a = Action{}
	raw = bytes.TrimSpace(raw)
	if bytes.HasPrefix(raw, []byte(`"`)) {
		return json.Unmarshal(raw, &a.Action)
	}
	var obj struct {
		SetTweak any             `json:"set_tweak"`
		Value    json.RawMessage `json:"value"`
	}
	if err := json.Unmarshal(raw, &obj); err != nil {
		return err
	}
	if tweak, ok := obj.SetTweak.(string); ok && tweak != "" {
		a.Action, a.Tweak = actionSetTweak, tweak
		if v := bytes.TrimSpace(obj.Value); len(v) > 0 && !bytes.Equal(v, []byte("null")) {
			var buf bytes.Buffer
			if err := json.Compact(&buf, v); err != nil {
				return err
			}
			a.Value = buf.Bytes()
		}
	}
	return nil
}

// MarshalJSON writes a nil Actions as [], as the schema requires the key.
func (r Rule) MarshalJSON() ([]byte, error) {
	type plain Rule
	if r.Actions == nil {
		r.Actions = []Action{}
	}
	return json.Marshal(plain(r))
}

// UnmarshalJSON reads a rule, stripping the historical actions and any
// action that is not one (spec, "Historical Actions": a rule with
// ["dont_notify"] is a rule with no actions), and compacting condition
// values.
func (r *Rule) UnmarshalJSON(raw []byte) error {
	type plain Rule
	var p plain
	if err := json.Unmarshal(raw, &p); err != nil {
		return err
	}
	*r = Rule(p)
	if r.Actions != nil {
		r.Actions = cleanActions(r.Actions)
	}
	for i := range r.Conditions {
		if v := r.Conditions[i].Value; v != nil {
			var buf bytes.Buffer
			if err := json.Compact(&buf, v); err != nil {
				return err
			}
			r.Conditions[i].Value = buf.Bytes()
		}
	}
	return nil
}

// cleanActions drops historical and empty actions, in a new slice (never
// nil).
func cleanActions(in []Action) []Action {
	out := make([]Action, 0, len(in))
	for _, a := range in {
		if a.Action == "" || isHistoricalAction(a) {
			continue
		}
		out = append(out, a)
	}
	return out
}

// MarshalJSON writes every kind as an array, [] when it has no rules.
func (rs Ruleset) MarshalJSON() ([]byte, error) {
	type plain Ruleset
	for _, k := range kinds {
		if l := rs.list(k); *l == nil {
			*l = []Rule{}
		}
	}
	return json.Marshal(plain(rs))
}

// AccountData is the content of the user's m.push_rules account data:
// {"global": ruleset}. It fails only if a rule holds raw JSON that is not
// JSON, which neither Render nor the edit operations let in.
func (rs Ruleset) AccountData() (json.RawMessage, error) {
	raw, err := json.Marshal(struct {
		Global Ruleset `json:"global"`
	}{rs})
	if err != nil {
		return nil, fmt.Errorf("encoding push rules: %w", err)
	}
	return raw, nil
}

// list is the rules of kind k, to read or replace; nil for an unknown kind.
func (rs *Ruleset) list(k Kind) *[]Rule {
	switch k {
	case Override:
		return &rs.Override
	case Content:
		return &rs.Content
	case Room:
		return &rs.Room
	case Sender:
		return &rs.Sender
	case Underride:
		return &rs.Underride
	}
	return nil
}

// Rules is the list of rules of kind k, in priority order.
func (rs Ruleset) Rules(k Kind) []Rule {
	if l := rs.list(k); l != nil {
		return *l
	}
	return nil
}

// isServerDefaultID reports whether ruleID is in the namespace the spec
// reserves for server-default rules.
func isServerDefaultID(ruleID string) bool { return strings.HasPrefix(ruleID, ".") }

// masterRuleID is the one server-default rule ranked above user rules.
const masterRuleID = ".m.rule.master"

// Render is the user's full ruleset from what is stored in their
// m.push_rules account data (nil: nothing stored): Defaults(user), with the
// enabled flag and actions of each server-default rule that stored holds
// (same kind and rule ID) carried over, and the user's own rules (IDs not
// starting with ".") in their stored order, placed as the spec ranks them:
// .m.rule.master first, then the user's override rules, then the other
// server-default override rules; in every other kind, the user's rules
// before the server-default ones. A server-default rule stored but no
// longer a default is dropped. Stored JSON that is not a ruleset is an
// error; the caller decides what to fall back to.
func Render(stored json.RawMessage, user id.UserID) (Ruleset, error) {
	rs := Defaults(user)
	stored = bytes.TrimSpace(stored)
	if len(stored) == 0 || bytes.Equal(stored, []byte("null")) {
		return rs, nil
	}
	var doc struct {
		Global *Ruleset `json:"global"`
	}
	if err := json.Unmarshal(stored, &doc); err != nil {
		return Ruleset{}, fmt.Errorf("reading stored push rules of %s: %w", user, err)
	}
	if doc.Global == nil {
		return rs, nil
	}
	for _, k := range kinds {
		defaults := rs.list(k)
		var user []Rule
		seen := map[string]bool{}
		for _, r := range *doc.Global.list(k) {
			if seen[r.RuleID] {
				continue // the first of duplicate IDs wins, as Get would find it
			}
			seen[r.RuleID] = true
			if isServerDefaultID(r.RuleID) {
				if i := ruleIndex(*defaults, r.RuleID); i >= 0 {
					(*defaults)[i].Enabled = r.Enabled
					if r.Actions != nil {
						(*defaults)[i].Actions = r.Actions
					}
				}
				continue
			}
			r.Default = false
			if r.Actions == nil {
				r.Actions = []Action{}
			}
			user = append(user, r)
		}
		if len(user) == 0 {
			continue
		}
		at := userRulesStart(k, *defaults)
		merged := make([]Rule, 0, len(*defaults)+len(user))
		merged = append(merged, (*defaults)[:at]...)
		merged = append(merged, user...)
		merged = append(merged, (*defaults)[at:]...)
		*defaults = merged
	}
	return rs, nil
}

// userRulesStart is where the user's rules of kind k begin in rules: after
// .m.rule.master in override (the spec ranks it above every rule), at the
// start otherwise.
func userRulesStart(k Kind, rules []Rule) int {
	if k == Override && len(rules) > 0 && rules[0].RuleID == masterRuleID && rules[0].Default {
		return 1
	}
	return 0
}

// ruleIndex is the index of the rule ruleID in rules, -1 if absent.
func ruleIndex(rules []Rule, ruleID string) int {
	for i := range rules {
		if rules[i].RuleID == ruleID {
			return i
		}
	}
	return -1
}
