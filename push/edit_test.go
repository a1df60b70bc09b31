package push

import (
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"

	"maunium.net/go/mautrix"
)

// rtWantErr checks that err is a Matrix error with errcode and HTTP status.
func rtWantErr(t *testing.T, err error, errcode string, status int) {
	t.Helper()
	var re mautrix.RespError
	if !errors.As(err, &re) {
		t.Fatalf("error %v (%T), want %s", err, err, errcode)
	}
	if re.ErrCode != errcode || re.StatusCode != status {
		t.Fatalf("error %s %d (%q), want %s %d", re.ErrCode, re.StatusCode, re.Err, errcode, status)
	}
}

func rtPut(t *testing.T, rs *Ruleset, k Kind, ruleID, body, before, after string) {
	t.Helper()
	if err := rs.Put(k, ruleID, json.RawMessage(body), before, after); err != nil {
		t.Fatalf("Put(%s, %s, %s, %q, %q): %v", k, ruleID, body, before, after, err)
	}
}

func TestGet(t *testing.T) {
	rs := Defaults(rtAlice)
	r, err := rs.Get(Underride, ".m.rule.message")
	if err != nil || r.RuleID != ".m.rule.message" || !r.Default || !r.Enabled {
		t.Fatalf("Get: %+v, %v", r, err)
	}
	_, err = rs.Get(Override, ".m.rule.message") // wrong kind
	rtWantErr(t, err, "M_NOT_FOUND", 404)
	_, err = rs.Get(Room, "!nope:x")
	rtWantErr(t, err, "M_NOT_FOUND", 404)
	_, err = rs.Get(Kind("bogus"), "x")
	rtWantErr(t, err, "M_NOT_FOUND", 404)
	// Actions are never null, even for a rule built without them.
	rs.Room = []Rule{{RuleID: "!r:x", Enabled: true}}
	if r, _ := rs.Get(Room, "!r:x"); r.Actions == nil {
		t.Fatal("nil actions")
	}
}

func TestPutPlacesRules(t *testing.T) {
	rs := Defaults(rtAlice)
	def := Defaults(rtAlice)
	cond := `{"conditions":[{"kind":"event_match","key":"content.body","pattern":"beer"}],"actions":["notify"]}`

	// New rules without before/after: most important of the user's,
	// after .m.rule.master in override.
	rtPut(t, &rs, Override, "a", cond, "", "")
	rtPut(t, &rs, Override, "b", cond, "", "")
	want := append([]string{".m.rule.master", "b", "a"}, rtRuleIDs(def.Override[1:])...)
	if got := rtRuleIDs(rs.Override); !slices.Equal(got, want) {
		t.Fatalf("override %v\nwant %v", got, want)
	}
	// before and after.
	rtPut(t, &rs, Override, "c", cond, "a", "")
	rtPut(t, &rs, Override, "d", cond, "", "b")
	rtPut(t, &rs, Override, "e", cond, "", "a")
	want = append([]string{".m.rule.master", "b", "d", "c", "a", "e"}, rtRuleIDs(def.Override[1:])...)
	if got := rtRuleIDs(rs.Override); !slices.Equal(got, want) {
		t.Fatalf("override %v\nwant %v", got, want)
	}
	// Both: before wins.
	rtPut(t, &rs, Override, "f", cond, "d", "e")
	want = append([]string{".m.rule.master", "b", "f", "d", "c", "a", "e"}, rtRuleIDs(def.Override[1:])...)
	if got := rtRuleIDs(rs.Override); !slices.Equal(got, want) {
		t.Fatalf("override %v\nwant %v", got, want)
	}

	// Other kinds: before the defaults.
	rtPut(t, &rs, Content, "cake", `{"pattern":"cake","actions":["notify"]}`, "", "")
	rtPut(t, &rs, Content, "pie", `{"pattern":"pie","actions":["notify"]}`, "", "cake")
	if got, want := rtRuleIDs(rs.Content), []string{"cake", "pie", ".m.rule.contains_user_name"}; !slices.Equal(got, want) {
		t.Fatalf("content %v, want %v", got, want)
	}
	rtPut(t, &rs, Underride, "u1", `{"actions":[]}`, "", "")
	if got := rtRuleIDs(rs.Underride); got[0] != "u1" || !slices.Equal(got[1:], rtRuleIDs(def.Underride)) {
		t.Fatalf("underride %v", got)
	}
	rtPut(t, &rs, Room, "!r1:example.org", `{"actions":[]}`, "", "")
	rtPut(t, &rs, Room, "!r2:example.org", `{"actions":["notify"]}`, "", "")
	rtPut(t, &rs, Sender, "@spam:example.org", `{"actions":[]}`, "", "")
	if got, want := rtRuleIDs(rs.Room), []string{"!r2:example.org", "!r1:example.org"}; !slices.Equal(got, want) {
		t.Fatalf("room %v", got)
	}
	if got, want := rtRuleIDs(rs.Sender), []string{"@spam:example.org"}; !slices.Equal(got, want) {
		t.Fatalf("sender %v", got)
	}
}

func TestPutStoresTheSpecsShape(t *testing.T) {
	rs := Defaults(rtAlice)
	// The spec's examples.
	rtPut(t, &rs, Room, "!dj234r78wl45Gh4D:matrix.org", `{"actions":[]}`, "", "")
	rtPut(t, &rs, Sender, "@spambot:matrix.org", `{"actions":[]}`, "", "")
	rtPut(t, &rs, Content, "SSByZWFsbHkgbGlrZSBjYWtl", `{"pattern":"cake","actions":["notify",{"set_tweak":"sound","value":"cakealarm.wav"}]}`, "", "")
	rtPut(t, &rs, Content, "U3BvbmdlIGNha2UgaXMgYmVzdA", `{"pattern":"cake*lie","actions":["notify"]}`, "SSByZWFsbHkgbGlrZSBjYWtl", "")
	rtPut(t, &rs, Override, "U2VlIHlvdSBpbiBUaGUgRHVrZQ", `{"conditions":[
		{"kind":"event_match","key":"content.body","pattern":"beer"},
		{"kind":"room_member_count","is":"<=10"}],
		"actions":["notify",{"set_tweak":"sound","value":"beeroclock.wav"}]}`, "", "")

	get := func(k Kind, id string) string {
		t.Helper()
		r, err := rs.Get(k, id)
		if err != nil {
			t.Fatal(err)
		}
		raw, _ := json.Marshal(r)
		return string(raw)
	}
	rtJSONEqual(t, []byte(get(Room, "!dj234r78wl45Gh4D:matrix.org")), []byte(`{"rule_id":"!dj234r78wl45Gh4D:matrix.org","default":false,"enabled":true,"actions":[]}`))
	rtJSONEqual(t, []byte(get(Sender, "@spambot:matrix.org")), []byte(`{"rule_id":"@spambot:matrix.org","default":false,"enabled":true,"actions":[]}`))
	rtJSONEqual(t, []byte(get(Content, "U3BvbmdlIGNha2UgaXMgYmVzdA")), []byte(`{"rule_id":"U3BvbmdlIGNha2UgaXMgYmVzdA","default":false,"enabled":true,"pattern":"cake*lie","actions":["notify"]}`))
	rtJSONEqual(t, []byte(get(Override, "U2VlIHlvdSBpbiBUaGUgRHVrZQ")), []byte(`{"rule_id":"U2VlIHlvdSBpbiBUaGUgRHVrZQ","default":false,"enabled":true,
		"conditions":[{"kind":"event_match","key":"content.body","pattern":"beer"},{"kind":"room_member_count","is":"<=10"}],
		"actions":["notify",{"set_tweak":"sound","value":"beeroclock.wav"}]}`))
	if got := rtRuleIDs(rs.Content)[:2]; !slices.Equal(got, []string{"U3BvbmdlIGNha2UgaXMgYmVzdA", "SSByZWFsbHkgbGlrZSBjYWtl"}) {
		t.Fatalf("content order %v", got)
	}

	// Keys of other kinds are not kept: no conditions on a room rule, no
	// pattern on an override rule; an override rule without conditions has
	// [] (it always matches).
	rtPut(t, &rs, Room, "!x:example.org", `{"actions":["notify"],"conditions":[{"kind":"event_match","key":"type","pattern":"x"}],"pattern":"p"}`, "", "")
	rtJSONEqual(t, []byte(get(Room, "!x:example.org")), []byte(`{"rule_id":"!x:example.org","default":false,"enabled":true,"actions":["notify"]}`))
	rtPut(t, &rs, Override, "always", `{"actions":["notify"],"pattern":"p"}`, "", "")
	rtJSONEqual(t, []byte(get(Override, "always")), []byte(`{"rule_id":"always","default":false,"enabled":true,"conditions":[],"actions":["notify"]}`))

	// Historical actions are dropped; unknown condition kinds are kept
	// with the spec's fields; condition values are kept exactly.
	rtPut(t, &rs, Underride, "old", `{"actions":["dont_notify","coalesce"],"conditions":[
		{"kind":"org.example.new","key":"k","extra":1},
		{"kind":"event_property_is","key":"content.n","value":null},
		{"kind":"event_property_contains","key":"content.a","value": 9007199254740991}]}`, "", "")
	rtJSONEqual(t, []byte(get(Underride, "old")), []byte(`{"rule_id":"old","default":false,"enabled":true,
		"conditions":[{"kind":"org.example.new","key":"k"},{"kind":"event_property_is","key":"content.n","value":null},{"kind":"event_property_contains","key":"content.a","value":9007199254740991}],
		"actions":[]}`))
}

func TestPutReplaces(t *testing.T) {
	rs := Defaults(rtAlice)
	rtPut(t, &rs, Underride, "a", `{"actions":["notify"]}`, "", "")
	rtPut(t, &rs, Underride, "b", `{"actions":["notify"]}`, "", "")
	rtPut(t, &rs, Underride, "c", `{"actions":["notify"]}`, "", "")
	if err := rs.SetEnabled(Underride, "b", false); err != nil {
		t.Fatal(err)
	}
	// Replacing keeps the place and the enabled flag.
	rtPut(t, &rs, Underride, "b", `{"actions":[],"conditions":[{"kind":"event_match","key":"type","pattern":"x"}]}`, "", "")
	b, _ := rs.Get(Underride, "b")
	if b.Enabled || len(b.Actions) != 0 || len(b.Conditions) != 1 {
		t.Fatalf("replaced rule %+v", b)
	}
	if got := rtRuleIDs(rs.Underride)[:3]; !slices.Equal(got, []string{"c", "b", "a"}) {
		t.Fatalf("order %v", got)
	}
	// ... or moves it.
	rtPut(t, &rs, Underride, "c", `{"actions":["notify"]}`, "", "a")
	if got := rtRuleIDs(rs.Underride)[:3]; !slices.Equal(got, []string{"b", "a", "c"}) {
		t.Fatalf("order %v", got)
	}
	rtPut(t, &rs, Underride, "c", `{"actions":["notify"]}`, "b", "")
	if got := rtRuleIDs(rs.Underride)[:3]; !slices.Equal(got, []string{"c", "b", "a"}) {
		t.Fatalf("order %v", got)
	}
	if n := len(rs.Underride); n != 3+len(Defaults(rtAlice).Underride) {
		t.Fatalf("%d underride rules", n)
	}
}

func TestPutRefusals(t *testing.T) {
	base := Defaults(rtAlice)
	rtPut(t, &base, Override, "mine", `{"actions":["notify"]}`, "", "")
	rtPut(t, &base, Content, "cake", `{"pattern":"cake","actions":["notify"]}`, "", "")
	tests := []struct {
		name          string
		kind          Kind
		ruleID, body  string
		before, after string
		errcode       string
		status        int
	}{
		{"a server-default rule ID", Override, ".m.rule.master", `{"actions":[]}`, "", "", "M_UNKNOWN", 400},
		{"a new rule in the default namespace", Override, ".mine", `{"actions":[]}`, "", "", "M_UNKNOWN", 400},
		{"a slash", Override, "a/b", `{"actions":[]}`, "", "", "M_INVALID_PARAM", 400},
		{"a backslash", Override, `a\b`, `{"actions":[]}`, "", "", "M_INVALID_PARAM", 400},
		{"an empty ID", Override, "", `{"actions":[]}`, "", "", "M_INVALID_PARAM", 400},
		{"a room rule not named by a room", Room, "#alias:x", `{"actions":[]}`, "", "", "M_INVALID_PARAM", 400},
		{"a room rule named !", Room, "!", `{"actions":[]}`, "", "", "M_INVALID_PARAM", 400},
		{"a sender rule not named by a user", Sender, "bob", `{"actions":[]}`, "", "", "M_INVALID_PARAM", 400},
		{"an unknown kind", Kind("global"), "x", `{"actions":[]}`, "", "", "M_INVALID_PARAM", 400},
		{"no actions", Override, "x", `{}`, "", "", "M_BAD_JSON", 400},
		{"null actions", Override, "x", `{"actions":null}`, "", "", "M_BAD_JSON", 400},
		{"actions not a list", Override, "x", `{"actions":"notify"}`, "", "", "M_BAD_JSON", 400},
		{"an unknown action", Override, "x", `{"actions":["notify","wiggle"]}`, "", "", "M_BAD_JSON", 400},
		{"an action object without set_tweak", Override, "x", `{"actions":[{"value":1}]}`, "", "", "M_BAD_JSON", 400},
		{"an action that is a number", Override, "x", `{"actions":[1]}`, "", "", "M_BAD_JSON", 400},
		{"not an object", Override, "x", `[]`, "", "", "M_BAD_JSON", 400},
		{"not JSON", Override, "x", `{`, "", "", "M_BAD_JSON", 400},
		{"a content rule without pattern", Content, "x", `{"actions":[]}`, "", "", "M_BAD_JSON", 400},
		{"a pattern that is not a string", Content, "x", `{"actions":[],"pattern":5}`, "", "", "M_BAD_JSON", 400},
		{"conditions not a list", Override, "x", `{"actions":[],"conditions":{}}`, "", "", "M_BAD_JSON", 400},
		{"a condition without kind", Override, "x", `{"actions":[],"conditions":[{"key":"type","pattern":"x"}]}`, "", "", "M_BAD_JSON", 400},
		{"event_match without pattern", Override, "x", `{"actions":[],"conditions":[{"kind":"event_match","key":"type"}]}`, "", "", "M_BAD_JSON", 400},
		{"event_match without key", Underride, "x", `{"actions":[],"conditions":[{"kind":"event_match","pattern":"x"}]}`, "", "", "M_BAD_JSON", 400},
		{"event_property_is with a compound value", Override, "x", `{"actions":[],"conditions":[{"kind":"event_property_is","key":"a","value":[1]}]}`, "", "", "M_BAD_JSON", 400},
		{"event_property_is with a float", Override, "x", `{"actions":[],"conditions":[{"kind":"event_property_is","key":"a","value":1.5}]}`, "", "", "M_BAD_JSON", 400},
		{"event_property_contains without value", Override, "x", `{"actions":[],"conditions":[{"kind":"event_property_contains","key":"a"}]}`, "", "", "M_BAD_JSON", 400},
		{"room_member_count without is", Override, "x", `{"actions":[],"conditions":[{"kind":"room_member_count"}]}`, "", "", "M_BAD_JSON", 400},
		{"room_member_count with a bad is", Override, "x", `{"actions":[],"conditions":[{"kind":"room_member_count","is":"=>2"}]}`, "", "", "M_BAD_JSON", 400},
		{"sender_notification_permission without key", Override, "x", `{"actions":[],"conditions":[{"kind":"sender_notification_permission"}]}`, "", "", "M_BAD_JSON", 400},
		{"a key that is not a string", Override, "x", `{"actions":[],"conditions":[{"kind":"event_match","key":5,"pattern":"x"}]}`, "", "", "M_BAD_JSON", 400},
		{"before a rule that does not exist", Override, "x", `{"actions":[]}`, "nope", "", "M_UNKNOWN", 400},
		{"after a rule that does not exist", Override, "x", `{"actions":[]}`, "", "nope", "M_UNKNOWN", 400},
		{"before a rule of another kind", Override, "x", `{"actions":[]}`, "cake", "", "M_UNKNOWN", 400},
		{"before a server-default rule", Override, "x", `{"actions":[]}`, ".m.rule.suppress_notices", "", "M_UNKNOWN", 400},
		{"after the master rule", Override, "x", `{"actions":[]}`, "", ".m.rule.master", "M_UNKNOWN", 400},
		{"after a server-default content rule", Content, "x", `{"pattern":"x","actions":[]}`, "", ".m.rule.contains_user_name", "M_UNKNOWN", 400},
		{"before itself", Override, "mine", `{"actions":[]}`, "mine", "", "M_UNKNOWN", 400},
		{"before a missing rule, with after a good one", Override, "x", `{"actions":[]}`, "nope", "mine", "M_UNKNOWN", 400},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rs := Defaults(rtAlice)
			rtPut(t, &rs, Override, "mine", `{"actions":["notify"]}`, "", "")
			rtPut(t, &rs, Content, "cake", `{"pattern":"cake","actions":["notify"]}`, "", "")
			err := rs.Put(tc.kind, tc.ruleID, json.RawMessage(tc.body), tc.before, tc.after)
			rtWantErr(t, err, tc.errcode, tc.status)
			if !reflect.DeepEqual(rs, base) {
				t.Fatal("a refused Put changed the ruleset")
			}
		})
	}
}

func TestDelete(t *testing.T) {
	rs := Defaults(rtAlice)
	rtPut(t, &rs, Room, "!a:x", `{"actions":[]}`, "", "")
	rtPut(t, &rs, Room, "!b:x", `{"actions":[]}`, "", "")
	if err := rs.Delete(Room, "!a:x"); err != nil {
		t.Fatal(err)
	}
	if got := rtRuleIDs(rs.Room); !slices.Equal(got, []string{"!b:x"}) {
		t.Fatalf("room rules %v", got)
	}
	rtWantErr(t, rs.Delete(Room, "!a:x"), "M_NOT_FOUND", 404)
	rtWantErr(t, rs.Delete(Sender, "!b:x"), "M_NOT_FOUND", 404)
	rtWantErr(t, rs.Delete(Kind("x"), "!b:x"), "M_NOT_FOUND", 404)
	before := rtRuleIDs(rs.Underride)
	rtWantErr(t, rs.Delete(Underride, ".m.rule.message"), "M_UNKNOWN", 400)
	if got := rtRuleIDs(rs.Underride); !slices.Equal(got, before) {
		t.Fatalf("a refused Delete changed the rules: %v", got)
	}
	// Deleting a rule and putting it again creates it anew (enabled).
	rtPut(t, &rs, Room, "!a:x", `{"actions":[]}`, "", "")
	if err := rs.SetEnabled(Room, "!a:x", false); err != nil {
		t.Fatal(err)
	}
	if err := rs.Delete(Room, "!a:x"); err != nil {
		t.Fatal(err)
	}
	rtPut(t, &rs, Room, "!a:x", `{"actions":[]}`, "", "")
	if r, _ := rs.Get(Room, "!a:x"); !r.Enabled {
		t.Fatal("a re-created rule is disabled")
	}
}

// TestEditsDoNotAlias: an edit builds new slices, so a ruleset copied
// before (a cached one, say) does not change with it.
func TestEditsDoNotAlias(t *testing.T) {
	rs := Defaults(rtAlice)
	rtPut(t, &rs, Underride, "a", `{"actions":[]}`, "", "")
	snapshot := rs
	saved, _ := json.Marshal(snapshot)
	rtPut(t, &rs, Underride, "b", `{"actions":[]}`, "", "")
	if err := rs.SetEnabled(Underride, "a", false); err != nil {
		t.Fatal(err)
	}
	if err := rs.SetActions(Underride, ".m.rule.message", []Action{}); err != nil {
		t.Fatal(err)
	}
	if err := rs.Delete(Underride, "a"); err != nil {
		t.Fatal(err)
	}
	after, _ := json.Marshal(snapshot)
	if string(after) != string(saved) {
		t.Fatalf("the copy changed:\n%s\n%s", saved, after)
	}
}

func TestSetEnabled(t *testing.T) {
	rs := Defaults(rtAlice)
	if err := rs.SetEnabled(Override, masterRuleID, true); err != nil {
		t.Fatal(err)
	}
	if err := rs.SetEnabled(Content, ".m.rule.contains_user_name", false); err != nil {
		t.Fatal(err)
	}
	rtPut(t, &rs, Sender, "@s:x", `{"actions":[]}`, "", "")
	if err := rs.SetEnabled(Sender, "@s:x", false); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		k    Kind
		id   string
		want bool
	}{{Override, masterRuleID, true}, {Content, ".m.rule.contains_user_name", false}, {Sender, "@s:x", false}, {Underride, ".m.rule.call", true}} {
		if r, err := rs.Get(c.k, c.id); err != nil || r.Enabled != c.want {
			t.Errorf("%s %s: enabled %v (%v), want %v", c.k, c.id, r.Enabled, err, c.want)
		}
	}
	rtWantErr(t, rs.SetEnabled(Override, "nope", true), "M_NOT_FOUND", 404)
	rtWantErr(t, rs.SetEnabled(Kind("x"), masterRuleID, true), "M_NOT_FOUND", 404)

	// And it is what the evaluator does.
	e := Compile(rs, rtAlice)
	o := e.Evaluate(rtEvent(t, "m.room.message", `{"body":"alice"}`), Member{UserID: rtAlice}, rtDM())
	if o.RuleID != masterRuleID || o.Notify {
		t.Fatalf("with the master rule enabled: %+v", o)
	}
}

func TestSetActions(t *testing.T) {
	rs := Defaults(rtAlice)
	var acts []Action
	if err := json.Unmarshal([]byte(`["notify",{"set_tweak":"sound","value":"bing"},"dont_notify",{"set_tweak":"highlight","value":false}]`), &acts); err != nil {
		t.Fatal(err)
	}
	if err := rs.SetActions(Underride, ".m.rule.message", acts); err != nil {
		t.Fatal(err)
	}
	r, _ := rs.Get(Underride, ".m.rule.message")
	raw, _ := json.Marshal(r.Actions)
	if string(raw) != `["notify",{"set_tweak":"sound","value":"bing"},{"set_tweak":"highlight","value":false}]` {
		t.Fatalf("actions %s", raw)
	}
	// Empty actions: the rule matches and does nothing.
	if err := rs.SetActions(Underride, ".m.rule.message", []Action{}); err != nil {
		t.Fatal(err)
	}
	if r, _ := rs.Get(Underride, ".m.rule.message"); r.Actions == nil || len(r.Actions) != 0 {
		t.Fatalf("actions %#v", r.Actions)
	}

	rtWantErr(t, rs.SetActions(Underride, "nope", []Action{}), "M_NOT_FOUND", 404)
	for _, bad := range [][]Action{
		{{Action: "wiggle"}},
		{{}},
		{{Action: actionSetTweak}},
		{{Action: actionSetTweak, Tweak: "sound", Value: json.RawMessage(`{`)}},
	} {
		before, _ := json.Marshal(rs)
		rtWantErr(t, rs.SetActions(Underride, ".m.rule.call", bad), "M_BAD_JSON", 400)
		if after, _ := json.Marshal(rs); string(after) != string(before) {
			t.Fatalf("a refused SetActions changed the rules")
		}
	}
}

func TestLimits(t *testing.T) {
	// The count: at maxUserRules of the user's own, no new one, whatever
	// its size. (So many rules are over the byte limit too, so this is
	// built without Put.)
	rs := Defaults(rtAlice)
	for i := range maxUserRules {
		rs.Room = append(rs.Room, Rule{RuleID: fmt.Sprintf("!%d", i), Enabled: true, Actions: []Action{}})
	}
	err := rs.Put(Sender, "@one:x", json.RawMessage(`{"actions":[]}`), "", "")
	rtWantErr(t, err, "M_TOO_LARGE", 413)
	if !strings.Contains(err.Error(), "Too many") {
		t.Fatalf("refused for another reason: %v", err)
	}
	rs.Room = rs.Room[:maxUserRules-1]
	if err := rs.Put(Sender, "@one:x", json.RawMessage(`{"actions":[]}`), "", ""); err == nil || strings.Contains(err.Error(), "Too many") {
		t.Fatalf("one under the count: %v", err)
	}

	// The size of the whole.
	rs = Defaults(rtAlice)
	big := strings.Repeat("x", maxRulesetBytes)
	rtWantErr(t, rs.Put(Content, "big", json.RawMessage(`{"pattern":"`+big+`","actions":[]}`), "", ""), "M_TOO_LARGE", 413)
	if _, err := rs.Get(Content, "big"); err == nil {
		t.Fatal("a refused rule was kept")
	}
	rtWantErr(t, rs.SetActions(Underride, ".m.rule.call", []Action{{Action: actionSetTweak, Tweak: "sound", Value: json.RawMessage(`"` + big + `"`)}}), "M_TOO_LARGE", 413)
	if r, _ := rs.Get(Underride, ".m.rule.call"); !reflect.DeepEqual(r, Defaults(rtAlice).Underride[0]) {
		t.Fatalf("a refused SetActions changed the rule: %+v", r)
	}
	// Just under the limit is fine.
	raw, _ := rs.AccountData()
	overhead := len(`,{"rule_id":"big","default":false,"enabled":true,"pattern":"","actions":[]}`)
	fits := strings.Repeat("x", maxRulesetBytes-len(raw)-overhead)
	rtPut(t, &rs, Content, "big", `{"pattern":"`+fits+`","actions":[]}`, "", "")
	if raw, _ = rs.AccountData(); len(raw) != maxRulesetBytes {
		t.Fatalf("%d bytes, want exactly %d", len(raw), maxRulesetBytes)
	}
	rtWantErr(t, rs.Put(Content, "big", json.RawMessage(`{"pattern":"`+fits+`x","actions":[]}`), "", ""), "M_TOO_LARGE", 413)
}
