package account

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"

	"maunium.net/go/mautrix/id"
)

// Push rules, read side: until users can write rules, every account's rules
// are the spec's predefined (server-default) rules, in the spec's order
// (client-server API, "Push Notifications" > "Predefined Rules", v1.17: the
// legacy body-mention rules .m.rule.contains_display_name,
// .m.rule.roomnotif and the content rule .m.rule.contains_user_name are
// gone, so there are no default content rules).
//
// The types are weft's own rather than mautrix's pushrules package, whose
// marshalling does not give the spec's JSON: it drops an empty "pattern"
// (the "state_key" == "" conditions of .m.rule.tombstone and
// .m.rule.room.server_acl would match any state key), drops an empty
// "conditions" list (.m.rule.master), and writes {"set_tweak":"highlight",
// "value":null} for a bare highlight tweak.

// PushRuleKind is one of the five kinds of push rules, which are also the
// keys of a ruleset.
type PushRuleKind string

const (
	PushRuleOverride  PushRuleKind = "override"
	PushRuleContent   PushRuleKind = "content"
	PushRuleRoom      PushRuleKind = "room"
	PushRuleSender    PushRuleKind = "sender"
	PushRuleUnderride PushRuleKind = "underride"
)

// ParsePushRuleKind checks a kind from a request: M_INVALID_PARAM unless it
// is one of the five kinds.
func ParsePushRuleKind(s string) (PushRuleKind, error) {
	switch k := PushRuleKind(s); k {
	case PushRuleOverride, PushRuleContent, PushRuleRoom, PushRuleSender, PushRuleUnderride:
		return k, nil
	}
	return "", errInvalidParam(fmt.Sprintf("Unknown push rule kind %q: must be override, underride, sender, room or content", s))
}

// PushRuleset is a user's rules of each kind, each list in priority order.
// The lists are never nil, so each is written as a JSON array.
type PushRuleset struct {
	Override  []PushRule `json:"override"`
	Content   []PushRule `json:"content"`
	Room      []PushRule `json:"room"`
	Sender    []PushRule `json:"sender"`
	Underride []PushRule `json:"underride"`
}

// PushRule is one push rule as the spec's PushRule schema writes it.
type PushRule struct {
	RuleID  string `json:"rule_id"`
	Default bool   `json:"default"`
	Enabled bool   `json:"enabled"`
	// Conditions is written whenever it is not nil, even empty: a rule with
	// no conditions always matches (.m.rule.master). Content rules have
	// none (nil).
	Conditions []PushCondition `json:"conditions,omitzero"`
	// Pattern is the glob of a content rule; nil for other kinds.
	Pattern *string      `json:"pattern,omitempty"`
	Actions []PushAction `json:"actions"`
}

// PushCondition is one condition of an override or underride rule. Only the
// fields of its kind are set; Pattern is a pointer because "" is a pattern
// (matching an empty state key), and Value is nil when absent (false and ""
// are values).
type PushCondition struct {
	Kind    string  `json:"kind"`
	Key     string  `json:"key,omitempty"`
	Pattern *string `json:"pattern,omitempty"`
	Is      string  `json:"is,omitempty"`
	Value   any     `json:"value,omitzero"`
}

// PushAction is one action: a bare action such as "notify" (Tweak empty), or
// a set_tweak object, with a value unless Value is nil.
type PushAction struct {
	Action string
	Tweak  string
	Value  any
}

// MarshalJSON writes the spec's forms: "notify", or {"set_tweak": ...,
// "value": ...} with value left out when there is none.
func (a PushAction) MarshalJSON() ([]byte, error) {
	if a.Tweak == "" {
		return json.Marshal(a.Action)
	}
	tweak := map[string]any{"set_tweak": a.Tweak}
	if a.Value != nil {
		tweak["value"] = a.Value
	}
	return json.Marshal(tweak)
}

// UnmarshalJSON reads either form. An object without set_tweak is kept as
// nothing (an empty action), as the spec has no such action.
func (a *PushAction) UnmarshalJSON(raw []byte) error {
	*a = PushAction{}
	if bytes.HasPrefix(bytes.TrimSpace(raw), []byte(`"`)) {
		return json.Unmarshal(raw, &a.Action)
	}
	var obj struct {
		SetTweak string `json:"set_tweak"`
		Value    any    `json:"value"`
	}
	if err := json.Unmarshal(raw, &obj); err != nil {
		return err
	}
	if obj.SetTweak != "" {
		a.Action, a.Tweak, a.Value = "set_tweak", obj.SetTweak, obj.Value
	}
	return nil
}

// Rules is the list of rules of kind k.
func (rs *PushRuleset) Rules(k PushRuleKind) []PushRule {
	switch k {
	case PushRuleOverride:
		return rs.Override
	case PushRuleContent:
		return rs.Content
	case PushRuleRoom:
		return rs.Room
	case PushRuleSender:
		return rs.Sender
	case PushRuleUnderride:
		return rs.Underride
	}
	return nil
}

// Rule finds the rule ruleID of kind k: M_NOT_FOUND when there is none.
func (rs *PushRuleset) Rule(k PushRuleKind, ruleID string) (PushRule, error) {
	for _, r := range rs.Rules(k) {
		if r.RuleID == ruleID {
			return r, nil
		}
	}
	return PushRule{}, errNotFound("The push rule was not found.")
}

// DefaultPushRules is the spec's predefined ruleset for userID.
func DefaultPushRules(userID id.UserID) PushRuleset {
	notify := PushAction{Action: "notify"}
	soundDefault := PushAction{Action: "set_tweak", Tweak: "sound", Value: "default"}
	soundRing := PushAction{Action: "set_tweak", Tweak: "sound", Value: "ring"}
	highlight := PushAction{Action: "set_tweak", Tweak: "highlight"}

	match := func(key, pattern string) PushCondition {
		return PushCondition{Kind: "event_match", Key: key, Pattern: &pattern}
	}
	rule := func(ruleID string, conds []PushCondition, actions ...PushAction) PushRule {
		if conds == nil {
			conds = []PushCondition{}
		}
		if actions == nil {
			actions = []PushAction{}
		}
		return PushRule{RuleID: ruleID, Default: true, Enabled: true, Conditions: conds, Actions: actions}
	}
	conds := func(c ...PushCondition) []PushCondition { return c }

	master := rule(".m.rule.master", nil)
	master.Enabled = false

	return PushRuleset{
		Override: []PushRule{
			master,
			rule(".m.rule.suppress_notices", conds(match("content.msgtype", "m.notice"))),
			rule(".m.rule.invite_for_me", conds(
				match("type", "m.room.member"),
				match("content.membership", "invite"),
				match("state_key", string(userID)),
			), notify, soundDefault),
			rule(".m.rule.member_event", conds(match("type", "m.room.member"))),
			rule(".m.rule.is_user_mention", conds(
				PushCondition{Kind: "event_property_contains", Key: `content.m\.mentions.user_ids`, Value: string(userID)},
			), notify, soundDefault, highlight),
			rule(".m.rule.is_room_mention", conds(
				PushCondition{Kind: "event_property_is", Key: `content.m\.mentions.room`, Value: true},
				PushCondition{Kind: "sender_notification_permission", Key: "room"},
			), notify, highlight),
			rule(".m.rule.tombstone", conds(
				match("type", "m.room.tombstone"),
				match("state_key", ""),
			), notify, highlight),
			rule(".m.rule.reaction", conds(match("type", "m.reaction"))),
			rule(".m.rule.room.server_acl", conds(
				match("type", "m.room.server_acl"),
				match("state_key", ""),
			)),
			rule(".m.rule.suppress_edits", conds(
				PushCondition{Kind: "event_property_is", Key: `content.m\.relates_to.rel_type`, Value: "m.replace"},
			)),
		},
		Content: []PushRule{},
		Room:    []PushRule{},
		Sender:  []PushRule{},
		Underride: []PushRule{
			rule(".m.rule.call", conds(match("type", "m.call.invite")), notify, soundRing),
			rule(".m.rule.encrypted_room_one_to_one", conds(
				PushCondition{Kind: "room_member_count", Is: "2"},
				match("type", "m.room.encrypted"),
			), notify, soundDefault),
			rule(".m.rule.room_one_to_one", conds(
				PushCondition{Kind: "room_member_count", Is: "2"},
				match("type", "m.room.message"),
			), notify, soundDefault),
			rule(".m.rule.message", conds(match("type", "m.room.message")), notify),
			rule(".m.rule.encrypted", conds(match("type", "m.room.encrypted")), notify),
		},
	}
}

// PushRules is userID's push ruleset. Until rules can be written it is the
// predefined one; it takes a context as the stored rules will.
func (s *Service) PushRules(_ context.Context, userID id.UserID) (PushRuleset, error) {
	return DefaultPushRules(userID), nil
}

// PushRule is one of userID's rules: M_INVALID_PARAM for a kind that is not
// one of the five, M_NOT_FOUND for a rule that does not exist.
func (s *Service) PushRule(ctx context.Context, userID id.UserID, kind, ruleID string) (PushRule, error) {
	k, err := ParsePushRuleKind(kind)
	if err != nil {
		return PushRule{}, err
	}
	rs, err := s.PushRules(ctx, userID)
	if err != nil {
		return PushRule{}, err
	}
	return rs.Rule(k, ruleID)
}
