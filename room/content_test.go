package room_test

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"

	"github.com/weftchat/weft/room"
)

// TestCheckContent: event content must be a JSON object whose numbers are
// integers within ±(2^53-1). The strict scan (CanonicalContent) decides
// nearly every content alone; what it refuses, the decoding check decides
// and words. So the scan may only accept what the decoding accepts.
func TestCheckContent(t *testing.T) {
	cases := []struct {
		name, content string
		fast          bool   // the scan alone accepts it
		errcode, in   string // "": accepted
	}{
		{"message", `{"msgtype":"m.text","body":"hi <b>"}`, true, "", ""},
		{"nested integers", `{"a":[1,-2,{"b":[9007199254740991,-9007199254740991,0]}],"c":null,"d":true}`, true, "", ""},
		{"empty", ` {} `, true, "", ""},
		{"float", `{"n":1.5}`, false, "M_BAD_JSON", "content.n: floats"},
		{"deep float", `{"deep":{"a":[1,{"b":2.0}]}}`, false, "M_BAD_JSON", "content.deep.a[1].b: floats"},
		{"exponent", `{"n":1e3}`, false, "M_BAD_JSON", "content.n: floats"},
		{"2^53", `{"n":9007199254740992}`, false, "M_BAD_JSON", "content.n: integer out of the range"},
		{"-2^53", `{"n":-9007199254740992}`, false, "M_BAD_JSON", "content.n: integer out of the range"},
		{"beyond int64", `{"n":123456789012345678901234567890}`, false, "M_BAD_JSON", "content.n"},
		{"array", `[1]`, false, "M_BAD_JSON", "must be a JSON object"},
		{"string", `"x"`, false, "M_BAD_JSON", "must be a JSON object"},
		{"not JSON", `{"a":`, false, "M_NOT_JSON", ""},
		// encoding/json's leniency, kept.
		{"duplicate names", `{"a":1,"a":2}`, true, "", ""},
		{"duplicate names, the first a float", `{"a":1.5,"a":2}`, false, "", ""},
		{"invalid UTF-8", "{\"a\":\"\xff\"}", true, "", ""},
		{"trailing data", `{"a":1} {}`, false, "", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := room.CanonicalContent([]byte(c.content)); got != c.fast {
				t.Errorf("CanonicalContent = %v, want %v", got, c.fast)
			}
			err := room.CheckContent(json.RawMessage(c.content), id.RoomV12)
			if c.errcode == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			var re mautrix.RespError
			if !errors.As(err, &re) || re.ErrCode != c.errcode || !strings.Contains(re.Err, c.in) {
				t.Fatalf("got %v, want %s containing %q", err, c.errcode, c.in)
			}
		})
	}
}

// BenchmarkCheckContent compares the check of a typical message's content
// by the strict scan (checkContent's path for nearly every event) with the
// decoding check it falls back on.
func BenchmarkCheckContent(b *testing.B) {
	content := json.RawMessage(`{"msgtype":"m.text","body":"benchmark message with a few more words in it","format":"org.matrix.custom.html","formatted_body":"benchmark <b>message</b>","m.mentions":{"user_ids":["@alice:example.org"]},"n":42}`)
	for _, c := range []struct {
		name  string
		check func() error
	}{
		{"scan", func() error { return room.CheckContent(content, id.RoomV12) }},
		{"decode", func() error { return room.CheckContentDecoded(content) }},
	} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if err := c.check(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
