package e2e

import (
	"context"
	"encoding/json"
	"net/http"
	"reflect"
	"slices"
	"testing"

	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// End-to-end tests of the read side of the push rules API: every account has
// the spec's predefined rules, plus the legacy body-mention rules the spec
// removed in v1.17 (.m.rule.contains_display_name, .m.rule.roomnotif and the
// content rule .m.rule.contains_user_name), which clients still look for and
// which never match an event with m.mentions.

// pushRuleOverrideIDs, pushRuleContentIDs and pushRuleUnderrideIDs are the
// predefined rules, in order.
var (
	pushRuleOverrideIDs = []string{
		".m.rule.master", ".m.rule.suppress_notices", ".m.rule.invite_for_me", ".m.rule.member_event",
		".m.rule.is_user_mention", ".m.rule.contains_display_name", ".m.rule.is_room_mention", ".m.rule.roomnotif",
		".m.rule.tombstone", ".m.rule.reaction", ".m.rule.room.server_acl", ".m.rule.suppress_edits",
	}
	pushRuleContentIDs   = []string{".m.rule.contains_user_name"}
	pushRuleUnderrideIDs = []string{
		".m.rule.call", ".m.rule.encrypted_room_one_to_one", ".m.rule.room_one_to_one", ".m.rule.message",
		".m.rule.encrypted",
	}
)

// pushRuleFind is the rule ruleID in a decoded list of rules, or nil.
func pushRuleFind(rules any, ruleID string) map[string]any {
	list, _ := rules.([]any)
	for _, r := range list {
		if m, ok := r.(map[string]any); ok && m["rule_id"] == ruleID {
			return m
		}
	}
	return nil
}

// pushRuleIDs are the rule_ids of a decoded list of rules, in order.
func pushRuleIDs(t *testing.T, rules any) []string {
	t.Helper()
	list, ok := rules.([]any)
	if !ok {
		t.Fatalf("rules %v are not a JSON array", rules)
	}
	var ids []string
	for _, r := range list {
		ids = append(ids, dig(r, "rule_id").(string))
	}
	return ids
}

// pushRuleJSON re-encodes a decoded value, for comparing exact shapes.
func pushRuleJSON(t *testing.T, v any) string {
	t.Helper()
	raw, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(raw)
}

// pushRuleRoom is a room for mautrix's rule evaluation.
type pushRuleRoom struct{ members int }

func (r pushRuleRoom) GetOwnDisplayname() string { return "" }
func (r pushRuleRoom) GetMemberCount() int       { return r.members }

func TestPushRules(t *testing.T) {
	srv := startAccounts(t, nil)
	cli := registerUser(t, srv, "pushy", "push rules password")
	me := cli.UserID.String()

	all := doJSON(t, "GET", clientURL(srv, "v3", "pushrules", ""), cli.AccessToken, nil)
	all.wantOK(t)
	global := all.Body["global"]

	t.Run("ruleset", func(t *testing.T) {
		specValidate(t, all.Body, "pushrules.yaml", "/pushrules/", "get", "200")
		if got := pushRuleIDs(t, dig(global, "override")); !slices.Equal(got, pushRuleOverrideIDs) {
			t.Errorf("override rules %v, want %v", got, pushRuleOverrideIDs)
		}
		if got := pushRuleIDs(t, dig(global, "underride")); !slices.Equal(got, pushRuleUnderrideIDs) {
			t.Errorf("underride rules %v, want %v", got, pushRuleUnderrideIDs)
		}
		if got := pushRuleIDs(t, dig(global, "content")); !slices.Equal(got, pushRuleContentIDs) {
			t.Errorf("content rules %v, want %v", got, pushRuleContentIDs)
		}
		// No predefined room or sender rules, but each kind is there as an
		// array.
		for _, kind := range []string{"room", "sender"} {
			if got := pushRuleIDs(t, dig(global, kind)); len(got) != 0 {
				t.Errorf("%s rules %v, want none", kind, got)
			}
		}
		for _, kind := range []string{"override", "content", "underride"} {
			for _, r := range dig(global, kind).([]any) {
				if dig(r, "default") != true {
					t.Errorf("%s rule %v is not default", kind, r)
				}
				wantEnabled := dig(r, "rule_id") != ".m.rule.master"
				if dig(r, "enabled") != wantEnabled {
					t.Errorf("%s rule %v: enabled should be %v", kind, r, wantEnabled)
				}
			}
		}

		global2 := doJSON(t, "GET", clientURL(srv, "v3", "pushrules", "global", ""), cli.AccessToken, nil)
		global2.wantOK(t)
		specValidate(t, global2.Body, "pushrules.yaml", "/pushrules/global/", "get", "200")
		if !reflect.DeepEqual(global2.Body, global) {
			t.Errorf("/pushrules/global/ is %s, want the global of /pushrules/: %v", global2.Raw, global)
		}
		r0 := doJSON(t, "GET", clientURL(srv, "r0", "pushrules", ""), cli.AccessToken, nil)
		r0.wantOK(t)
		if !reflect.DeepEqual(r0.Body, all.Body) {
			t.Errorf("r0 /pushrules/ is %s, want %s", r0.Raw, all.Raw)
		}
	})

	t.Run("exact rules", func(t *testing.T) {
		override := dig(global, "override")
		want := map[string]string{
			// The empty conditions list is written.
			".m.rule.master": `{"actions":[],"conditions":[],"default":true,"enabled":false,"rule_id":".m.rule.master"}`,
			// The user's own ID; a sound tweak with its value.
			".m.rule.invite_for_me": `{"actions":["notify",{"set_tweak":"sound","value":"default"}],"conditions":[` +
				`{"key":"type","kind":"event_match","pattern":"m.room.member"},` +
				`{"key":"content.membership","kind":"event_match","pattern":"invite"},` +
				`{"key":"state_key","kind":"event_match","pattern":"` + me + `"}],"default":true,"enabled":true,"rule_id":".m.rule.invite_for_me"}`,
			// The escaped dot in the key; a highlight tweak without a value.
			".m.rule.is_user_mention": `{"actions":["notify",{"set_tweak":"sound","value":"default"},{"set_tweak":"highlight"}],"conditions":[` +
				`{"key":"content.m\\.mentions.user_ids","kind":"event_property_contains","value":"` + me + `"}],` +
				`"default":true,"enabled":true,"rule_id":".m.rule.is_user_mention"}`,
			// A boolean value.
			".m.rule.is_room_mention": `{"actions":["notify",{"set_tweak":"highlight"}],"conditions":[` +
				`{"key":"content.m\\.mentions.room","kind":"event_property_is","value":true},` +
				`{"key":"room","kind":"sender_notification_permission"}],"default":true,"enabled":true,"rule_id":".m.rule.is_room_mention"}`,
			// The empty pattern of the state key condition.
			".m.rule.tombstone": `{"actions":["notify",{"set_tweak":"highlight"}],"conditions":[` +
				`{"key":"type","kind":"event_match","pattern":"m.room.tombstone"},` +
				`{"key":"state_key","kind":"event_match","pattern":""}],"default":true,"enabled":true,"rule_id":".m.rule.tombstone"}`,
		}
		for ruleID, w := range want {
			if got := pushRuleJSON(t, pushRuleFind(override, ruleID)); got != w {
				t.Errorf("%s:\n got %s\nwant %s", ruleID, got, w)
			}
		}
		underride := dig(global, "underride")
		if got, w := pushRuleJSON(t, pushRuleFind(underride, ".m.rule.encrypted_room_one_to_one")),
			`{"actions":["notify",{"set_tweak":"sound","value":"default"}],"conditions":[`+
				`{"is":"2","kind":"room_member_count"},{"key":"type","kind":"event_match","pattern":"m.room.encrypted"}],`+
				`"default":true,"enabled":true,"rule_id":".m.rule.encrypted_room_one_to_one"}`; got != w {
			t.Errorf(".m.rule.encrypted_room_one_to_one:\n got %s\nwant %s", got, w)
		}
		if got, w := pushRuleJSON(t, pushRuleFind(underride, ".m.rule.call")),
			`{"actions":["notify",{"set_tweak":"sound","value":"ring"}],"conditions":[`+
				`{"key":"type","kind":"event_match","pattern":"m.call.invite"}],"default":true,"enabled":true,"rule_id":".m.rule.call"}`; got != w {
			t.Errorf(".m.rule.call:\n got %s\nwant %s", got, w)
		}
	})

	t.Run("one rule", func(t *testing.T) {
		for _, c := range []struct{ kind, ruleID string }{
			{"override", ".m.rule.master"},
			{"override", ".m.rule.tombstone"},
			{"underride", ".m.rule.message"},
		} {
			for _, version := range []string{"v3", "r0"} {
				r := doJSON(t, "GET", clientURL(srv, version, "pushrules", "global", c.kind, c.ruleID), cli.AccessToken, nil)
				r.wantOK(t)
				specValidate(t, r.Body, "pushrules.yaml", "/pushrules/global/{kind}/{ruleId}", "get", "200")
				if want := pushRuleFind(dig(global, c.kind), c.ruleID); !reflect.DeepEqual(r.Body, want) {
					t.Errorf("%s %s/%s is %s, want %v", version, c.kind, c.ruleID, r.Raw, want)
				}
			}
		}

		en := doJSON(t, "GET", clientURL(srv, "v3", "pushrules", "global", "override", ".m.rule.master", "enabled"), cli.AccessToken, nil)
		en.wantOK(t)
		specValidate(t, en.Body, "pushrules.yaml", "/pushrules/global/{kind}/{ruleId}/enabled", "get", "200")
		if string(en.Raw) != `{"enabled":false}` {
			t.Errorf("master enabled: %s, want {\"enabled\":false}", en.Raw)
		}
		en = doJSON(t, "GET", clientURL(srv, "r0", "pushrules", "global", "underride", ".m.rule.message", "enabled"), cli.AccessToken, nil)
		en.wantOK(t)
		if string(en.Raw) != `{"enabled":true}` {
			t.Errorf("message enabled: %s, want {\"enabled\":true}", en.Raw)
		}

		act := doJSON(t, "GET", clientURL(srv, "v3", "pushrules", "global", "underride", ".m.rule.message", "actions"), cli.AccessToken, nil)
		act.wantOK(t)
		specValidate(t, act.Body, "pushrules.yaml", "/pushrules/global/{kind}/{ruleId}/actions", "get", "200")
		if string(act.Raw) != `{"actions":["notify"]}` {
			t.Errorf("message actions: %s, want {\"actions\":[\"notify\"]}", act.Raw)
		}
		act = doJSON(t, "GET", clientURL(srv, "v3", "pushrules", "global", "override", ".m.rule.master", "actions"), cli.AccessToken, nil)
		act.wantOK(t)
		if string(act.Raw) != `{"actions":[]}` {
			t.Errorf("master actions: %s, want {\"actions\":[]}", act.Raw)
		}
	})

	t.Run("errors", func(t *testing.T) {
		for _, suffix := range [][]string{nil, {"enabled"}, {"actions"}} {
			get := func(kind, ruleID string) rawResponse {
				return doJSON(t, "GET", clientURL(srv, "v3", append([]string{"pushrules", "global", kind, ruleID}, suffix...)...), cli.AccessToken, nil)
			}
			// Unknown rules, including a rule asked for under another kind.
			for _, c := range []struct{ kind, ruleID string }{
				{"override", "nocake"},
				{"underride", ".m.rule.master"},
				{"content", ".m.rule.contains_display_name"},
				{"room", "!room:example.org"},
				{"sender", "@spam:example.org"},
			} {
				r := get(c.kind, c.ruleID)
				r.wantErr(t, http.StatusNotFound, "M_NOT_FOUND")
				specValidateErr(t, r)
			}
			// A kind that is not one of the five.
			r := get("global", ".m.rule.master")
			r.wantErr(t, http.StatusBadRequest, "M_INVALID_PARAM")
			specValidateErr(t, r)
			get("Override", ".m.rule.master").wantErr(t, http.StatusBadRequest, "M_INVALID_PARAM")
		}

		// Every endpoint needs an access token.
		for _, u := range []string{
			clientURL(srv, "v3", "pushrules", ""),
			clientURL(srv, "r0", "pushrules", ""),
			clientURL(srv, "v3", "pushrules", "global", ""),
			clientURL(srv, "v3", "pushrules", "global", "override", ".m.rule.master"),
			clientURL(srv, "v3", "pushrules", "global", "override", ".m.rule.master", "enabled"),
			clientURL(srv, "v3", "pushrules", "global", "override", ".m.rule.master", "actions"),
		} {
			doJSON(t, "GET", u, "", nil).wantErr(t, http.StatusUnauthorized, "M_MISSING_TOKEN")
			doJSON(t, "GET", u, "not-a-token", nil).wantErr(t, http.StatusUnauthorized, "M_UNKNOWN_TOKEN")
		}
	})

	t.Run("mautrix", func(t *testing.T) {
		rs, err := cli.GetPushRules(context.Background())
		if err != nil {
			t.Fatalf("GetPushRules: %v", err)
		}
		var got []string
		for _, r := range rs.Override {
			got = append(got, r.RuleID)
		}
		if !slices.Equal(got, pushRuleOverrideIDs) {
			t.Errorf("mautrix override rules %v, want %v", got, pushRuleOverrideIDs)
		}
		got = got[:0]
		for _, r := range rs.Underride {
			got = append(got, r.RuleID)
		}
		if !slices.Equal(got, pushRuleUnderrideIDs) {
			t.Errorf("mautrix underride rules %v, want %v", got, pushRuleUnderrideIDs)
		}
		if len(rs.Content) != 1 || rs.Content[0].RuleID != ".m.rule.contains_user_name" || len(rs.Room.Map) != 0 || len(rs.Sender.Map) != 0 {
			t.Errorf("mautrix found content/room/sender rules: %v %v %v", rs.Content, rs.Room.Map, rs.Sender.Map)
		}

		// mautrix's evaluator runs the parsed rules as the spec means them.
		msg := func(content map[string]any) *event.Event {
			return &event.Event{Type: event.EventMessage, Sender: id.UserID("@other:example.org"), RoomID: "!r:example.org",
				Content: event.Content{Raw: content}}
		}
		should := rs.GetActions(pushRuleRoom{members: 2}, msg(map[string]any{"msgtype": "m.text", "body": "hi"})).Should()
		if !should.Notify || !should.PlaySound || should.Highlight {
			t.Errorf("a message in a 1:1 room: %+v, want a notification with a sound and no highlight", should)
		}
		should = rs.GetActions(pushRuleRoom{members: 5}, msg(map[string]any{"msgtype": "m.notice", "body": "bot"})).Should()
		if should.Notify {
			t.Errorf("a notice: %+v, want no notification", should)
		}
		should = rs.GetActions(pushRuleRoom{members: 5}, msg(map[string]any{
			"msgtype": "m.text", "body": "hey", "m.mentions": map[string]any{"user_ids": []any{me}},
		})).Should()
		if !should.Notify || !should.Highlight {
			t.Errorf("a mention of %s: %+v, want a highlighted notification", me, should)
		}
		tomb := &event.Event{Type: event.StateTombstone, StateKey: new(string), Sender: "@other:example.org",
			Content: event.Content{Raw: map[string]any{"body": "moved", "replacement_room": "!n:example.org"}}}
		if should = rs.GetActions(pushRuleRoom{members: 5}, tomb).Should(); !should.Highlight {
			t.Errorf("a tombstone: %+v, want a highlight", should)
		}
		// (mautrix globs event_match patterns with an implicit "contains",
		// so it cannot tell the rule's state_key "" from any state key; the
		// exact "pattern": "" is checked in "exact rules".)
	})
}
