package push

import (
	"encoding/json"
	"math"
	"reflect"
	"slices"
	"testing"

	"maunium.net/go/mautrix/id"
)

const (
	rtAlice   = id.UserID("@alice:example.org")
	rtBob     = id.UserID("@bob:example.org")
	rtRoomID  = "!wonderland:example.org"
	rtAliceDN = "Wonder Girl"
)

// rtSpecDefaults is the spec's predefined ruleset for @alice:example.org,
// written out from the definitions in the client-server API's "Predefined
// Rules" (v1.17), with the legacy body-mention rules as v1.16 defined
// them, in the places v1.16 gave them.
const rtSpecDefaults = `{
  "override": [
    {"rule_id": ".m.rule.master", "default": true, "enabled": false, "conditions": [], "actions": []},
    {"rule_id": ".m.rule.suppress_notices", "default": true, "enabled": true,
     "conditions": [{"kind": "event_match", "key": "content.msgtype", "pattern": "m.notice"}], "actions": []},
    {"rule_id": ".m.rule.invite_for_me", "default": true, "enabled": true,
     "conditions": [
       {"key": "type", "kind": "event_match", "pattern": "m.room.member"},
       {"key": "content.membership", "kind": "event_match", "pattern": "invite"},
       {"key": "state_key", "kind": "event_match", "pattern": "@alice:example.org"}],
     "actions": ["notify", {"set_tweak": "sound", "value": "default"}]},
    {"rule_id": ".m.rule.member_event", "default": true, "enabled": true,
     "conditions": [{"key": "type", "kind": "event_match", "pattern": "m.room.member"}], "actions": []},
    {"rule_id": ".m.rule.is_user_mention", "default": true, "enabled": true,
     "conditions": [{"kind": "event_property_contains", "key": "content.m\\.mentions.user_ids", "value": "@alice:example.org"}],
     "actions": ["notify", {"set_tweak": "sound", "value": "default"}, {"set_tweak": "highlight"}]},
    {"rule_id": ".m.rule.contains_display_name", "default": true, "enabled": true,
     "conditions": [{"kind": "contains_display_name"}],
     "actions": ["notify", {"set_tweak": "sound", "value": "default"}, {"set_tweak": "highlight"}]},
    {"rule_id": ".m.rule.is_room_mention", "default": true, "enabled": true,
     "conditions": [
       {"kind": "event_property_is", "key": "content.m\\.mentions.room", "value": true},
       {"kind": "sender_notification_permission", "key": "room"}],
     "actions": ["notify", {"set_tweak": "highlight"}]},
    {"rule_id": ".m.rule.roomnotif", "default": true, "enabled": true,
     "conditions": [
       {"kind": "event_match", "key": "content.body", "pattern": "@room"},
       {"kind": "sender_notification_permission", "key": "room"}],
     "actions": ["notify", {"set_tweak": "highlight"}]},
    {"rule_id": ".m.rule.tombstone", "default": true, "enabled": true,
     "conditions": [
       {"kind": "event_match", "key": "type", "pattern": "m.room.tombstone"},
       {"kind": "event_match", "key": "state_key", "pattern": ""}],
     "actions": ["notify", {"set_tweak": "highlight"}]},
    {"rule_id": ".m.rule.reaction", "default": true, "enabled": true,
     "conditions": [{"kind": "event_match", "key": "type", "pattern": "m.reaction"}], "actions": []},
    {"rule_id": ".m.rule.room.server_acl", "default": true, "enabled": true,
     "conditions": [
       {"kind": "event_match", "key": "type", "pattern": "m.room.server_acl"},
       {"kind": "event_match", "key": "state_key", "pattern": ""}],
     "actions": []},
    {"rule_id": ".m.rule.suppress_edits", "default": true, "enabled": true,
     "conditions": [{"kind": "event_property_is", "key": "content.m\\.relates_to.rel_type", "value": "m.replace"}],
     "actions": []}
  ],
  "content": [
    {"rule_id": ".m.rule.contains_user_name", "default": true, "enabled": true, "pattern": "alice",
     "actions": ["notify", {"set_tweak": "sound", "value": "default"}, {"set_tweak": "highlight"}]}
  ],
  "room": [],
  "sender": [],
  "underride": [
    {"rule_id": ".m.rule.call", "default": true, "enabled": true,
     "conditions": [{"key": "type", "kind": "event_match", "pattern": "m.call.invite"}],
     "actions": ["notify", {"set_tweak": "sound", "value": "ring"}]},
    {"rule_id": ".m.rule.encrypted_room_one_to_one", "default": true, "enabled": true,
     "conditions": [{"kind": "room_member_count", "is": "2"}, {"kind": "event_match", "key": "type", "pattern": "m.room.encrypted"}],
     "actions": ["notify", {"set_tweak": "sound", "value": "default"}]},
    {"rule_id": ".m.rule.room_one_to_one", "default": true, "enabled": true,
     "conditions": [{"kind": "room_member_count", "is": "2"}, {"kind": "event_match", "key": "type", "pattern": "m.room.message"}],
     "actions": ["notify", {"set_tweak": "sound", "value": "default"}]},
    {"rule_id": ".m.rule.message", "default": true, "enabled": true,
     "conditions": [{"kind": "event_match", "key": "type", "pattern": "m.room.message"}], "actions": ["notify"]},
    {"rule_id": ".m.rule.encrypted", "default": true, "enabled": true,
     "conditions": [{"kind": "event_match", "key": "type", "pattern": "m.room.encrypted"}], "actions": ["notify"]}
  ]
}`

// jsonEqual compares two JSON documents by value (key order and spacing
// aside; array order counts).
func rtJSONEqual(t *testing.T, got, want []byte) {
	t.Helper()
	var g, w any
	if err := json.Unmarshal(got, &g); err != nil {
		t.Fatalf("got is not JSON: %v\n%s", err, got)
	}
	if err := json.Unmarshal(want, &w); err != nil {
		t.Fatalf("want is not JSON: %v\n%s", err, want)
	}
	if !reflect.DeepEqual(g, w) {
		t.Fatalf("JSON differs\n got: %s\nwant: %s", got, want)
	}
}

func TestDefaultsAreTheSpecs(t *testing.T) {
	got, err := json.Marshal(Defaults(rtAlice))
	if err != nil {
		t.Fatal(err)
	}
	rtJSONEqual(t, got, []byte(rtSpecDefaults))
}

func TestDefaultsAreFreshEachCall(t *testing.T) {
	a := Defaults(rtAlice)
	a.Override[2].Enabled = false
	a.Override[2].Actions[0] = Action{Action: "x"}
	*a.Content[0].Pattern = "x"
	b := Defaults(rtAlice)
	if !b.Override[2].Enabled || b.Override[2].Actions[0].Action != actionNotify || *b.Content[0].Pattern != "alice" {
		t.Fatalf("editing one Defaults result changed another: %+v %+v", b.Override[2], b.Content[0])
	}
}

// ev builds a client-format event from bob in the test room.
func rtEvent(t testing.TB, typ string, content string, extra ...string) *Event {
	t.Helper()
	raw := `{"type":` + rtJSON(typ) + `,"content":` + content +
		`,"sender":"@bob:example.org","room_id":"` + rtRoomID + `","event_id":"$e","origin_server_ts":1700000000000`
	for i := 0; i+1 < len(extra); i += 2 {
		raw += `,` + rtJSON(extra[i]) + `:` + extra[i+1]
	}
	raw += `}`
	e, err := NewEvent([]byte(raw))
	if err != nil {
		t.Fatalf("NewEvent(%s): %v", raw, err)
	}
	return e
}

func rtJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return string(b)
}

func rtGroup(power int64) RoomState {
	return RoomState{MemberCount: 12, SenderPower: power, NotificationLevels: map[string]int64{"room": 50}}
}

func rtDM() RoomState {
	return RoomState{MemberCount: 2, NotificationLevels: map[string]int64{}}
}

// TestDefaultRules runs the default rules over spec-shaped events: what
// rule matches for @alice (display name "Wonder Girl") and what it says.
func TestDefaultRules(t *testing.T) {
	me := Member{UserID: rtAlice, DisplayName: rtAliceDN}
	text := func(body string) string { return `{"msgtype":"m.text","body":` + rtJSON(body) + `}` }
	encrypted := `{"algorithm":"m.megolm.v1.aes-sha2","ciphertext":"AwgAEn...","device_id":"BOB","sender_key":"abc","session_id":"def"}`
	type want struct {
		rule            string
		notify, highlit bool
		tweaks          map[string]any
	}
	tests := []struct {
		name string
		ev   *Event
		room RoomState
		who  Member
		want want
	}{
		{"plain message in a group", rtEvent(t, "m.room.message", text("lunch anyone?")), rtGroup(0), me,
			want{".m.rule.message", true, false, map[string]any{}}},
		{"plain message in a DM", rtEvent(t, "m.room.message", text("lunch?")), rtDM(), me,
			want{".m.rule.room_one_to_one", true, false, map[string]any{"sound": "default"}}},
		{"encrypted message in a DM", rtEvent(t, "m.room.encrypted", encrypted), rtDM(), me,
			want{".m.rule.encrypted_room_one_to_one", true, false, map[string]any{"sound": "default"}}},
		{"encrypted message in a group", rtEvent(t, "m.room.encrypted", encrypted), rtGroup(0), me,
			want{".m.rule.encrypted", true, false, map[string]any{}}},
		{"notice in a group", rtEvent(t, "m.room.message", `{"msgtype":"m.notice","body":"build passed"}`), rtGroup(0), me,
			want{".m.rule.suppress_notices", false, false, map[string]any{}}},
		{"notice in a DM", rtEvent(t, "m.room.message", `{"msgtype":"m.notice","body":"hi"}`), rtDM(), me,
			want{".m.rule.suppress_notices", false, false, map[string]any{}}},
		{"notice naming me", rtEvent(t, "m.room.message", `{"msgtype":"m.notice","body":"alice: build failed"}`), rtGroup(0), me,
			want{".m.rule.suppress_notices", false, false, map[string]any{}}},
		{"invite for me", rtEvent(t, "m.room.member", `{"membership":"invite","displayname":"alice"}`, "state_key", `"@alice:example.org"`), rtGroup(0), me,
			want{".m.rule.invite_for_me", true, false, map[string]any{"sound": "default"}}},
		{"invite for someone else", rtEvent(t, "m.room.member", `{"membership":"invite"}`, "state_key", `"@carol:example.org"`), rtGroup(0), me,
			want{".m.rule.member_event", false, false, map[string]any{}}},
		{"join", rtEvent(t, "m.room.member", `{"membership":"join","displayname":"Wonder Girl"}`, "state_key", `"@carol:example.org"`), rtGroup(0), me,
			want{".m.rule.member_event", false, false, map[string]any{}}},
		{"user mention", rtEvent(t, "m.room.message", `{"msgtype":"m.text","body":"hey you","m.mentions":{"user_ids":["@carol:example.org","@alice:example.org"]}}`), rtGroup(0), me,
			want{".m.rule.is_user_mention", true, true, map[string]any{"sound": "default", "highlight": true}}},
		{"someone else's mention with my name in the body", rtEvent(t, "m.room.message", `{"msgtype":"m.text","body":"alice, Wonder Girl, look","m.mentions":{"user_ids":["@carol:example.org"]}}`), rtGroup(0), me,
			want{".m.rule.message", true, false, map[string]any{}}},
		{"empty m.mentions turns off the body rules", rtEvent(t, "m.room.message", `{"msgtype":"m.text","body":"> <@alice:example.org> alice said @room","m.mentions":{}}`), rtGroup(100), me,
			want{".m.rule.message", true, false, map[string]any{}}},
		{"room mention with permission", rtEvent(t, "m.room.message", `{"msgtype":"m.text","body":"all","m.mentions":{"room":true}}`), rtGroup(50), me,
			want{".m.rule.is_room_mention", true, true, map[string]any{"highlight": true}}},
		{"room mention without permission", rtEvent(t, "m.room.message", `{"msgtype":"m.text","body":"all","m.mentions":{"room":true}}`), rtGroup(49), me,
			want{".m.rule.message", true, false, map[string]any{}}},
		{"room mention as a string is none", rtEvent(t, "m.room.message", `{"msgtype":"m.text","body":"all","m.mentions":{"room":"true"}}`), rtGroup(100), me,
			want{".m.rule.message", true, false, map[string]any{}}},
		{"@room in the body with permission", rtEvent(t, "m.room.message", text("@room meeting now")), rtGroup(50), me,
			want{".m.rule.roomnotif", true, true, map[string]any{"highlight": true}}},
		{"@room in the body without permission", rtEvent(t, "m.room.message", text("@room meeting now")), rtGroup(0), me,
			want{".m.rule.message", true, false, map[string]any{}}},
		{"@room in a word is none", rtEvent(t, "m.room.message", text("mail x@roomservice.example")), rtGroup(100), me,
			want{".m.rule.message", true, false, map[string]any{}}},
		{"@room, a v12 creator", rtEvent(t, "m.room.message", text("@room")), RoomState{MemberCount: 12, SenderPower: math.MaxInt64, NotificationLevels: map[string]int64{"room": 100}}, me,
			want{".m.rule.roomnotif", true, true, map[string]any{"highlight": true}}},
		{"@room with a raised notification level", rtEvent(t, "m.room.message", text("@room")), RoomState{MemberCount: 12, SenderPower: 50, NotificationLevels: map[string]int64{"room": 75}}, me,
			want{".m.rule.message", true, false, map[string]any{}}},
		{"display name", rtEvent(t, "m.room.message", text("thanks, WONDER GIRL!")), rtGroup(0), me,
			want{".m.rule.contains_display_name", true, true, map[string]any{"sound": "default", "highlight": true}}},
		{"display name inside a word", rtEvent(t, "m.room.message", text("two wonder girls")), rtGroup(0), me,
			want{".m.rule.message", true, false, map[string]any{}}},
		{"display name at the start", rtEvent(t, "m.room.message", text("Wonder Girl: ping")), rtGroup(0), me,
			want{".m.rule.contains_display_name", true, true, map[string]any{"sound": "default", "highlight": true}}},
		{"no display name", rtEvent(t, "m.room.message", text("wonder girl")), rtGroup(0), Member{UserID: rtAlice},
			want{".m.rule.message", true, false, map[string]any{}}},
		{"localpart", rtEvent(t, "m.room.message", text("ask Alice.")), rtGroup(0), me,
			want{".m.rule.contains_user_name", true, true, map[string]any{"sound": "default", "highlight": true}}},
		{"localpart before a dash", rtEvent(t, "m.room.message", text("alice-ish")), rtGroup(0), me,
			want{".m.rule.contains_user_name", true, true, map[string]any{"sound": "default", "highlight": true}}},
		{"localpart inside a word", rtEvent(t, "m.room.message", text("malice")), rtGroup(0), me,
			want{".m.rule.message", true, false, map[string]any{}}},
		{"localpart before an underscore", rtEvent(t, "m.room.message", text("alice_bot")), rtGroup(0), me,
			want{".m.rule.message", true, false, map[string]any{}}},
		{"localpart in a DM", rtEvent(t, "m.room.message", text("alice?")), rtDM(), me,
			want{".m.rule.contains_user_name", true, true, map[string]any{"sound": "default", "highlight": true}}},
		{"edit", rtEvent(t, "m.room.message", `{"msgtype":"m.text","body":"* lunch at 1","m.new_content":{"msgtype":"m.text","body":"lunch at 1"},"m.relates_to":{"rel_type":"m.replace","event_id":"$orig"}}`), rtGroup(0), me,
			want{".m.rule.suppress_edits", false, false, map[string]any{}}},
		{"edit in a DM", rtEvent(t, "m.room.message", `{"msgtype":"m.text","body":"* hi","m.new_content":{"msgtype":"m.text","body":"hi"},"m.relates_to":{"rel_type":"m.replace","event_id":"$orig"}}`), rtDM(), me,
			want{".m.rule.suppress_edits", false, false, map[string]any{}}},
		{"edit adding my name, with m.mentions", rtEvent(t, "m.room.message", `{"msgtype":"m.text","body":"* hi alice","m.mentions":{},"m.new_content":{"msgtype":"m.text","body":"hi alice","m.mentions":{"user_ids":["@alice:example.org"]}},"m.relates_to":{"rel_type":"m.replace","event_id":"$orig"}}`), rtGroup(0), me,
			want{".m.rule.suppress_edits", false, false, map[string]any{}}},
		{"reply in a thread", rtEvent(t, "m.room.message", `{"msgtype":"m.text","body":"yes","m.relates_to":{"rel_type":"m.thread","event_id":"$root"}}`), rtGroup(0), me,
			want{".m.rule.message", true, false, map[string]any{}}},
		{"reaction", rtEvent(t, "m.reaction", `{"m.relates_to":{"rel_type":"m.annotation","event_id":"$x","key":"👍"}}`), rtDM(), me,
			want{".m.rule.reaction", false, false, map[string]any{}}},
		{"tombstone", rtEvent(t, "m.room.tombstone", `{"body":"This room has been replaced","replacement_room":"!new:example.org"}`, "state_key", `""`), rtGroup(0), me,
			want{".m.rule.tombstone", true, true, map[string]any{"highlight": true}}},
		{"tombstone with a state key is not one", rtEvent(t, "m.room.tombstone", `{"replacement_room":"!new:example.org"}`, "state_key", `"x"`), rtGroup(0), me,
			want{"", false, false, nil}},
		{"server ACL", rtEvent(t, "m.room.server_acl", `{"allow":["*"],"deny":["evil.example"],"allow_ip_literals":false}`, "state_key", `""`), rtGroup(0), me,
			want{".m.rule.room.server_acl", false, false, map[string]any{}}},
		{"call", rtEvent(t, "m.call.invite", `{"call_id":"c1","lifetime":60000,"offer":{"sdp":"v=0","type":"offer"},"version":"1"}`), rtGroup(0), me,
			want{".m.rule.call", true, false, map[string]any{"sound": "ring"}}},
		{"call in a DM", rtEvent(t, "m.call.invite", `{"call_id":"c1","lifetime":60000,"offer":{"sdp":"v=0","type":"offer"},"version":"1"}`), rtDM(), me,
			want{".m.rule.call", true, false, map[string]any{"sound": "ring"}}},
		{"topic change", rtEvent(t, "m.room.topic", `{"topic":"alice's room"}`, "state_key", `""`), rtGroup(0), me,
			want{"", false, false, nil}},
		{"sticker", rtEvent(t, "m.sticker", `{"body":"alice","url":"mxc://example.org/abc","info":{}}`), rtGroup(0), me,
			want{".m.rule.contains_user_name", true, true, map[string]any{"sound": "default", "highlight": true}}},
	}
	e := Compile(Defaults(rtAlice), rtAlice)
	// The defaults compiled once for every member give the same outcomes.
	shared := CompileDefaults()
	matched := map[string]bool{}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := e.Evaluate(tc.ev, tc.who, tc.room)
			if s := shared.Evaluate(tc.ev, tc.who, tc.room); !reflect.DeepEqual(s, got) {
				t.Fatalf("shared defaults: %+v, per-user defaults: %+v", s, got)
			}
			if got.RuleID != tc.want.rule || got.Notify != tc.want.notify || got.Highlight != tc.want.highlit {
				t.Fatalf("got rule %q notify %v highlight %v, want rule %q notify %v highlight %v",
					got.RuleID, got.Notify, got.Highlight, tc.want.rule, tc.want.notify, tc.want.highlit)
			}
			if tc.want.rule == "" {
				if got.Actions != nil {
					t.Fatalf("no rule matched, but actions %s", got.Actions)
				}
				return
			}
			if tw := Tweaks(got.Actions); !reflect.DeepEqual(tw, tc.want.tweaks) {
				t.Fatalf("tweaks %v, want %v (actions %s)", tw, tc.want.tweaks, got.Actions)
			}
			rule, err := (&Ruleset{Override: Defaults(rtAlice).Override, Content: Defaults(rtAlice).Content, Underride: Defaults(rtAlice).Underride}).rtRuleAnyKind(got.RuleID)
			if err != nil {
				t.Fatal(err)
			}
			want, _ := json.Marshal(rule.Actions)
			rtJSONEqual(t, got.Actions, want)
		})
		matched[tc.want.rule] = true
	}
	for _, k := range kinds {
		for _, r := range Defaults(rtAlice).Rules(k) {
			if r.RuleID != masterRuleID && !matched[r.RuleID] {
				t.Errorf("no case matches the default rule %s", r.RuleID)
			}
		}
	}
}

// ruleAnyKind finds a rule by ID in any kind (test helper).
func (rs *Ruleset) rtRuleAnyKind(ruleID string) (Rule, error) {
	for _, k := range kinds {
		if r, err := rs.Get(k, ruleID); err == nil {
			return r, nil
		}
	}
	return rs.Get(Override, ruleID)
}

func TestOwnEventsNeverNotify(t *testing.T) {
	e := Compile(Defaults(rtAlice), rtAlice)
	raw := `{"type":"m.room.message","sender":"@alice:example.org","room_id":"!r:example.org","content":{"msgtype":"m.text","body":"alice @room","m.mentions":{"user_ids":["@alice:example.org"],"room":true}}}`
	own, err := NewEvent([]byte(raw))
	if err != nil {
		t.Fatal(err)
	}
	if got := e.Evaluate(own, Member{UserID: rtAlice, DisplayName: rtAliceDN}, rtDM()); got.Notify || got.RuleID != "" || got.Actions != nil {
		t.Fatalf("own event: %+v", got)
	}
	// Even when the member given differs from the evaluator's user (a
	// caller's mistake), the evaluator's own user is not notified.
	if got := e.Evaluate(own, Member{UserID: rtBob}, rtDM()); got.Notify {
		t.Fatalf("own event for the evaluator's user: %+v", got)
	}
	// The same event from bob notifies alice, but not bob.
	bobs, err := NewEvent([]byte(`{"type":"m.room.message","sender":"@bob:example.org","room_id":"!r:example.org","content":{"msgtype":"m.text","body":"hi"}}`))
	if err != nil {
		t.Fatal(err)
	}
	if got := e.Evaluate(bobs, Member{UserID: rtAlice}, rtDM()); !got.Notify {
		t.Fatalf("bob's event: %+v", got)
	}
	if got := Compile(Defaults(rtBob), rtBob).Evaluate(bobs, Member{UserID: rtBob}, rtDM()); got.Notify || got.RuleID != "" {
		t.Fatalf("bob's event for bob: %+v", got)
	}
	if got := e.Evaluate(bobs, Member{UserID: rtBob}, rtDM()); got.Notify {
		t.Fatalf("bob's event for the member bob: %+v", got)
	}
}

func TestMasterRuleSilencesEverything(t *testing.T) {
	rs := Defaults(rtAlice)
	if err := rs.SetEnabled(Override, masterRuleID, true); err != nil {
		t.Fatal(err)
	}
	if err := rs.Put(Override, "mine", json.RawMessage(`{"actions":["notify"]}`), "", ""); err != nil {
		t.Fatal(err)
	}
	e := Compile(rs, rtAlice)
	for _, body := range []string{`{"msgtype":"m.text","body":"alice"}`, `{"body":"x","m.mentions":{"user_ids":["@alice:example.org"]}}`} {
		got := e.Evaluate(rtEvent(t, "m.room.message", body), Member{UserID: rtAlice}, rtDM())
		if got.RuleID != masterRuleID || got.Notify || string(got.Actions) != "[]" {
			t.Fatalf("with the master rule on: %+v", got)
		}
	}
}

func TestLegacyRulesAreNamed(t *testing.T) {
	var legacy []string
	for _, k := range kinds {
		for _, r := range Defaults(rtAlice).Rules(k) {
			if legacyMentionRule(k, r.RuleID) {
				legacy = append(legacy, string(k)+"/"+r.RuleID)
			}
		}
	}
	want := []string{"override/.m.rule.contains_display_name", "override/.m.rule.roomnotif", "content/.m.rule.contains_user_name"}
	if !slices.Equal(legacy, want) {
		t.Fatalf("legacy rules %v, want %v", legacy, want)
	}
}

// TestSharedDefaultsAreMemberRelative: the shared default evaluator
// compares the conditions that name "the user" with the member evaluated,
// so one member's mention, invite or localpart is not another's.
func TestSharedDefaultsAreMemberRelative(t *testing.T) {
	shared := CompileDefaults()
	carol := Member{UserID: "@carol:example.org"}
	dave := Member{UserID: "@dave:example.org"}
	cases := []struct {
		name       string
		ev         *Event
		who        Member
		rule       string
		highlights bool
	}{
		{"mention of carol, for carol", rtEvent(t, "m.room.message", `{"msgtype":"m.text","body":"hi","m.mentions":{"user_ids":["@carol:example.org"]}}`), carol, ".m.rule.is_user_mention", true},
		{"mention of carol, for dave", rtEvent(t, "m.room.message", `{"msgtype":"m.text","body":"hi","m.mentions":{"user_ids":["@carol:example.org"]}}`), dave, ".m.rule.message", false},
		{"invite of carol, for carol", rtEvent(t, "m.room.member", `{"membership":"invite"}`, "state_key", `"@carol:example.org"`), carol, ".m.rule.invite_for_me", false},
		{"invite of carol, for dave", rtEvent(t, "m.room.member", `{"membership":"invite"}`, "state_key", `"@carol:example.org"`), dave, ".m.rule.member_event", false},
		{"carol's localpart, for carol", rtEvent(t, "m.room.message", `{"msgtype":"m.text","body":"ask Carol"}`), carol, ".m.rule.contains_user_name", true},
		{"carol's localpart, for dave", rtEvent(t, "m.room.message", `{"msgtype":"m.text","body":"ask Carol"}`), dave, ".m.rule.message", false},
	}
	for _, c := range cases {
		got := shared.Evaluate(c.ev, c.who, rtGroup(0))
		want := Compile(Defaults(c.who.UserID), c.who.UserID).Evaluate(c.ev, c.who, rtGroup(0))
		if got.RuleID != c.rule || got.Highlight != c.highlights || !reflect.DeepEqual(got, want) {
			t.Errorf("%s: %+v (per-user rules: %+v), want rule %s highlight %v", c.name, got, want, c.rule, c.highlights)
		}
	}
}
