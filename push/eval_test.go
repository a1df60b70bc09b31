package push

import (
	"bytes"
	"encoding/json"
	"fmt"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"unicode/utf8"

	"maunium.net/go/mautrix/id"
)

// evalOne compiles a ruleset of one override rule (notify) with conds and
// reports whether it matches raw for alice.
func rtEvalOne(t *testing.T, raw string, room RoomState, m Member, conds ...Condition) bool {
	t.Helper()
	e, err := NewEvent([]byte(raw))
	if err != nil {
		t.Fatalf("NewEvent(%s): %v", raw, err)
	}
	if conds == nil {
		conds = []Condition{}
	}
	rs := Ruleset{Override: []Rule{{RuleID: "r", Enabled: true, Conditions: conds, Actions: []Action{{Action: actionNotify}}}}}
	got := Compile(rs, rtAlice).Evaluate(e, m, room)
	return got.RuleID == "r"
}

func rtMatch(key, pattern string) Condition {
	return Condition{Kind: condEventMatch, Key: key, Pattern: &pattern}
}

// TestEventMatch runs the spec's examples of event_match and more.
func TestEventMatch(t *testing.T) {
	topic := func(v string) string {
		return `{"type":"m.room.topic","state_key":"","sender":"@example:example.org","room_id":"!r:example.com","content":{"topic":` + v + `}}`
	}
	body := func(v string) string {
		return `{"type":"m.room.message","sender":"@example:example.org","room_id":"!r:example.com","content":{"body":` + v + `}}`
	}
	tests := []struct {
		raw, key, pattern string
		want              bool
	}{
		// The spec's example: content.topic against "lunc?*".
		{topic(`"Lunch plans"`), "content.topic", "lunc?*", true},
		{topic(`"LUNCH"`), "content.topic", "lunc?*", true},
		{topic(`" lunch"`), "content.topic", "lunc?*", false},
		{topic(`"lunc"`), "content.topic", "lunc?*", false},
		{topic(`null`), "content.topic", "lunc?*", false},
		// Not a string, or absent: no match even with "*".
		{topic(`null`), "content.topic", "*", false},
		{topic(`5`), "content.topic", "*", false},
		{topic(`{"a":"b"}`), "content.topic", "*", false},
		{topic(`["lunch"]`), "content.topic", "*", false},
		{topic(`"x"`), "content.nothing", "*", false},
		{topic(`""`), "content.topic", "*", true},
		{topic(`""`), "content.topic", "", true},
		{topic(`"a"`), "content.topic", "", false},
		// Whole value, case-insensitively, Unicode too.
		{topic(`"Lunch plans"`), "content.topic", "lunch", false},
		{topic(`"ÉCOLE"`), "content.topic", "école", true},
		{topic(`"école"`), "content.topic", "ÉCO?E", true},
		{topic(`"a*b"`), "content.topic", "a*b", true},
		{topic(`"axxb"`), "content.topic", "a*b", true},
		{topic(`"axxbc"`), "content.topic", "a*b", false},
		{topic(`"ab"`), "content.topic", "a**b", true},
		{topic(`"aéb"`), "content.topic", "a?b", true},
		{topic(`"ab"`), "content.topic", "a?b", false},
		{topic(`"mississippi"`), "content.topic", "*iss*ppi", true},
		{topic(`"mississippi"`), "content.topic", "m*s?s*i", true},
		{topic(`"mississippi"`), "content.topic", "m*x*i", false},
		// Top-level properties.
		{topic(`"x"`), "type", "m.room.*", true},
		{topic(`"x"`), "type", "M.ROOM.TOPIC", true},
		{topic(`"x"`), "sender", "@example:*", true},
		{topic(`"x"`), "room_id", "!r:example.com", true},
		{topic(`"x"`), "state_key", "", true},
		{body(`"x"`), "state_key", "", false},
		{body(`"x"`), "state_key", "*", false},
		// The spec's example for content.body: word boundaries.
		{body(`"An example event."`), "content.body", "ex*ple", true},
		{body(`"exple"`), "content.body", "ex*ple", true},
		{body(`"An exciting triple-whammy"`), "content.body", "ex*ple", true},
		{body(`"An examples event"`), "content.body", "ex*ple", false},
		{body(`"Anexample event"`), "content.body", "ex*ple", false},
		{body(`"cake is a lie"`), "content.body", "cake*lie", true},
		{body(`"cake is a lie!"`), "content.body", "cake*lie", true},
		{body(`"cake is a lies"`), "content.body", "cake*lie", false},
		{body(`"the cake"`), "content.body", "cake", true},
		{body(`"the Cakes"`), "content.body", "cake", false},
		{body(`"the CAKE_"`), "content.body", "cake", false},
		{body(`"über cake"`), "content.body", "cake", true},
		{body(`"aücake"`), "content.body", "cake", true}, // ü is not in [A-Za-z0-9_]: a boundary
		{body(`"x"`), "content.body", "*", true},
		{body(`"hello"`), "content.body", "h?llo", true},
		{body(`"a hello b"`), "content.body", "?ello", true},
		{body(`"a hello b"`), "content.body", "?", true},
		{body(`"hello"`), "content.body", "?", false},
		{body(`""`), "content.body", "", true},
		{body(`"a b"`), "content.body", "", false},
		{body(`"a  b"`), "content.body", "", true},
		{body(`5`), "content.body", "*", false},
	}
	for _, tc := range tests {
		t.Run(tc.key+" "+tc.pattern+" "+tc.raw, func(t *testing.T) {
			if got := rtEvalOne(t, tc.raw, rtGroup(0), Member{UserID: rtAlice}, rtMatch(tc.key, tc.pattern)); got != tc.want {
				t.Fatalf("match = %v, want %v", got, tc.want)
			}
		})
	}
}

// TestLongGlobs exercises the patterns of over 63 tokens, which take the
// slow path.
func TestLongGlobs(t *testing.T) {
	long := strings.Repeat("ab", 40) // 80 tokens
	raw := func(field, v string) string {
		return `{"type":"t","sender":"@s:x","content":{"` + field + `":` + rtJSON(v) + `}}`
	}
	tests := []struct {
		field, value, pattern string
		want                  bool
	}{
		{"topic", long, strings.Repeat("a?", 40), true},
		{"topic", long, "*" + strings.Repeat("?b", 40), true},
		{"topic", long + "c", "*" + strings.Repeat("?b", 40), false},
		{"topic", strings.ToUpper(long), strings.Repeat("a*", 40), true},
		{"body", "x " + long + " y", strings.Repeat("a?", 40), true},
		{"body", "x" + long + " y", strings.Repeat("a?", 40), false},
		{"body", "x " + long + "y", strings.Repeat("a?", 40), false},
		{"body", "x " + long + "-y", strings.Repeat("a*", 40), true},
	}
	for i, tc := range tests {
		got := rtEvalOne(t, raw(tc.field, tc.value), rtGroup(0), Member{UserID: rtAlice}, rtMatch("content."+tc.field, tc.pattern))
		if got != tc.want {
			t.Errorf("case %d: match = %v, want %v", i, got, tc.want)
		}
	}
}

func TestEventPropertyIs(t *testing.T) {
	// The spec's example.
	create := `{"content":{"creator":"@example:example.org","m.federate":true,"predecessor":{"event_id":"$something:example.org","room_id":"!oldroom:example.org"},"room_version":"1"},
		"event_id":"$143273582443PhrSn:example.org","room_id":"!636q39766251:example.com","sender":"@example:example.org","state_key":"","type":"m.room.create"}`
	withFederate := func(v string) string {
		return strings.Replace(create, `"m.federate":true`, `"m.federate":`+v, 1)
	}
	is := func(key, value string) Condition {
		return Condition{Kind: condPropertyIs, Key: key, Value: json.RawMessage(value)}
	}
	tests := []struct {
		raw  string
		cond Condition
		want bool
	}{
		{create, is(`content.m\.federate`, `true`), true},
		{withFederate(`"true"`), is(`content.m\.federate`, `true`), false},
		{withFederate(`1`), is(`content.m\.federate`, `true`), false},
		{create, is(`content.m.federate`, `true`), false}, // unescaped: content → m → federate
		{create, is(`content.room_version`, `"1"`), true},
		{create, is(`content.room_version`, `1`), false},
		{create, is(`content.predecessor.room_id`, `"!oldroom:example.org"`), true},
		{create, is(`content.predecessor`, `{"room_id":"!oldroom:example.org"}`), false}, // compound: never
		{create, is(`content.missing`, `null`), false},
		{withFederate(`null`), is(`content.m\.federate`, `null`), true},
		{withFederate(`false`), is(`content.m\.federate`, `null`), false},
		{withFederate(`42`), is(`content.m\.federate`, `42`), true},
		{withFederate(`-42`), is(`content.m\.federate`, `-42`), true},
		{withFederate(`42.0`), is(`content.m\.federate`, `42`), false},
		{withFederate(`42`), is(`content.m\.federate`, `42.0`), false},
		{withFederate(`9007199254740991`), is(`content.m\.federate`, `9007199254740991`), true},
		{withFederate(`9007199254740992`), is(`content.m\.federate`, `9007199254740992`), false}, // outside canonical JSON
		{withFederate(`{"a":1}`), is(`content.m\.federate`, `{"a":1}`), false},
		{withFederate(`[true]`), is(`content.m\.federate`, `true`), false},
		{create, Condition{Kind: condPropertyIs, Key: `content.m\.federate`}, false}, // no value
		{create, is(`type`, `"m.room.create"`), true},
		{create, is(`type`, `"M.ROOM.CREATE"`), false}, // exact, not case-insensitive
		{create, is(`state_key`, `""`), true},
	}
	for i, tc := range tests {
		if got := rtEvalOne(t, tc.raw, rtGroup(0), Member{UserID: rtAlice}, tc.cond); got != tc.want {
			t.Errorf("case %d (%s = %s): match = %v, want %v", i, tc.cond.Key, tc.cond.Value, got, tc.want)
		}
	}
}

func TestEventPropertyContains(t *testing.T) {
	// The spec's example.
	alias := `{"content":{"alias":"#somewhere:localhost","alt_aliases":["#somewhere:example.org","#myroom:example.com"]},
		"event_id":"$143273582443PhrSn:example.org","origin_server_ts":1432735824653,"room_id":"!jEsUZKDJdhlrceRyVU:example.org",
		"sender":"@example:example.org","state_key":"","type":"m.room.canonical_alias","unsigned":{"age":1234}}`
	has := func(key, value string) Condition {
		return Condition{Kind: condPropertyContains, Key: key, Value: json.RawMessage(value)}
	}
	mixed := `{"type":"t","sender":"@s:x","content":{"a":[1,"1",true,null,{"x":1},[2],2.5]}}`
	tests := []struct {
		raw  string
		cond Condition
		want bool
	}{
		{alias, has("content.alt_aliases", `"#myroom:example.com"`), true},
		{alias, has("content.alt_aliases", `":example.com"`), false},
		{alias, has("content.alt_aliases", `"#MYROOM:example.com"`), false},
		{alias, has("content.alias", `"#somewhere:localhost"`), false}, // not an array
		{alias, has("content.nothing", `"x"`), false},
		{alias, has("unsigned.age", `1234`), false},
		{mixed, has("content.a", `1`), true},
		{mixed, has("content.a", `"1"`), true},
		{mixed, has("content.a", `true`), true},
		{mixed, has("content.a", `null`), true},
		{mixed, has("content.a", `false`), false},
		{mixed, has("content.a", `2`), false}, // inside a nested array: ignored
		{mixed, has("content.a", `{"x":1}`), false},
		{mixed, has("content.a", `2.5`), false},
	}
	for i, tc := range tests {
		if got := rtEvalOne(t, tc.raw, rtGroup(0), Member{UserID: rtAlice}, tc.cond); got != tc.want {
			t.Errorf("case %d (%s ∋ %s): match = %v, want %v", i, tc.cond.Key, tc.cond.Value, got, tc.want)
		}
	}
}

func TestContainsDisplayName(t *testing.T) {
	dn := Condition{Kind: condDisplayName}
	msg := func(body string) string {
		return `{"type":"m.room.message","sender":"@bob:example.org","content":{"msgtype":"m.text","body":` + rtJSON(body) + `}}`
	}
	tests := []struct {
		body, name string
		want       bool
	}{
		{"hi Alice", "Alice", true},
		{"hi ALICE!", "alice", true},
		{"hi Alicex", "Alice", false},
		{"hi xAlice", "Alice", false},
		{"hi Alice_", "Alice", false},
		{"Alice", "Alice", true},
		{"hi Mr. Smith (work)", "Mr. Smith (work)", true},
		{"(Mr. Smith)", "Mr. Smith", true},
		{"a*b", "a*b", true},   // the name is no glob
		{"axxb", "a*b", false}, // ... so * is literal
		{"hey Zoë!", "ZOË", true},
		{"hey zoëx", "Zoë", false},
		{"anything", "", false},
		{"", "", false},
	}
	for _, tc := range tests {
		if got := rtEvalOne(t, msg(tc.body), rtGroup(0), Member{UserID: rtAlice, DisplayName: tc.name}, dn); got != tc.want {
			t.Errorf("body %q name %q: match = %v, want %v", tc.body, tc.name, got, tc.want)
		}
	}
	// No body, or not a string.
	for _, raw := range []string{
		`{"type":"m.room.message","sender":"@bob:x","content":{}}`,
		`{"type":"m.room.message","sender":"@bob:x","content":{"body":["Alice"]}}`,
	} {
		if rtEvalOne(t, raw, rtGroup(0), Member{UserID: rtAlice, DisplayName: "Alice"}, dn) {
			t.Errorf("%s matched", raw)
		}
	}
}

func TestRoomMemberCount(t *testing.T) {
	raw := `{"type":"m.room.message","sender":"@bob:x","content":{}}`
	tests := []struct {
		is    string
		count int
		want  bool
	}{
		{"2", 2, true}, {"2", 3, false},
		{"==2", 2, true}, {"==2", 1, false},
		{"<10", 9, true}, {"<10", 10, false},
		{">10", 11, true}, {">10", 10, false},
		{"<=10", 10, true}, {"<=10", 11, false},
		{">=10", 10, true}, {">=10", 9, false},
		{"", 0, false}, {"=2", 2, false}, {"<", 0, false}, {"-1", -1, false},
		{"2 ", 2, false}, {"abc", 0, false}, {"<=x", 0, false}, {"99999999999999999999", 2, false},
	}
	for _, tc := range tests {
		cond := Condition{Kind: condMemberCount, Is: tc.is}
		if got := rtEvalOne(t, raw, RoomState{MemberCount: tc.count}, Member{UserID: rtAlice}, cond); got != tc.want {
			t.Errorf("is %q count %d: match = %v, want %v", tc.is, tc.count, got, tc.want)
		}
	}
}

func TestSenderNotificationPermission(t *testing.T) {
	raw := `{"type":"m.room.message","sender":"@bob:x","content":{}}`
	perm := func(key string) Condition { return Condition{Kind: condSenderPermission, Key: key} }
	tests := []struct {
		key   string
		power int64
		lv    map[string]int64
		want  bool
	}{
		{"room", 50, nil, true}, // no levels: 50
		{"room", 49, nil, false},
		{"room", 50, map[string]int64{}, true},
		{"room", 10, map[string]int64{"room": 10}, true},
		{"room", 9, map[string]int64{"room": 10}, false},
		{"room", 0, map[string]int64{"room": 0}, true},
		{"custom", 50, map[string]int64{"room": 0}, true},
		{"custom", 49, map[string]int64{"room": 0}, false},
		{"custom", 5, map[string]int64{"custom": 5}, true},
		{"", 100, nil, false}, // no key: never
	}
	for _, tc := range tests {
		room := RoomState{MemberCount: 3, SenderPower: tc.power, NotificationLevels: tc.lv}
		if got := rtEvalOne(t, raw, room, Member{UserID: rtAlice}, perm(tc.key)); got != tc.want {
			t.Errorf("key %q power %d levels %v: match = %v, want %v", tc.key, tc.power, tc.lv, got, tc.want)
		}
	}
}

func TestUnusableConditionsNeverMatch(t *testing.T) {
	raw := `{"type":"m.room.message","sender":"@bob:x","content":{"body":"x"}}`
	pattern := "*"
	for _, c := range []Condition{
		{Kind: "org.example.future"},
		{Kind: ""},
		{Kind: condEventMatch, Key: "type"},                 // no pattern
		{Kind: condEventMatch, Pattern: &pattern},           // no key
		{Kind: condPropertyIs, Value: json.RawMessage(`1`)}, // no key
		{Kind: condMemberCount},                             // no "is"
	} {
		if rtEvalOne(t, raw, rtGroup(100), Member{UserID: rtAlice, DisplayName: "x"}, c) {
			t.Errorf("%+v matched", c)
		}
	}
	if !rtEvalOne(t, raw, rtGroup(0), Member{UserID: rtAlice}) {
		t.Error("a rule with no conditions did not match")
	}
}

func TestRuleKindsAndOrder(t *testing.T) {
	p := func(s string) *string { return &s }
	notify := []Action{{Action: actionNotify}}
	rs := Ruleset{
		Override: []Rule{
			{RuleID: "disabled", Enabled: false, Conditions: []Condition{}, Actions: notify},
			{RuleID: "ov", Enabled: true, Conditions: []Condition{rtMatch("content.topic", "override")}, Actions: notify},
		},
		Content: []Rule{
			{RuleID: "nopattern", Enabled: true, Actions: notify},
			{RuleID: "cake", Enabled: true, Pattern: p("cake"), Actions: notify},
		},
		Room:      []Rule{{RuleID: "!quiet:x", Enabled: true, Actions: []Action{}}},
		Sender:    []Rule{{RuleID: "@loud:x", Enabled: true, Actions: notify}},
		Underride: []Rule{{RuleID: "last", Enabled: true, Conditions: []Condition{}, Actions: []Action{{Action: "set_tweak", Tweak: "sound", Value: json.RawMessage(`"x"`)}}}},
	}
	e := Compile(rs, rtAlice)
	tests := []struct {
		raw, want string
	}{
		{`{"type":"t","sender":"@loud:x","room_id":"!quiet:x","content":{"topic":"override","body":"cake"}}`, "ov"},
		{`{"type":"t","sender":"@loud:x","room_id":"!quiet:x","content":{"body":"cake"}}`, "cake"},
		{`{"type":"t","sender":"@loud:x","room_id":"!quiet:x","content":{}}`, "!quiet:x"},
		{`{"type":"t","sender":"@loud:x","room_id":"!QUIET:x","content":{}}`, "@loud:x"},
		{`{"type":"t","sender":"@LOUD:x","room_id":"!other:x","content":{}}`, "last"},
	}
	for _, tc := range tests {
		got := e.Evaluate(rtMustEvent(t, tc.raw), Member{UserID: rtAlice}, rtGroup(0))
		if got.RuleID != tc.want {
			t.Errorf("%s: rule %q, want %q", tc.raw, got.RuleID, tc.want)
		}
	}
	last := e.Evaluate(rtMustEvent(t, tests[4].raw), Member{UserID: rtAlice}, rtGroup(0))
	if last.Notify || last.Highlight || string(last.Actions) != `[{"set_tweak":"sound","value":"x"}]` {
		t.Errorf("underride outcome %+v %s", last, last.Actions)
	}
}

func rtMustEvent(t testing.TB, raw string) *Event {
	t.Helper()
	e, err := NewEvent([]byte(raw))
	if err != nil {
		t.Fatalf("NewEvent(%s): %v", raw, err)
	}
	return e
}

func TestOutcomeHighlight(t *testing.T) {
	raw := `{"type":"t","sender":"@bob:x","content":{}}`
	tests := []struct {
		actions         string
		notify, highlit bool
		tweaks          map[string]any
	}{
		{`["notify"]`, true, false, map[string]any{}},
		{`["notify",{"set_tweak":"highlight"}]`, true, true, map[string]any{"highlight": true}},
		{`["notify",{"set_tweak":"highlight","value":true}]`, true, true, map[string]any{"highlight": true}},
		{`["notify",{"set_tweak":"highlight","value":false}]`, true, false, map[string]any{"highlight": false}},
		{`["notify",{"set_tweak":"highlight","value":null}]`, true, true, map[string]any{"highlight": true}},
		{`[{"set_tweak":"highlight"}]`, false, true, map[string]any{"highlight": true}},
		{`["dont_notify"]`, false, false, map[string]any{}},
		{`["coalesce","notify"]`, true, false, map[string]any{}},
		{`["notify",{"set_tweak":"sound","value":"default"},{"set_tweak":"x.custom","value":{"n":12345678901234567}}]`, true, false,
			map[string]any{"sound": "default", "x.custom": map[string]any{"n": json.Number("12345678901234567")}}},
	}
	for _, tc := range tests {
		var r Rule
		if err := json.Unmarshal([]byte(`{"rule_id":"r","enabled":true,"conditions":[],"actions":`+tc.actions+`}`), &r); err != nil {
			t.Fatal(err)
		}
		got := Compile(Ruleset{Override: []Rule{r}}, rtAlice).Evaluate(rtMustEvent(t, raw), Member{UserID: rtAlice}, rtGroup(0))
		if got.Notify != tc.notify || got.Highlight != tc.highlit {
			t.Errorf("%s: notify %v highlight %v, want %v %v", tc.actions, got.Notify, got.Highlight, tc.notify, tc.highlit)
		}
		if tw := Tweaks(got.Actions); !reflect.DeepEqual(tw, tc.tweaks) {
			t.Errorf("%s: tweaks %#v, want %#v", tc.actions, tw, tc.tweaks)
		}
	}
	if tw := Tweaks(json.RawMessage(`not json`)); tw == nil || len(tw) != 0 {
		t.Errorf("Tweaks of garbage: %#v", tw)
	}
}

func TestNewEvent(t *testing.T) {
	for _, bad := range []string{``, `null`, `[]`, `"x"`, `{`, `{"type":"a"} {}`, `{"type":"a"}x`} {
		if _, err := NewEvent([]byte(bad)); err == nil {
			t.Errorf("NewEvent(%q) did not fail", bad)
		}
	}
	e := rtMustEvent(t, `{"type":"m.room.message","sender":"@a:x","content":{"body":"Hi","m.mentions":{}}}`)
	if !e.HasMentions() {
		t.Error("m.mentions {} not seen")
	}
	for _, raw := range []string{
		`{"type":"m.room.message","content":{"body":"Hi"}}`,
		`{"type":"m.room.message","content":{"body":"Hi","m.new_content":{"m.mentions":{}}}}`,
		`{"type":"m.room.message","content":"m.mentions"}`,
	} {
		if rtMustEvent(t, raw).HasMentions() {
			t.Errorf("%s: HasMentions", raw)
		}
	}
	if rtMustEvent(t, `{"content":{"m.mentions":null}}`).HasMentions() != true {
		t.Error("m.mentions null: the property is there")
	}
}

func TestPaths(t *testing.T) {
	e := rtMustEvent(t, `{"type":"t","sender":"@s:x","content":{"m.relates_to":{"rel_type":"m.thread"},"m\\foo":1,"a\\xb":2,"a.b":{"c":3},"a":{"b.c":4,"b":{"c":5}},"":6,"n":null,"arr":[1]}}`)
	tests := []struct {
		key  string
		want any
		ok   bool
	}{
		{`content.m\.relates_to.rel_type`, "m.thread", true},
		{`content.m.relates_to.rel_type`, nil, false},
		{`content.m\\foo`, json.Number("1"), true},
		{`content.a\xb`, json.Number("2"), true}, // an unknown escape is literal
		{`content.a\.b.c`, json.Number("3"), true},
		{`content.a.b\.c`, json.Number("4"), true},
		{`content.a.b.c`, json.Number("5"), true},
		{`content.`, json.Number("6"), true},
		{`content.n`, nil, true},
		{`content.arr.0`, nil, false}, // no indexing into arrays
		{`content.missing`, nil, false},
		{`type`, "t", true},
		{`state_key`, nil, false},
		{`content.n.x`, nil, false},
		{``, nil, false},
	}
	for _, tc := range tests {
		got, ok := e.Lookup(tc.key)
		if ok != tc.ok || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("Lookup(%q) = %#v, %v; want %#v, %v", tc.key, got, ok, tc.want, tc.ok)
		}
	}
	for key, want := range map[string][]string{
		`a`:           {"a"},
		`a.b`:         {"a", "b"},
		`a\.b`:        {"a.b"},
		`a\\.b`:       {`a\`, "b"},
		`a\\\.b`:      {`a\.b`},
		`a\x.b`:       {`a\x`, "b"},
		`a\`:          {`a\`},
		`.`:           {"", ""},
		`\.\.`:        {".."},
		`m\.mentions`: {"m.mentions"},
	} {
		if got := splitPath(key); !reflect.DeepEqual(got, want) {
			t.Errorf("splitPath(%q) = %q, want %q", key, got, want)
		}
	}
}

// refLookup walks the event as decoded by encoding/json, with its own
// reading of the path grammar, as a second opinion for the fuzzer.
func rtRefLookup(raw []byte, key string) (any, bool) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var cur any
	if dec.Decode(&cur) != nil {
		return nil, false
	}
	var segs []string
	var b strings.Builder
	for i := 0; i < len(key); i++ {
		if key[i] == '\\' && i+1 < len(key) && strings.IndexByte(`.\`, key[i+1]) >= 0 {
			i++
			b.WriteByte(key[i])
		} else if key[i] == '.' {
			segs = append(segs, b.String())
			b.Reset()
		} else {
			b.WriteByte(key[i])
		}
	}
	segs = append(segs, b.String())
	for _, s := range segs {
		m, ok := cur.(map[string]any)
		if !ok {
			return nil, false
		}
		if cur, ok = m[s]; !ok {
			return nil, false
		}
	}
	return cur, true
}

// escapePath writes property names as a dot-separated path.
func rtEscapePath(segs []string) string {
	out := make([]string, len(segs))
	for i, s := range segs {
		out[i] = strings.NewReplacer(`\`, `\\`, `.`, `\.`).Replace(s)
	}
	return strings.Join(out, ".")
}

func FuzzEventPath(f *testing.F) {
	f.Add([]byte(`{"type":"m.room.message","sender":"@a:x","state_key":"","room_id":"!r","content":{"body":"Hi","m.relates_to":{"rel_type":"m.replace"}}}`), `content.m\.relates_to.rel_type`)
	f.Add([]byte(`{"type":5,"content":{"body":["x"],"a\\b":{"c.d":null}}}`), `content.a\\b.c\.d`)
	f.Add([]byte(`{"content":"x","sender":null}`), `content.body`)
	f.Add([]byte(`{"type":"t","content":{"body":"x"}} `), `type`)
	f.Fuzz(func(t *testing.T, raw []byte, key string) {
		e, err := NewEvent(raw)
		if err != nil {
			return
		}
		got, ok := e.Lookup(key)
		want, wantOK := rtRefLookup(raw, key)
		if ok != wantOK || !reflect.DeepEqual(got, want) {
			t.Fatalf("Lookup(%q) = %#v, %v; reference %#v, %v", key, got, ok, want, wantOK)
		}
		// Escaping the names again gives the same path.
		segs := splitPath(key)
		if again := splitPath(rtEscapePath(segs)); !reflect.DeepEqual(again, segs) {
			t.Fatalf("splitPath(escapePath(%q)) = %q", segs, again)
		}
		// Evaluating the defaults over any event does not panic, and its
		// outcome is consistent.
		o := Compile(Defaults(rtAlice), rtAlice).Evaluate(e, Member{UserID: rtAlice, DisplayName: key}, RoomState{MemberCount: len(key)})
		if o.RuleID == "" && (o.Notify || o.Actions != nil) {
			t.Fatalf("no rule but %+v", o)
		}
	})
}

// globRegexp is the reference: a glob as a regular expression over
// lowered text.
func rtGlobRegexp(pattern string, words bool) *regexp.Regexp {
	var b strings.Builder
	for _, r := range strings.ToLower(pattern) {
		switch r {
		case '*':
			b.WriteString(`.*`)
		case '?':
			b.WriteString(`.`)
		default:
			b.WriteString(regexp.QuoteMeta(string(r)))
		}
	}
	if words {
		return regexp.MustCompile(`(?s)(?:^|[^A-Za-z0-9_])(?:` + b.String() + `)(?:[^A-Za-z0-9_]|$)`)
	}
	return regexp.MustCompile(`(?s)^(?:` + b.String() + `)$`)
}

func FuzzGlob(f *testing.F) {
	f.Add("ex*ple", "An exciting triple-whammy")
	f.Add("lunc?*", "Lunch plans")
	f.Add("a*b*c?d", "xx a b c d abbcxd")
	f.Add("", "  ")
	f.Add("é?*", "Éa")
	f.Add("", "0ə0") // an empty match inside a multi-byte character
	f.Fuzz(func(t *testing.T, pattern, value string) {
		if !utf8.ValidString(pattern) || !utf8.ValidString(value) || len(pattern) > 200 {
			return // events and rules are JSON: always valid UTF-8
		}
		low := strings.ToLower(value)
		// The reference is over lowered text; matchFull lowers by itself.
		// Lowering twice must change nothing for the comparison to hold.
		if strings.ToLower(low) != low {
			return
		}
		g := compileGlob(pattern)
		if got, want := g.matchFull(value), rtGlobRegexp(pattern, false).MatchString(low); got != want {
			t.Fatalf("matchFull(%q, %q) = %v, reference %v", pattern, value, got, want)
		}
		if got, want := g.matchWords(low), rtGlobRegexp(pattern, true).MatchString(low); got != want {
			t.Fatalf("matchWords(%q, %q) = %v, reference %v", pattern, low, got, want)
		}
		// A pattern with no wildcard is also a display name.
		if !strings.ContainsAny(pattern, "*?") {
			if got, want := containsWordFold(low, pattern), g.matchWords(low); got != want {
				t.Fatalf("containsWordFold(%q, %q) = %v, glob says %v", low, pattern, got, want)
			}
		}
	})
}

// BenchmarkEvaluate is the cost of one member's evaluation of a plain
// message in a group room under the default rules: the work a new event
// costs per local member.
func BenchmarkEvaluate(b *testing.B) {
	e := Compile(Defaults(rtAlice), rtAlice)
	event := rtMustEvent(b, `{"type":"m.room.message","sender":"@bob:example.org","room_id":"!wonderland:example.org","event_id":"$abc","origin_server_ts":1700000000000,
		"content":{"msgtype":"m.text","body":"Has anyone seen the lunch menu for tomorrow? I heard there is cake."}}`)
	m := Member{UserID: rtAlice, DisplayName: rtAliceDN}
	room := RoomState{MemberCount: 1000, SenderPower: 0, NotificationLevels: map[string]int64{"room": 50}}
	b.ReportAllocs()
	for b.Loop() {
		if o := e.Evaluate(event, m, room); !o.Notify {
			b.Fatal("no notify")
		}
	}
}

// BenchmarkEvaluateRoom is one event in a 1,000-member room: parsing it
// once and evaluating it for every member with their own rules.
func BenchmarkEvaluateRoom(b *testing.B) {
	const n = 1000
	evals := make([]*Evaluator, n)
	members := make([]Member, n)
	for i := range n {
		u := id.UserID(fmt.Sprintf("@user%d:example.org", i))
		evals[i] = Compile(Defaults(u), u)
		members[i] = Member{UserID: u, DisplayName: fmt.Sprintf("User Number %d", i)}
	}
	raw := []byte(`{"type":"m.room.message","sender":"@bob:example.org","room_id":"!wonderland:example.org","event_id":"$abc","origin_server_ts":1700000000000,
		"content":{"msgtype":"m.text","body":"Has anyone seen the lunch menu for tomorrow? I heard there is cake.","m.mentions":{}}}`)
	room := RoomState{MemberCount: n, NotificationLevels: map[string]int64{"room": 50}}
	b.ReportAllocs()
	for b.Loop() {
		event, err := NewEvent(raw)
		if err != nil {
			b.Fatal(err)
		}
		for i, e := range evals {
			if !e.Evaluate(event, members[i], room).Notify {
				b.Fatal("no notify")
			}
		}
	}
}

// TestEvaluateConcurrently: one Event and one Evaluator are shared by
// goroutines (rooms evaluated in parallel share users' cached
// evaluators); run with -race.
func TestEvaluateConcurrently(t *testing.T) {
	e := Compile(Defaults(rtAlice), rtAlice)
	event := rtMustEvent(t, `{"type":"m.room.message","sender":"@bob:example.org","room_id":"!r:x","content":{"msgtype":"m.text","body":"hi Wonder Girl"}}`)
	done := make(chan Outcome)
	for range 8 {
		go func() {
			var o Outcome
			for range 200 {
				o = e.Evaluate(event, Member{UserID: rtAlice, DisplayName: rtAliceDN}, rtGroup(0))
			}
			done <- o
		}()
	}
	for range 8 {
		if o := <-done; o.RuleID != ".m.rule.contains_display_name" || !o.Highlight {
			t.Fatalf("outcome %+v", o)
		}
	}
}
