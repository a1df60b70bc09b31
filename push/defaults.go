package push

import (
	"encoding/json"

	"maunium.net/go/mautrix/id"
)

// The legacy body-mention rules. The spec dropped them in v1.17 (they look
// for the user's name or "@room" in the body, which misfires on replies and
// quotes, and intentional mentions, m.mentions, replaced them), but Synapse
// still serves them and clients still look for them: Element's and
// matrix-js-sdk's notification settings toggle "messages containing my
// display name / username / @room" by these rule IDs, and without them show
// those settings as broken. Their definitions are the spec's as of v1.16.
//
// MSC3952 (intentional mentions) says a client that sends m.mentions has
// put every mention it means there, so these rules must not match an event
// whose content has an m.mentions property, even an empty one: otherwise a
// reply quoting "alice" would still ping Alice. The evaluator skips them
// for such events (legacyMentionRule).
const (
	ruleContainsDisplayName = ".m.rule.contains_display_name"
	ruleRoomNotif           = ".m.rule.roomnotif"
	ruleContainsUserName    = ".m.rule.contains_user_name"
)

// legacyMentionRule reports whether the rule of kind k is one of the
// legacy body-mention rules, which never match an event with m.mentions.
func legacyMentionRule(k Kind, ruleID string) bool {
	switch k {
	case Override:
		return ruleID == ruleContainsDisplayName || ruleID == ruleRoomNotif
	case Content:
		return ruleID == ruleContainsUserName
	}
	return false
}

// Defaults is the server-default ruleset for user: the spec's predefined
// rules in the spec's order, with the legacy body-mention rules in the
// places v1.16 gave them. Every call builds new slices: callers may edit
// the result.
func Defaults(user id.UserID) Ruleset {
	notify := Action{Action: actionNotify}
	tweak := func(name, value string) Action {
		a := Action{Action: actionSetTweak, Tweak: name}
		if value != "" {
			a.Value = json.RawMessage(value)
		}
		return a
	}
	soundDefault := tweak("sound", `"default"`)
	soundRing := tweak("sound", `"ring"`)
	highlight := tweak("highlight", "")

	match := func(key, pattern string) Condition {
		return Condition{Kind: condEventMatch, Key: key, Pattern: &pattern}
	}
	rule := func(ruleID string, conds []Condition, actions ...Action) Rule {
		if conds == nil {
			conds = []Condition{}
		}
		if actions == nil {
			actions = []Action{}
		}
		return Rule{RuleID: ruleID, Default: true, Enabled: true, Conditions: conds, Actions: actions}
	}
	conds := func(c ...Condition) []Condition { return c }
	userJSON, _ := json.Marshal(string(user)) // a string always encodes

	master := rule(masterRuleID, nil)
	master.Enabled = false

	localpart := user.Localpart()
	containsUserName := Rule{
		RuleID: ruleContainsUserName, Default: true, Enabled: true,
		Pattern: &localpart,
		Actions: []Action{notify, soundDefault, highlight},
	}

	return Ruleset{
		Override: []Rule{
			master,
			rule(".m.rule.suppress_notices", conds(match("content.msgtype", "m.notice"))),
			rule(".m.rule.invite_for_me", conds(
				match("type", "m.room.member"),
				match("content.membership", "invite"),
				match("state_key", string(user)),
			), notify, soundDefault),
			rule(".m.rule.member_event", conds(match("type", "m.room.member"))),
			rule(".m.rule.is_user_mention", conds(
				Condition{Kind: condPropertyContains, Key: `content.m\.mentions.user_ids`, Value: userJSON},
			), notify, soundDefault, highlight),
			rule(ruleContainsDisplayName, conds(Condition{Kind: condDisplayName}), notify, soundDefault, highlight),
			rule(".m.rule.is_room_mention", conds(
				Condition{Kind: condPropertyIs, Key: `content.m\.mentions.room`, Value: json.RawMessage(`true`)},
				Condition{Kind: condSenderPermission, Key: "room"},
			), notify, highlight),
			rule(ruleRoomNotif, conds(
				match("content.body", "@room"),
				Condition{Kind: condSenderPermission, Key: "room"},
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
				Condition{Kind: condPropertyIs, Key: `content.m\.relates_to.rel_type`, Value: json.RawMessage(`"m.replace"`)},
			)),
		},
		Content: []Rule{containsUserName},
		Room:    []Rule{},
		Sender:  []Rule{},
		Underride: []Rule{
			rule(".m.rule.call", conds(match("type", "m.call.invite")), notify, soundRing),
			rule(".m.rule.encrypted_room_one_to_one", conds(
				Condition{Kind: condMemberCount, Is: "2"},
				match("type", "m.room.encrypted"),
			), notify, soundDefault),
			rule(".m.rule.room_one_to_one", conds(
				Condition{Kind: condMemberCount, Is: "2"},
				match("type", "m.room.message"),
			), notify, soundDefault),
			rule(".m.rule.message", conds(match("type", "m.room.message")), notify),
			rule(".m.rule.encrypted", conds(match("type", "m.room.encrypted")), notify),
		},
	}
}
