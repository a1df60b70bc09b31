package account_test

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"maunium.net/go/mautrix"

	"github.com/weftchat/weft/account"
)

// specFilterExample is the request example of POST /user/{userId}/filter in
// matrix-spec data/api/client-server/filter.yaml, as written there.
const specFilterExample = `{
  "room": {
    "state": {
      "types": [
        "m.room.*"
      ],
      "not_rooms": [
        "!726s6s6q:example.com"
      ]
    },
    "timeline": {
      "limit": 10,
      "types": [
        "m.room.message"
      ],
      "not_rooms": [
        "!726s6s6q:example.com"
      ],
      "not_senders": [
        "@spam:example.com"
      ]
    },
    "ephemeral": {
      "types": [
        "m.receipt",
        "m.typing"
      ],
      "not_rooms": [
        "!726s6s6q:example.com"
      ],
      "not_senders": [
        "@spam:example.com"
      ]
    }
  },
  "presence": {
    "types": [
      "m.presence"
    ],
    "not_senders": [
      "@alice:example.com"
    ]
  },
  "event_format": "client",
  "event_fields": [
    "type",
    "content",
    "sender"
  ]
}`

func TestValidateFilterValid(t *testing.T) {
	cases := []struct {
		name string
		in   string
	}{
		{"spec example", specFilterExample},
		{"empty object", `{}`},
		{"federation format", `{"event_format":"federation"}`},
		// What Element and matrix-js-sdk upload.
		{"lazy loading", `{"room":{"state":{"lazy_load_members":true},"timeline":{"limit":20,"unread_thread_notifications":true}}}`},
		{"every known field", `{
			"event_fields": ["content.body", "sender"],
			"event_format": "client",
			"presence": {"limit": 5, "senders": ["@a:x"], "not_senders": ["@b:x"], "types": ["m.presence"], "not_types": ["*"]},
			"account_data": {"limit": 1, "types": ["m.*"]},
			"room": {
				"rooms": ["!a:x", "!roomv12hashonly"], "not_rooms": ["!b:x"], "include_leave": false,
				"ephemeral": {"types": ["m.receipt"]},
				"state": {"lazy_load_members": true, "include_redundant_members": false},
				"timeline": {"limit": 50, "contains_url": true, "rooms": ["!a:x"], "not_rooms": [], "senders": ["@a:x"]},
				"account_data": {"not_types": ["m.fully_read"]}
			}
		}`},
		{"limit zero", `{"room":{"timeline":{"limit":0}}}`},
		{"limit max int64", `{"room":{"timeline":{"limit":9223372036854775807}}}`},
		{"unknown fields ignored", `{"org.example.custom":{"x":[1,2]},"room":{"timeline":{"org.matrix.labels":["#fun"],"related_by_rel_types":["m.thread"]},"weird":1}}`},
		{"nulls are absent", `{"event_fields":null,"event_format":null,"presence":null,"room":{"rooms":null,"include_leave":null,"timeline":{"limit":null,"types":null,"contains_url":null}}}`},
		{"empty arrays", `{"event_fields":[],"room":{"rooms":[],"timeline":{"types":[]}}}`},
		{"unicode", `{"room":{"timeline":{"types":["m.ré\u00e9"]}}}`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			out, err := account.ValidateFilter([]byte(tc.in))
			if err != nil {
				t.Fatalf("refused: %v", err)
			}
			if !json.Valid(out) {
				t.Fatalf("output is not JSON: %s", out)
			}
			if strings.ContainsAny(string(out), "\n\t") {
				t.Fatalf("output is not compact: %s", out)
			}
			// Compacting must not change the content.
			var a, b any
			if err := json.Unmarshal([]byte(tc.in), &a); err != nil {
				t.Fatal(err)
			}
			if err := json.Unmarshal(out, &b); err != nil {
				t.Fatal(err)
			}
			ja, _ := json.Marshal(a)
			jb, _ := json.Marshal(b)
			if string(ja) != string(jb) {
				t.Fatalf("content changed:\n in  %s\n out %s", ja, jb)
			}
		})
	}
}

func TestValidateFilterCompacts(t *testing.T) {
	out, err := account.ValidateFilter([]byte("  {\n \"room\" : { \"timeline\" : { \"limit\" : 10 } } }\n"))
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"room":{"timeline":{"limit":10}}}`; string(out) != want {
		t.Fatalf("got %s, want %s", out, want)
	}
}

func TestValidateFilterInvalid(t *testing.T) {
	cases := []struct {
		name    string
		in      string
		errcode string
		msg     string
	}{
		// Not a JSON object at all.
		{"empty body", ``, "M_NOT_JSON", "not valid JSON"},
		{"syntax error", `{"room":`, "M_NOT_JSON", "not valid JSON"},
		{"trailing data", `{} {}`, "M_NOT_JSON", "not valid JSON"},
		{"array", `[]`, "M_NOT_JSON", "must be a JSON object"},
		{"string", `"filter"`, "M_NOT_JSON", "must be a JSON object"},
		{"null", `null`, "M_NOT_JSON", "must be a JSON object"},
		{"invalid UTF-8", "{\"event_fields\":[\"\xff\"]}", "M_NOT_JSON", "UTF-8"},

		// Top level.
		{"event_fields not array", `{"event_fields":"type"}`, "M_BAD_JSON", "event_fields must be an array of strings"},
		{"event_fields item", `{"event_fields":["type",3]}`, "M_BAD_JSON", "event_fields[1] must be a string"},
		{"event_format unknown", `{"event_format":"raw"}`, "M_BAD_JSON", `event_format must be "client" or "federation"`},
		{"event_format not string", `{"event_format":1}`, "M_BAD_JSON", "event_format must be"},
		{"presence not object", `{"presence":[]}`, "M_BAD_JSON", "presence must be an object"},
		{"account_data not object", `{"account_data":"all"}`, "M_BAD_JSON", "account_data must be an object"},
		{"room not object", `{"room":true}`, "M_BAD_JSON", "room must be an object"},

		// EventFilter.
		{"limit string", `{"presence":{"limit":"10"}}`, "M_BAD_JSON", "presence.limit must be an integer"},
		{"limit fraction", `{"room":{"timeline":{"limit":1.5}}}`, "M_BAD_JSON", "room.timeline.limit must be an integer"},
		{"limit float form", `{"room":{"timeline":{"limit":10.0}}}`, "M_BAD_JSON", "room.timeline.limit must be an integer"},
		{"limit exponent", `{"room":{"timeline":{"limit":1e2}}}`, "M_BAD_JSON", "room.timeline.limit must be an integer"},
		{"limit negative", `{"room":{"state":{"limit":-1}}}`, "M_BAD_JSON", "room.state.limit must not be negative"},
		{"limit very negative", `{"room":{"state":{"limit":-99999999999999999999}}}`, "M_BAD_JSON", "room.state.limit must not be negative"},
		{"limit too large", `{"account_data":{"limit":99999999999999999999}}`, "M_BAD_JSON", "account_data.limit is too large"},
		{"limit bool", `{"account_data":{"limit":true}}`, "M_BAD_JSON", "account_data.limit must be an integer"},
		{"senders not array", `{"presence":{"senders":"@a:x"}}`, "M_BAD_JSON", "presence.senders must be an array of strings"},
		{"senders not user ID", `{"presence":{"senders":["a:x"]}}`, "M_BAD_JSON", "presence.senders[0] must be a user ID starting with @"},
		{"not_senders empty string", `{"room":{"timeline":{"not_senders":["@a:x",""]}}}`, "M_BAD_JSON", "room.timeline.not_senders[1] must be a user ID"},
		{"not_senders item", `{"room":{"timeline":{"not_senders":[null]}}}`, "M_BAD_JSON", "room.timeline.not_senders[0] must be a string"},
		{"types item", `{"room":{"ephemeral":{"types":[{"t":1}]}}}`, "M_BAD_JSON", "room.ephemeral.types[0] must be a string"},
		{"not_types not array", `{"account_data":{"not_types":{}}}`, "M_BAD_JSON", "account_data.not_types must be an array of strings"},

		// RoomFilter.
		{"rooms not array", `{"room":{"rooms":"!a:x"}}`, "M_BAD_JSON", "room.rooms must be an array of strings"},
		{"rooms not room ID", `{"room":{"rooms":["#alias:x"]}}`, "M_BAD_JSON", "room.rooms[0] must be a room ID starting with !"},
		{"not_rooms item", `{"room":{"not_rooms":[1]}}`, "M_BAD_JSON", "room.not_rooms[0] must be a string"},
		{"include_leave string", `{"room":{"include_leave":"true"}}`, "M_BAD_JSON", "room.include_leave must be a boolean"},
		{"timeline not object", `{"room":{"timeline":[]}}`, "M_BAD_JSON", "room.timeline must be an object"},
		{"state not object", `{"room":{"state":1}}`, "M_BAD_JSON", "room.state must be an object"},
		{"ephemeral not object", `{"room":{"ephemeral":"x"}}`, "M_BAD_JSON", "room.ephemeral must be an object"},
		{"room account_data not object", `{"room":{"account_data":false}}`, "M_BAD_JSON", "room.account_data must be an object"},

		// RoomEventFilter.
		{"contains_url", `{"room":{"timeline":{"contains_url":"yes"}}}`, "M_BAD_JSON", "room.timeline.contains_url must be a boolean"},
		{"lazy_load_members", `{"room":{"state":{"lazy_load_members":1}}}`, "M_BAD_JSON", "room.state.lazy_load_members must be a boolean"},
		{"include_redundant_members", `{"room":{"state":{"include_redundant_members":"no"}}}`, "M_BAD_JSON", "room.state.include_redundant_members must be a boolean"},
		{"unread_thread_notifications", `{"room":{"timeline":{"unread_thread_notifications":[]}}}`, "M_BAD_JSON", "room.timeline.unread_thread_notifications must be a boolean"},
		{"room event filter rooms", `{"room":{"account_data":{"rooms":["@user:x"]}}}`, "M_BAD_JSON", "room.account_data.rooms[0] must be a room ID"},
		{"room event filter not_rooms", `{"room":{"ephemeral":{"not_rooms":"!a:x"}}}`, "M_BAD_JSON", "room.ephemeral.not_rooms must be an array of strings"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			out, err := account.ValidateFilter([]byte(tc.in))
			if err == nil {
				t.Fatalf("accepted: %s", out)
			}
			var re mautrix.RespError
			if !errors.As(err, &re) {
				t.Fatalf("error %v (%T) is not a mautrix.RespError", err, err)
			}
			if re.ErrCode != tc.errcode {
				t.Fatalf("errcode %s, want %s (%v)", re.ErrCode, tc.errcode, err)
			}
			if !strings.Contains(re.Err, tc.msg) {
				t.Fatalf("message %q does not contain %q", re.Err, tc.msg)
			}
		})
	}
}

func TestValidateFilterReportsFirstFaultStably(t *testing.T) {
	// Several faults: the reported one must not depend on map iteration order.
	in := []byte(`{"room":{"timeline":{"limit":"x","types":1},"rooms":[1]},"event_format":"x"}`)
	var first string
	for i := range 20 {
		_, err := account.ValidateFilter(in)
		if err == nil {
			t.Fatal("accepted")
		}
		if i == 0 {
			first = err.Error()
		} else if err.Error() != first {
			t.Fatalf("error changed between runs: %q then %q", first, err.Error())
		}
	}
}
