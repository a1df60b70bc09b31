package push

import (
	"encoding/json"
	"errors"
	"reflect"
	"slices"
	"strings"
	"testing"

	"maunium.net/go/mautrix"
)

func rtRuleIDs(rules []Rule) []string {
	ids := make([]string, len(rules))
	for i, r := range rules {
		ids[i] = r.RuleID
	}
	return ids
}

func TestParseKind(t *testing.T) {
	for _, k := range []string{"override", "content", "room", "sender", "underride"} {
		if got, err := ParseKind(k); err != nil || string(got) != k {
			t.Errorf("ParseKind(%q) = %q, %v", k, got, err)
		}
	}
	for _, bad := range []string{"", "global", "Override", "overrides"} {
		_, err := ParseKind(bad)
		var re mautrix.RespError
		if !errors.As(err, &re) || re.ErrCode != "M_INVALID_PARAM" {
			t.Errorf("ParseKind(%q): %v, want M_INVALID_PARAM", bad, err)
		}
	}
}

func TestRulesetJSON(t *testing.T) {
	// Every kind is an array, never null, and a rule with nil actions has
	// "actions": [].
	raw, err := json.Marshal(Ruleset{Override: []Rule{{RuleID: "a", Enabled: true}}})
	if err != nil {
		t.Fatal(err)
	}
	rtJSONEqual(t, raw, []byte(`{"override":[{"rule_id":"a","default":false,"enabled":true,"actions":[]}],"content":[],"room":[],"sender":[],"underride":[]}`))

	// The marshalling details: an empty pattern and empty conditions are
	// kept, a bare highlight tweak has no value, a null condition value is
	// kept (event_property_is null), other values unchanged.
	empty := ""
	rs := Ruleset{Override: []Rule{{
		RuleID: "x", Enabled: true,
		Conditions: []Condition{
			{Kind: condEventMatch, Key: "state_key", Pattern: &empty},
			{Kind: condPropertyIs, Key: "content.a", Value: json.RawMessage(`null`)},
		},
		Actions: []Action{{Action: actionNotify}, {Action: actionSetTweak, Tweak: "highlight"}, {Action: actionSetTweak, Tweak: "sound", Value: json.RawMessage(`"default"`)}},
	}, {RuleID: "y", Conditions: []Condition{}}}}
	raw, err = json.Marshal(rs)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"override":[
		{"rule_id":"x","default":false,"enabled":true,"conditions":[{"kind":"event_match","key":"state_key","pattern":""},{"kind":"event_property_is","key":"content.a","value":null}],
		 "actions":["notify",{"set_tweak":"highlight"},{"set_tweak":"sound","value":"default"}]},
		{"rule_id":"y","default":false,"enabled":false,"conditions":[],"actions":[]}],
		"content":[],"room":[],"sender":[],"underride":[]}`
	rtJSONEqual(t, raw, []byte(want))

	// And it reads back the same.
	var back Ruleset
	if err := json.Unmarshal(raw, &back); err != nil {
		t.Fatal(err)
	}
	again, _ := json.Marshal(back)
	rtJSONEqual(t, again, raw)
}

func TestActionJSON(t *testing.T) {
	tests := []struct {
		in   string
		want Action
	}{
		{`"notify"`, Action{Action: "notify"}},
		{`"dont_notify"`, Action{Action: "dont_notify"}},
		{`{"set_tweak":"sound","value":"ring"}`, Action{Action: "set_tweak", Tweak: "sound", Value: json.RawMessage(`"ring"`)}},
		{`{"set_tweak":"highlight"}`, Action{Action: "set_tweak", Tweak: "highlight"}},
		{`{"set_tweak":"highlight","value":null}`, Action{Action: "set_tweak", Tweak: "highlight"}},
		{`{ "value" : { "a" : [1, 2] } , "set_tweak" : "x" }`, Action{Action: "set_tweak", Tweak: "x", Value: json.RawMessage(`{"a":[1,2]}`)}},
		{`{"set_tweak":5}`, Action{}},
		{`{"something":"else"}`, Action{}},
	}
	for _, tc := range tests {
		var a Action
		if err := json.Unmarshal([]byte(tc.in), &a); err != nil {
			t.Fatalf("%s: %v", tc.in, err)
		}
		if !reflect.DeepEqual(a, tc.want) {
			t.Errorf("%s: %#v, want %#v", tc.in, a, tc.want)
		}
	}
	for _, bad := range []string{`5`, `[]`, `{"set_tweak":"x","value":}`} {
		var a Action
		if err := json.Unmarshal([]byte(bad), &a); err == nil {
			t.Errorf("%s: no error", bad)
		}
	}
}

func TestRenderNothingStored(t *testing.T) {
	for _, stored := range []string{"", "null", " ", `{}`, `{"global":null}`} {
		rs, err := Render(json.RawMessage(stored), rtAlice)
		if err != nil {
			t.Fatalf("%q: %v", stored, err)
		}
		if !reflect.DeepEqual(rs, Defaults(rtAlice)) {
			t.Fatalf("%q: not the defaults", stored)
		}
	}
	rs, err := Render(nil, rtAlice)
	if err != nil || !reflect.DeepEqual(rs, Defaults(rtAlice)) {
		t.Fatalf("nil: %v", err)
	}
}

func TestRenderGarbage(t *testing.T) {
	for _, stored := range []string{
		`x`, `[]`, `{"global":5}`, `{"global":{"override":5}}`, `{"global":{"override":[5]}}`,
		`{"global":{"room":[{"rule_id":7}]}}`, `{"global":{"room":[{"rule_id":"!a:b","actions":[5]}]}}`, `{"global":{}`,
	} {
		if _, err := Render(json.RawMessage(stored), rtAlice); err == nil {
			t.Errorf("%s: no error", stored)
		}
	}
}

func TestRenderMerges(t *testing.T) {
	// What was stored a while ago: the master rule enabled, a default
	// message rule disabled with other actions, a default that no longer
	// exists, rules of the user's own in every kind, a historical action,
	// and a rule claiming to be a default without the "." prefix.
	stored := `{"global":{
		"override":[
			{"rule_id":".m.rule.master","default":true,"enabled":true,"conditions":[],"actions":[]},
			{"rule_id":"mine1","default":false,"enabled":true,"conditions":[{"kind":"event_match","key":"content.body","pattern":"beer"}],"actions":["notify"]},
			{"rule_id":".m.rule.suppress_notices","default":true,"enabled":false,"conditions":[],"actions":["dont_notify"]},
			{"rule_id":".m.rule.gone","default":true,"enabled":true,"conditions":[],"actions":["notify"]},
			{"rule_id":"mine2","default":true,"enabled":false,"conditions":[],"actions":["dont_notify","notify"]}
		],
		"content":[
			{"rule_id":".m.rule.contains_user_name","default":true,"enabled":false,"pattern":"alice","actions":["notify"]},
			{"rule_id":"cake","default":false,"enabled":true,"pattern":"cake","actions":["notify",{"set_tweak":"sound","value":"cakealarm.wav"}]}
		],
		"room":[{"rule_id":"!quiet:example.org","default":false,"enabled":true,"actions":[]}],
		"sender":[{"rule_id":"@spambot:example.org","default":false,"enabled":true,"actions":[]}],
		"underride":[
			{"rule_id":".m.rule.message","default":true,"enabled":false,"conditions":[{"kind":"event_match","key":"type","pattern":"changed"}],"actions":["notify",{"set_tweak":"sound","value":"x"}]},
			{"rule_id":"late","default":false,"enabled":true,"conditions":[],"actions":["notify"]}
		]}}`
	rs, err := Render(json.RawMessage(stored), rtAlice)
	if err != nil {
		t.Fatal(err)
	}
	def := Defaults(rtAlice)
	wantOverride := append([]string{".m.rule.master", "mine1", "mine2"}, rtRuleIDs(def.Override[1:])...)
	if got := rtRuleIDs(rs.Override); !slices.Equal(got, wantOverride) {
		t.Fatalf("override %v\nwant %v", got, wantOverride)
	}
	if got, want := rtRuleIDs(rs.Content), []string{"cake", ".m.rule.contains_user_name"}; !slices.Equal(got, want) {
		t.Fatalf("content %v, want %v", got, want)
	}
	if got, want := rtRuleIDs(rs.Room), []string{"!quiet:example.org"}; !slices.Equal(got, want) {
		t.Fatalf("room %v", got)
	}
	if got, want := rtRuleIDs(rs.Sender), []string{"@spambot:example.org"}; !slices.Equal(got, want) {
		t.Fatalf("sender %v", got)
	}
	if got, want := rtRuleIDs(rs.Underride), append([]string{"late"}, rtRuleIDs(def.Underride)...); !slices.Equal(got, want) {
		t.Fatalf("underride %v, want %v", got, want)
	}

	get := func(k Kind, id string) Rule {
		t.Helper()
		r, err := rs.Get(k, id)
		if err != nil {
			t.Fatalf("%s %s: %v", k, id, err)
		}
		return r
	}
	if !get(Override, ".m.rule.master").Enabled {
		t.Error("master: enabled not carried over")
	}
	sn := get(Override, ".m.rule.suppress_notices")
	if sn.Enabled || len(sn.Actions) != 0 {
		t.Errorf("suppress_notices: %+v", sn)
	}
	// Only enabled and actions are carried over: the conditions stay the
	// current default's.
	msg := get(Underride, ".m.rule.message")
	if msg.Enabled || !reflect.DeepEqual(msg.Conditions, def.Underride[3].Conditions) {
		t.Errorf(".m.rule.message: %+v", msg)
	}
	if raw, _ := json.Marshal(msg.Actions); string(raw) != `["notify",{"set_tweak":"sound","value":"x"}]` {
		t.Errorf(".m.rule.message actions %s", raw)
	}
	if cu := get(Content, ".m.rule.contains_user_name"); cu.Enabled || *cu.Pattern != "alice" {
		t.Errorf("contains_user_name: %+v", cu)
	}
	// A rule outside the "." namespace is the user's, whatever it says.
	if m2 := get(Override, "mine2"); m2.Default || m2.Enabled || len(m2.Actions) != 1 || m2.Actions[0].Action != actionNotify {
		t.Errorf("mine2: %+v", m2)
	}
	if _, err := rs.Get(Override, ".m.rule.gone"); err == nil {
		t.Error("a vanished default was kept")
	}
	// Untouched defaults are as defined.
	if r := get(Override, ".m.rule.tombstone"); !reflect.DeepEqual(r, def.Override[8]) {
		t.Errorf("tombstone %+v", r)
	}

	// What Render gives, stored and rendered again, is the same.
	raw, err := rs.AccountData()
	if err != nil {
		t.Fatal(err)
	}
	again, err := Render(raw, rtAlice)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(again, rs) {
		t.Fatalf("render of the rendered differs:\n%+v\n%+v", again, rs)
	}
	if !strings.HasPrefix(string(raw), `{"global":{"override":[`) {
		t.Fatalf("AccountData: %.40s", raw)
	}
}

func TestRenderMissingActionsKeepsTheDefaults(t *testing.T) {
	rs, err := Render(json.RawMessage(`{"global":{"underride":[{"rule_id":".m.rule.call","default":true,"enabled":false}]}}`), rtAlice)
	if err != nil {
		t.Fatal(err)
	}
	call, _ := rs.Get(Underride, ".m.rule.call")
	if call.Enabled || !reflect.DeepEqual(call.Actions, Defaults(rtAlice).Underride[0].Actions) {
		t.Fatalf("call: %+v", call)
	}
}

func TestRenderDuplicateIDs(t *testing.T) {
	rs, err := Render(json.RawMessage(`{"global":{"room":[
		{"rule_id":"!a:x","default":false,"enabled":true,"actions":["notify"]},
		{"rule_id":"!a:x","default":false,"enabled":true,"actions":[]}]}}`), rtAlice)
	if err != nil {
		t.Fatal(err)
	}
	if len(rs.Room) != 1 || len(rs.Room[0].Actions) != 1 {
		t.Fatalf("room rules %+v", rs.Room)
	}
}

// TestRenderedRulesEvaluate: what Render carries over is what the
// evaluator does.
func TestRenderedRulesEvaluate(t *testing.T) {
	rs, err := Render(json.RawMessage(`{"global":{
		"underride":[{"rule_id":".m.rule.message","default":true,"enabled":true,"actions":["notify",{"set_tweak":"highlight"}]}],
		"room":[{"rule_id":"!quiet:example.org","default":false,"enabled":true,"actions":["dont_notify"]}]}}`), rtAlice)
	if err != nil {
		t.Fatal(err)
	}
	e := Compile(rs, rtAlice)
	msg := `{"type":"m.room.message","sender":"@bob:example.org","room_id":"%s","content":{"msgtype":"m.text","body":"hi"}}`
	loud := e.Evaluate(rtMustEvent(t, strings.Replace(msg, "%s", "!other:example.org", 1)), Member{UserID: rtAlice}, rtGroup(0))
	if loud.RuleID != ".m.rule.message" || !loud.Notify || !loud.Highlight {
		t.Fatalf("other room: %+v", loud)
	}
	quiet := e.Evaluate(rtMustEvent(t, strings.Replace(msg, "%s", "!quiet:example.org", 1)), Member{UserID: rtAlice}, rtGroup(0))
	if quiet.RuleID != "!quiet:example.org" || quiet.Notify || string(quiet.Actions) != "[]" {
		t.Fatalf("quiet room: %+v %s", quiet, quiet.Actions)
	}
}
