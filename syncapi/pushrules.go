package syncapi

import (
	"encoding/json"
	"fmt"

	"maunium.net/go/mautrix/id"

	"github.com/weftchat/weft/push"
)

// pushRulesType is the global account data holding a user's push rules.
const pushRulesType = "m.push_rules"

// globalAccountData is the top-level account_data: the user's global
// account data changed in the window, with m.push_rules always delivered
// rendered (the server's current default rules with the user's changes),
// and, in an initial or full_state sync, m.push_rules even when the user
// never changed a rule, so that every client starts from the same rules.
func (b *builder) globalAccountData() ([]json.RawMessage, error) {
	var global []json.RawMessage
	rules := false
	for _, a := range b.accountData {
		if a.RoomID != "" || !b.f.accountDataAllowed(a.Type) {
			continue
		}
		if a.Type == pushRulesType {
			rules = true
			a.Content = b.s.pushRulesContent(a.Content, b.req.User)
		}
		global = append(global, accountDataEvent(a))
	}
	if rules || b.since != nil && !b.req.FullState || !b.f.accountDataAllowed(pushRulesType) {
		return global, nil
	}
	var stored json.RawMessage
	if b.since != nil {
		// full_state: the stored rules, if any, are older than the
		// window. Rare enough to read all of the account data for.
		all, err := b.rd.AccountData(b.req.User, 0, b.to.Pos)
		if err != nil {
			return nil, fmt.Errorf("reading push rules: %w", err)
		}
		for _, a := range all {
			if a.RoomID == "" && a.Type == pushRulesType {
				stored = a.Content
			}
		}
	}
	if content := b.s.pushRulesContent(stored, b.req.User); content != nil {
		global = append(global, accountDataEvent(AccountData{Type: pushRulesType, Content: content}))
	}
	return global, nil
}

// pushRulesContent renders stored m.push_rules content (nil: none stored)
// for delivery: {"global": ruleset}. Content that cannot be rendered is
// logged and replaced by the defaults; nil means there is nothing to send.
func (s *Service) pushRulesContent(stored json.RawMessage, user id.UserID) json.RawMessage {
	content, err := renderPushRules(stored, user)
	if err != nil {
		s.log.Error("rendering stored push rules; sending the defaults", "user_id", user, "err", err)
		if content, err = renderPushRules(nil, user); err != nil {
			s.log.Error("rendering default push rules", "user_id", user, "err", err)
			return nil
		}
	}
	return content
}

// renderPushRules turns stored m.push_rules content into the content to
// deliver.
func renderPushRules(stored json.RawMessage, user id.UserID) (json.RawMessage, error) {
	rs, err := push.Render(stored, user)
	if err != nil {
		return nil, err
	}
	content, err := json.Marshal(struct {
		Global push.Ruleset `json:"global"`
	}{rs})
	if err != nil {
		return nil, fmt.Errorf("encoding push rules: %w", err)
	}
	return content, nil
}
