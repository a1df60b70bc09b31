package room_test

import (
	"testing"

	"github.com/weftchat/weft/room"
)

func TestTypeMatches(t *testing.T) {
	for _, c := range []struct {
		pattern, typ string
		want         bool
	}{
		{"m.room.message", "m.room.message", true},
		{"m.room.message", "m.room.messages", false},
		{"m.*", "m.room.message", true},
		{"*", "anything.at.all", true},
		{"m.room.*", "m.reaction", false},
		{"*.message", "m.room.message", true},
		{"m.*.member", "m.room.member", true},
		{"m.*.member", "m.room.name", false},
		{"m.room.?ame", "m.room.name", false}, // only * is a wildcard
		{"m.room.[n]ame", "m.room.name", false},
		{"m.room.[n]ame", "m.room.[n]ame", true},
	} {
		if got := room.TypeMatches([]string{c.pattern}, c.typ); got != c.want {
			t.Errorf("TypeMatches(%q, %q) = %v, want %v", c.pattern, c.typ, got, c.want)
		}
	}
}
