package syncapi

import (
	"fmt"
	"strconv"
	"strings"

	"maunium.net/go/mautrix"
)

// Token is a sync position: the global stream position (everything
// persisted) and the typing serial (in memory, per process).
//
// Written "s<pos>_<typing>". The typing serial restarts with the process;
// a token carrying a serial above the current one is from before a restart
// and simply gets the current typing state again.
type Token struct {
	Pos    int64
	Typing int64
}

func (t Token) String() string { return fmt.Sprintf("s%d_%d", t.Pos, t.Typing) }

// ParseToken reads a token a client stored. Anything malformed is
// M_INVALID_PARAM, never a silent full sync.
func ParseToken(s string) (Token, error) {
	bad := mautrix.MInvalidParam.WithMessage("Invalid sync token")
	rest, ok := strings.CutPrefix(s, "s")
	if !ok {
		return Token{}, bad
	}
	posStr, typStr, ok := strings.Cut(rest, "_")
	if !ok {
		return Token{}, bad
	}
	pos, err1 := strconv.ParseInt(posStr, 10, 64)
	typ, err2 := strconv.ParseInt(typStr, 10, 64)
	if err1 != nil || err2 != nil || pos < 0 || typ < 0 {
		return Token{}, bad
	}
	return Token{Pos: pos, Typing: typ}, nil
}
