package push

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"

	"maunium.net/go/mautrix/id"
)

// Evaluation runs for every local member of a room for every new event,
// inside the event's job (room/push.go), so it is built to cost well under
// a microsecond per member for the default rules: the event is parsed
// once (NewEvent) and shared by every member's evaluation; each user's
// rules are compiled once (Compile: paths split, patterns lowered and
// compiled, actions encoded) and cached by the service; a member's
// evaluation allocates nothing in the common case. Both an Event and an
// Evaluator are immutable once built, so any number of goroutines may use
// them at once.

// Condition kinds (spec, "Conditions").
const (
	condEventMatch       = "event_match"
	condPropertyIs       = "event_property_is"
	condPropertyContains = "event_property_contains"
	condDisplayName      = "contains_display_name"
	condMemberCount      = "room_member_count"
	condSenderPermission = "sender_notification_permission"
)

// Event is a new event as push rules see it, parsed once.
type Event struct {
	root    map[string]any // the whole event, numbers as json.Number
	content map[string]any // nil when content is absent or not an object

	// fast holds the values at the paths the server-default rules name,
	// looked up once here rather than once per member and rule.
	fast [numFastFields]fastValue

	sender, roomID, lowType     string
	hasSender, hasRoom, hasType bool
	lowBody                     string // content.body lowered, for every body match
	hasBody                     bool
	mentions                    bool
}

type fastValue struct {
	v  any
	ok bool
}

// fastField names the paths an Event looks up when it is parsed.
type fastField uint8

const (
	fieldNone fastField = iota
	fieldType
	fieldSender
	fieldStateKey
	fieldRoomID
	fieldBody
	fieldMsgtype
	fieldMembership
	fieldMentionsUsers
	fieldMentionsRoom
	fieldRelType
	numFastFields
)

// fastFieldOf is the fast field at the property path segs, fieldNone if
// it is not one.
func fastFieldOf(segs []string) fastField {
	switch len(segs) {
	case 1:
		switch segs[0] {
		case "type":
			return fieldType
		case "sender":
			return fieldSender
		case "state_key":
			return fieldStateKey
		case "room_id":
			return fieldRoomID
		}
	case 2:
		if segs[0] != "content" {
			return fieldNone
		}
		switch segs[1] {
		case "body":
			return fieldBody
		case "msgtype":
			return fieldMsgtype
		case "membership":
			return fieldMembership
		}
	case 3:
		switch {
		case segs[0] == "content" && segs[1] == "m.mentions" && segs[2] == "user_ids":
			return fieldMentionsUsers
		case segs[0] == "content" && segs[1] == "m.mentions" && segs[2] == "room":
			return fieldMentionsRoom
		case segs[0] == "content" && segs[1] == "m.relates_to" && segs[2] == "rel_type":
			return fieldRelType
		}
	}
	return fieldNone
}

// NewEvent parses an event in the client format (type, content, sender,
// state_key, room_id, event_id, ...). It must be one JSON object.
func NewEvent(clientEvent []byte) (*Event, error) {
	dec := json.NewDecoder(bytes.NewReader(clientEvent))
	dec.UseNumber()
	var root map[string]any
	if err := dec.Decode(&root); err != nil {
		return nil, fmt.Errorf("reading event for push rules: %w", err)
	}
	if root == nil {
		return nil, errors.New("reading event for push rules: not a JSON object")
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, errors.New("reading event for push rules: data after the event")
	}
	ev := &Event{root: root}
	ev.content, _ = root["content"].(map[string]any)
	set := func(f fastField, segs ...string) {
		v, ok := walk(root, segs)
		ev.fast[f] = fastValue{v, ok}
	}
	set(fieldType, "type")
	set(fieldSender, "sender")
	set(fieldStateKey, "state_key")
	set(fieldRoomID, "room_id")
	set(fieldBody, "content", "body")
	set(fieldMsgtype, "content", "msgtype")
	set(fieldMembership, "content", "membership")
	set(fieldMentionsUsers, "content", "m.mentions", "user_ids")
	set(fieldMentionsRoom, "content", "m.mentions", "room")
	set(fieldRelType, "content", "m.relates_to", "rel_type")

	var typ, body string
	typ, ev.hasType = ev.fast[fieldType].v.(string)
	ev.lowType = strings.ToLower(typ)
	ev.sender, ev.hasSender = ev.fast[fieldSender].v.(string)
	ev.roomID, ev.hasRoom = ev.fast[fieldRoomID].v.(string)
	if body, ev.hasBody = ev.fast[fieldBody].v.(string); ev.hasBody {
		ev.lowBody = strings.ToLower(body)
	}
	if ev.content != nil {
		_, ev.mentions = ev.content["m.mentions"]
	}
	return ev, nil
}

// walk is the value at the property names segs under v.
func walk(v any, segs []string) (any, bool) {
	for _, s := range segs {
		m, ok := v.(map[string]any)
		if !ok {
			return nil, false
		}
		if v, ok = m[s]; !ok {
			return nil, false
		}
	}
	return v, true
}

// HasMentions reports whether the event's content has an m.mentions
// property (of any value): the sender stated its mentions, so the legacy
// body-mention rules do not apply (MSC3952).
func (ev *Event) HasMentions() bool { return ev.mentions }

// Lookup is the value at a dot-separated property path (spec appendices:
// "\." is a literal dot, "\\" a literal backslash in a property name):
// string, json.Number, bool, nil (JSON null), map[string]any or []any.
// ok is false when the property is absent.
func (ev *Event) Lookup(key string) (value any, ok bool) {
	return ev.lookup(compilePath(key))
}

// propPath is a compiled dot-separated path.
type propPath struct {
	segs []string
	fast fastField
}

func compilePath(key string) propPath {
	segs := splitPath(key)
	return propPath{segs: segs, fast: fastFieldOf(segs)}
}

// splitPath splits a dot-separated path into property names, unescaping
// "\." and "\\"; any other backslash is literal.
func splitPath(key string) []string {
	segs := make([]string, 0, 2+strings.Count(key, "."))
	var cur []byte
	start, escaped := 0, false
	for i := 0; i < len(key); i++ {
		switch c := key[i]; {
		case c == '\\' && i+1 < len(key) && (key[i+1] == '.' || key[i+1] == '\\'):
			if !escaped {
				cur = append(cur[:0], key[start:i]...)
				escaped = true
			}
			cur = append(cur, key[i+1])
			i++
		case c == '.':
			if escaped {
				segs = append(segs, string(cur))
			} else {
				segs = append(segs, key[start:i])
			}
			start, escaped = i+1, false
		default:
			if escaped {
				cur = append(cur, c)
			}
		}
	}
	if escaped {
		return append(segs, string(cur))
	}
	return append(segs, key[start:])
}

// lookup is Lookup for a compiled path.
func (ev *Event) lookup(p propPath) (any, bool) {
	if p.fast != fieldNone {
		f := ev.fast[p.fast]
		return f.v, f.ok
	}
	if len(p.segs) > 1 && p.segs[0] == "content" && ev.content != nil {
		return walk(ev.content, p.segs[1:])
	}
	return walk(ev.root, p.segs)
}

// lookupString is the string at p; ok is false when it is absent or not a
// string (event_match never matches those, even with "*").
func (ev *Event) lookupString(p propPath) (string, bool) {
	v, ok := ev.lookup(p)
	if !ok {
		return "", false
	}
	s, ok := v.(string)
	return s, ok
}

// Member is the user the rules are evaluated for.
type Member struct {
	UserID id.UserID
	// DisplayName is the member's display name in this room, "" if none
	// (contains_display_name then never matches).
	DisplayName string
}

// RoomState is what the rules need of the room as the event is sent.
type RoomState struct {
	// MemberCount is the number of joined members (room_member_count).
	MemberCount int
	// SenderPower is the sender's power level (math.MaxInt64 for the
	// creator of a v12 room, who outranks every level).
	SenderPower int64
	// NotificationLevels is the power_levels content's "notifications":
	// the level a sender needs for each kind of notification. A missing
	// key means 50, the spec's default for "room" (Weft uses it for every
	// key, as no other is defined).
	NotificationLevels map[string]int64
}

// defaultNotificationLevel is the level a sender needs for a notification
// key the power levels do not name.
const defaultNotificationLevel = 50

// Outcome is what a user's rules say about an event.
type Outcome struct {
	// RuleID is the matched rule, "" if none.
	RuleID string
	// Notify is whether the matched rule's actions include "notify".
	Notify bool
	// Highlight is whether they set the highlight tweak, with no value or
	// true.
	Highlight bool
	// Actions are the matched rule's actions as the spec writes them, nil
	// if no rule matched. Shared by every evaluation: do not modify.
	Actions json.RawMessage
}

// Evaluator is one user's rules, compiled. Its rules' conditions are in
// one slice, and patterns and keys that come from the defaults share their
// bytes with every other user's: evaluating a thousand members' rules
// touches little memory beyond each evaluator's two slices.
type Evaluator struct {
	user     id.UserID
	rules    []compiledRule
	conds    []compiledCond
	outcomes []Outcome
}

type compiledRule struct {
	// lowType is the lowered literal pattern of the rule's event_match on
	// "type" (when it has one: most server-default rules), checked before
	// any other condition: most rules fail there.
	lowType  string
	needType bool
	legacy   bool   // skipped when the event has m.mentions
	first    uint32 // the rule's conditions are conds[first:end]
	end      uint32
}

type condOp uint8

const (
	opGlob        condOp = iota // event_match on a property other than content.body
	opBodyGlob                  // event_match on content.body; content rules
	opPropIs                    // event_property_is
	opPropHas                   // event_property_contains
	opDisplayName               // contains_display_name
	opMemberCount               // room_member_count
	opSenderLevel               // sender_notification_permission
	opRoomID                    // room rules: the rule ID is the room ID
	opSenderID                  // sender rules: the rule ID is the sender
)

// Comparisons of room_member_count.
const (
	cmpEq uint8 = iota
	cmpLt
	cmpGt
	cmpLe
	cmpGe
)

// Member-relative conditions of the shared default evaluator (see
// CompileDefaults): what they compare with is the evaluated member's ID.
const (
	relNone      uint8 = iota
	relUserID          // the pattern or value is the member's user ID
	relLocalpart       // the content pattern is the member's localpart
)

type compiledCond struct {
	op   condOp
	cmp  uint8
	rel  uint8
	path propPath
	// lit is the lowered pattern of an event_match or content rule with no
	// wildcard; glob the compiled pattern otherwise.
	lit   string
	glob  *glob
	value scalar
	n     int64
	str   string // notification key, room ID or sender
}

// memberSentinel stands for "the member" when the server-default rules
// are compiled once for everyone: the conditions that name it compare with
// the evaluated member's ID instead (invite_for_me's state key,
// is_user_mention's user ID, contains_user_name's localpart). It is no
// valid Matrix user ID, so no real rule can name it.
const memberSentinel = id.UserID("@\x00weft-member\x00:\x00")

// CompileDefaults builds one evaluator of the server-default rules that
// serves every member who has no rules of their own: in a big room most
// members share it, so their evaluations run over one ruleset that stays
// in the CPU caches instead of a thousand copies. Evaluate must be given
// the member (Member.UserID).
func CompileDefaults() *Evaluator {
	e := Compile(Defaults(memberSentinel), "")
	lowID := strings.ToLower(string(memberSentinel))
	lowLocal := strings.ToLower(memberSentinel.Localpart())
	for i := range e.conds {
		c := &e.conds[i]
		switch {
		case c.op == opGlob && c.glob == nil && c.lit == lowID:
			c.rel = relUserID
		case (c.op == opPropHas || c.op == opPropIs) && c.value.kind == scalarString && c.value.s == string(memberSentinel):
			c.rel = relUserID
		case c.op == opBodyGlob && c.glob == nil && c.lit == lowLocal:
			c.rel = relLocalpart
		}
	}
	return e
}

// Compile builds user's evaluator from their ruleset. Disabled rules, and
// rules with a condition that can never match (an unknown kind, or a known
// one missing its parameters: the spec says unrecognised conditions match
// nothing), are left out.
func Compile(rs Ruleset, user id.UserID) *Evaluator {
	e := &Evaluator{user: user}
	for _, k := range kinds {
		for _, r := range rs.Rules(k) {
			if !r.Enabled {
				continue
			}
			conds, ok := compileConds(k, r)
			if !ok {
				continue
			}
			cr := compiledRule{legacy: legacyMentionRule(k, r.RuleID)}
			for i, c := range conds {
				if c.op == opGlob && c.path.fast == fieldType && c.glob == nil {
					cr.needType, cr.lowType = true, c.lit
					conds = append(conds[:i:i], conds[i+1:]...)
					break
				}
			}
			cr.first = uint32(len(e.conds))
			e.conds = append(e.conds, conds...)
			cr.end = uint32(len(e.conds))
			e.rules = append(e.rules, cr)
			e.outcomes = append(e.outcomes, outcomeOf(r))
		}
	}
	return e
}

func compileConds(k Kind, r Rule) ([]compiledCond, bool) {
	switch k {
	case Content:
		if r.Pattern == nil {
			return nil, false
		}
		c := compiledCond{op: opBodyGlob}
		c.setPattern(*r.Pattern)
		return []compiledCond{c}, true
	case Room:
		return []compiledCond{{op: opRoomID, str: r.RuleID}}, true
	case Sender:
		return []compiledCond{{op: opSenderID, str: r.RuleID}}, true
	}
	out := make([]compiledCond, 0, len(r.Conditions))
	for _, c := range r.Conditions {
		cc, ok := compileCond(c)
		if !ok {
			return nil, false
		}
		out = append(out, cc)
	}
	return out, true
}

// setPattern compiles a glob pattern into c.
func (c *compiledCond) setPattern(pattern string) {
	if g := compileGlob(pattern); g.literal {
		c.lit = g.lit
	} else {
		c.glob = g
	}
}

func compileCond(c Condition) (compiledCond, bool) {
	switch c.Kind {
	case condEventMatch:
		if c.Key == "" || c.Pattern == nil {
			return compiledCond{}, false
		}
		cc := compiledCond{op: opGlob, path: compilePath(c.Key)}
		cc.setPattern(*c.Pattern)
		if cc.path.fast == fieldBody {
			cc.op = opBodyGlob
		}
		return cc, true
	case condPropertyIs, condPropertyContains:
		v, ok := parseScalar(c.Value)
		if c.Key == "" || !ok {
			return compiledCond{}, false
		}
		op := opPropIs
		if c.Kind == condPropertyContains {
			op = opPropHas
		}
		return compiledCond{op: op, path: compilePath(c.Key), value: v}, true
	case condDisplayName:
		return compiledCond{op: opDisplayName}, true
	case condMemberCount:
		cmp, n, ok := parseMemberCount(c.Is)
		return compiledCond{op: opMemberCount, cmp: cmp, n: n}, ok
	case condSenderPermission:
		return compiledCond{op: opSenderLevel, str: c.Key}, c.Key != ""
	}
	return compiledCond{}, false
}

// parseMemberCount reads room_member_count's "is": a decimal integer with
// an optional ==, <, >, <= or >= prefix (none means ==).
func parseMemberCount(is string) (uint8, int64, bool) {
	cmp := cmpEq
	for _, p := range [...]struct {
		prefix string
		cmp    uint8
	}{{"==", cmpEq}, {"<=", cmpLe}, {">=", cmpGe}, {"<", cmpLt}, {">", cmpGt}} {
		if strings.HasPrefix(is, p.prefix) {
			cmp, is = p.cmp, is[len(p.prefix):]
			break
		}
	}
	if is == "" {
		return 0, 0, false
	}
	for i := 0; i < len(is); i++ {
		if is[i] < '0' || is[i] > '9' {
			return 0, 0, false
		}
	}
	n, err := strconv.ParseInt(is, 10, 64)
	return cmp, n, err == nil
}

// outcomeOf is what matching r yields.
func outcomeOf(r Rule) Outcome {
	actions := cleanActions(r.Actions)
	raw, err := json.Marshal(actions)
	if err != nil {
		raw = []byte("[]") // a tweak value that is not JSON: Render and Put let none in
	}
	o := Outcome{RuleID: r.RuleID, Actions: raw}
	for _, a := range actions {
		switch {
		case a.Tweak == "" && a.Action == actionNotify:
			o.Notify = true
		case a.Tweak == "highlight":
			o.Highlight = a.Value == nil || bytes.Equal(a.Value, []byte("true"))
		}
	}
	return o
}

// Evaluate runs the rules over ev for the member m: the first matching
// rule's outcome, or the zero Outcome when none matches. The spec forbids
// notifying a user of their own events, so an event m sent yields the zero
// Outcome whatever the rules say.
func (e *Evaluator) Evaluate(ev *Event, m Member, room RoomState) Outcome {
	if ev == nil || ev.hasSender && (ev.sender == string(m.UserID) || ev.sender == string(e.user)) {
		return Outcome{}
	}
rules:
	for i := range e.rules {
		r := &e.rules[i]
		if r.legacy && ev.mentions || r.needType && (!ev.hasType || ev.lowType != r.lowType) {
			continue
		}
		for j := r.first; j < r.end; j++ {
			if !e.conds[j].match(ev, &m, &room) {
				continue rules
			}
		}
		return e.outcomes[i]
	}
	return Outcome{}
}

func (c *compiledCond) match(ev *Event, m *Member, room *RoomState) bool {
	switch c.op {
	case opGlob:
		s, ok := ev.lookupString(c.path)
		if !ok {
			return false
		}
		if c.rel == relUserID {
			return strings.EqualFold(s, string(m.UserID))
		}
		if c.glob == nil {
			return equalLower(s, c.lit)
		}
		return c.glob.matchFull(s)
	case opBodyGlob:
		if !ev.hasBody {
			return false
		}
		if c.rel == relLocalpart {
			return indexWords(ev.lowBody, strings.ToLower(m.UserID.Localpart()))
		}
		if c.glob == nil {
			return indexWords(ev.lowBody, c.lit)
		}
		return c.glob.matchWords(ev.lowBody)
	case opPropIs:
		v, ok := ev.lookup(c.path)
		if !ok {
			return false
		}
		s, ok := scalarOf(v)
		if c.rel == relUserID {
			return ok && s.kind == scalarString && s.s == string(m.UserID)
		}
		return ok && s == c.value
	case opPropHas:
		v, ok := ev.lookup(c.path)
		if !ok {
			return false
		}
		arr, ok := v.([]any)
		if !ok {
			return false
		}
		want := c.value
		if c.rel == relUserID {
			want = scalar{kind: scalarString, s: string(m.UserID)}
		}
		for _, item := range arr {
			if s, ok := scalarOf(item); ok && s == want {
				return true
			}
		}
		return false
	case opDisplayName:
		return m.DisplayName != "" && ev.hasBody && containsWordFold(ev.lowBody, m.DisplayName)
	case opMemberCount:
		n := int64(room.MemberCount)
		switch c.cmp {
		case cmpEq:
			return n == c.n
		case cmpLt:
			return n < c.n
		case cmpGt:
			return n > c.n
		case cmpLe:
			return n <= c.n
		case cmpGe:
			return n >= c.n
		}
		return false
	case opSenderLevel:
		need, ok := room.NotificationLevels[c.str]
		if !ok {
			need = defaultNotificationLevel
		}
		return room.SenderPower >= need
	case opRoomID:
		return ev.hasRoom && ev.roomID == c.str
	case opSenderID:
		return ev.hasSender && ev.sender == c.str
	}
	return false
}

// scalar is a non-compound canonical JSON value: what event_property_is
// and event_property_contains compare, exactly and without casting.
type scalar struct {
	kind scalarKind
	s    string
	i    int64
	b    bool
}

type scalarKind uint8

const (
	scalarNone scalarKind = iota
	scalarString
	scalarInt
	scalarBool
	scalarNull
)

// maxSafeInt is the canonical JSON integer range's bound, 2**53 - 1.
const maxSafeInt = 1<<53 - 1

// parseScalar reads a condition's value; ok is false when it is absent or
// compound, or a number that is not a canonical JSON integer.
func parseScalar(raw json.RawMessage) (scalar, bool) {
	if len(raw) == 0 {
		return scalar{}, false
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return scalar{}, false
	}
	return scalarOf(v)
}

// scalarOf is v (decoded with json.Number) as a scalar.
func scalarOf(v any) (scalar, bool) {
	switch v := v.(type) {
	case string:
		return scalar{kind: scalarString, s: v}, true
	case bool:
		return scalar{kind: scalarBool, b: v}, true
	case nil:
		return scalar{kind: scalarNull}, true
	case json.Number:
		// Only integers: 1.0 and 1e3 are not canonical JSON, and the spec
		// says not to cast.
		if strings.ContainsAny(string(v), ".eE") {
			return scalar{}, false
		}
		n, err := strconv.ParseInt(string(v), 10, 64)
		if err != nil || n > maxSafeInt || n < -maxSafeInt {
			return scalar{}, false
		}
		return scalar{kind: scalarInt, i: n}, true
	}
	return scalar{}, false
}

// Tweaks are the set_tweak actions of actions (an Outcome's) as the push
// gateway's "tweaks": each tweak's value, true for a highlight tweak with
// no value. Tweaks with no value other than highlight have no meaning and
// are left out. Never nil.
func Tweaks(actions json.RawMessage) map[string]any {
	out := map[string]any{}
	var acts []Action
	if err := json.Unmarshal(actions, &acts); err != nil {
		return out
	}
	for _, a := range acts {
		if a.Tweak == "" {
			continue
		}
		if a.Value == nil {
			if a.Tweak == "highlight" {
				out[a.Tweak] = true
			}
			continue
		}
		dec := json.NewDecoder(bytes.NewReader(a.Value))
		dec.UseNumber()
		var v any
		if err := dec.Decode(&v); err == nil {
			out[a.Tweak] = v
		}
	}
	return out
}
