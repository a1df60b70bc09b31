package push

import (
	"strings"
	"unicode"
	"unicode/utf8"
)

// Glob-style matching (spec appendices): "*" matches zero or more
// characters, "?" exactly one; the push rule conditions match case
// insensitively, which Weft defines as equality after unicode.ToLower of
// every character (rune) on both sides.
//
// A pattern is compiled once (compileGlob, from Compile) and matched
// without allocating or backtracking: a pattern with no wildcard is a
// plain comparison or a substring search, and any other runs as a set of
// pattern positions advanced one character of the value at a time (a bit
// set when the pattern has under 64 tokens), so a match costs
// O(len(value) × len(pattern)) at worst, whatever the pattern. No pattern
// a user writes can make an event expensive to evaluate beyond that bound.

const (
	globStar rune = -1 // "*"
	globAny  rune = -2 // "?"
)

// maxBitGlob is the longest token list the single-word bit set handles:
// states 0..len(toks) must fit in 64 bits.
const maxBitGlob = 63

type glob struct {
	// literal is true when the pattern has no wildcard; lit is then the
	// lowered pattern.
	literal bool
	lit     string
	// toks is the lowered pattern, runs of "*" merged into one (so the
	// closure over "*" is a single step).
	toks []rune
	// The bit-set form, when len(toks) <= maxBitGlob: bit k of a state set
	// means "toks[:k] matched so far".
	star, any uint64
	// ascii[r] is 1 + the index in masks of the positions holding the
	// ASCII rune r, 0 if none: a byte per rune rather than a mask keeps a
	// compiled pattern small (a user may have hundreds).
	ascii *[utf8.RuneSelf]uint8
	masks []uint64
	wide  []wideTok // positions holding each other rune
}

type wideTok struct {
	r    rune
	bits uint64
}

func compileGlob(pattern string) *glob {
	low := strings.ToLower(pattern)
	if !strings.ContainsAny(low, "*?") {
		return &glob{literal: true, lit: low}
	}
	g := &glob{}
	for _, r := range low {
		switch r {
		case '*':
			if n := len(g.toks); n > 0 && g.toks[n-1] == globStar {
				continue
			}
			g.toks = append(g.toks, globStar)
		case '?':
			g.toks = append(g.toks, globAny)
		default:
			g.toks = append(g.toks, r)
		}
	}
	if len(g.toks) <= maxBitGlob {
		g.ascii = new([utf8.RuneSelf]uint8)
		for k, t := range g.toks {
			bit := uint64(1) << k
			switch {
			case t == globStar:
				g.star |= bit
			case t == globAny:
				g.any |= bit
			case t < utf8.RuneSelf:
				if g.ascii[t] == 0 {
					g.masks = append(g.masks, 0)
					g.ascii[t] = uint8(len(g.masks))
				}
				g.masks[g.ascii[t]-1] |= bit
			default:
				i := 0
				for i < len(g.wide) && g.wide[i].r != t {
					i++
				}
				if i == len(g.wide) {
					g.wide = append(g.wide, wideTok{r: t})
				}
				g.wide[i].bits |= bit
			}
		}
	}
	return g
}

// lower is unicode.ToLower with an ASCII fast path.
func lower(r rune) rune {
	if r < utf8.RuneSelf {
		if 'A' <= r && r <= 'Z' {
			return r + 'a' - 'A'
		}
		return r
	}
	return unicode.ToLower(r)
}

// isWordByte reports whether b is in [A-Za-z0-9_]; every other character,
// including every byte of a multi-byte one, is a word boundary (spec,
// content rules and event_match on content.body).
func isWordByte(b byte) bool {
	return 'a' <= b && b <= 'z' || 'A' <= b && b <= 'Z' || '0' <= b && b <= '9' || b == '_'
}

// matchFull reports whether the whole of s matches, case-insensitively.
func (g *glob) matchFull(s string) bool {
	if g.literal {
		return equalLower(s, g.lit)
	}
	if g.ascii != nil {
		acc := uint64(1) << len(g.toks)
		set := g.closure(1)
		for _, r := range s {
			if set = g.step(set, lower(r)); set == 0 {
				return false
			}
		}
		return set&acc != 0
	}
	return g.slowMatch(s, false)
}

// matchWords reports whether some substring of low that starts and ends at
// a word boundary matches; low is already lowered (the event's body is
// lowered once for every rule and member).
func (g *glob) matchWords(low string) bool {
	if g.literal {
		return indexWords(low, g.lit)
	}
	if g.ascii == nil {
		return g.slowMatch(low, true)
	}
	start := g.closure(1)
	acc := uint64(1) << len(g.toks)
	var set uint64
	for i := 0; ; {
		// A match may start where the previous character was a boundary
		// (or at the start), and end where the next one is (or at the end).
		if i == 0 || !isWordByte(low[i-1]) {
			set |= start
		}
		if set&acc != 0 && (i == len(low) || !isWordByte(low[i])) {
			return true
		}
		if i == len(low) {
			return false
		}
		r, w := utf8.DecodeRuneInString(low[i:])
		set = g.step(set, r)
		i += w
	}
}

// closure adds, for every "*" reached, the position after it ("*" matching
// nothing). Runs of "*" are merged, so one step suffices.
func (g *glob) closure(set uint64) uint64 { return set | (set&g.star)<<1 }

// step advances the state set over one (lowered) character r.
func (g *glob) step(set uint64, r rune) uint64 {
	m := g.any
	if r >= 0 && r < utf8.RuneSelf {
		if i := g.ascii[r]; i != 0 {
			m |= g.masks[i-1]
		}
	} else {
		for _, w := range g.wide {
			if w.r == r {
				m |= w.bits
				break
			}
		}
	}
	return g.closure((set&m)<<1 | set&g.star)
}

// slowMatch is matchFull (words false) or matchWords (words true) for
// patterns too long for the bit set: the same automaton over a bool per
// position, allocating two slices per call. Such patterns are rare (a user
// content rule or event_match over 63 characters with a wildcard).
func (g *glob) slowMatch(s string, words bool) bool {
	n := len(g.toks)
	cur, next := make([]bool, n+1), make([]bool, n+1)
	closure := func(set []bool) {
		for k := 0; k < n; k++ {
			if set[k] && g.toks[k] == globStar {
				set[k+1] = true
			}
		}
	}
	if !words {
		cur[0] = true
		closure(cur)
	}
	for i := 0; ; {
		if words && (i == 0 || !isWordByte(s[i-1])) {
			cur[0] = true
			closure(cur)
		}
		if cur[n] && (!words && i == len(s) || words && (i == len(s) || !isWordByte(s[i]))) {
			return true
		}
		if i == len(s) {
			return false
		}
		r, w := utf8.DecodeRuneInString(s[i:])
		if !words {
			r = lower(r)
		}
		i += w
		clear(next)
		alive := false
		for k := 0; k < n; k++ {
			if !cur[k] {
				continue
			}
			switch t := g.toks[k]; {
			case t == globStar:
				next[k] = true
				alive = true
			case t == globAny || t == r:
				next[k+1] = true
				alive = true
			}
		}
		closure(next)
		cur, next = next, cur
		if !alive && !words {
			return false
		}
	}
}

// equalLower reports whether s, lowered, equals low (already lowered),
// without allocating.
func equalLower(s, low string) bool {
	for len(s) > 0 && len(low) > 0 {
		a, b := s[0], low[0]
		if a < utf8.RuneSelf && b < utf8.RuneSelf {
			if 'A' <= a && a <= 'Z' {
				a += 'a' - 'A'
			}
			if a != b {
				return false
			}
			s, low = s[1:], low[1:]
			continue
		}
		r, n := utf8.DecodeRuneInString(s)
		l, m := utf8.DecodeRuneInString(low)
		if lower(r) != l {
			return false
		}
		s, low = s[n:], low[m:]
	}
	return len(s) == 0 && len(low) == 0
}

// indexWords reports whether needle occurs in hay starting and ending at
// word boundaries (both already lowered).
func indexWords(hay, needle string) bool {
	if needle == "" {
		// An empty match sits between two characters, never inside one.
		for i := 0; ; {
			if (i == 0 || !isWordByte(hay[i-1])) && (i == len(hay) || !isWordByte(hay[i])) {
				return true
			}
			if i == len(hay) {
				return false
			}
			_, w := utf8.DecodeRuneInString(hay[i:])
			i += w
		}
	}
	for off := 0; off <= len(hay); {
		j := strings.Index(hay[off:], needle)
		if j < 0 {
			return false
		}
		i := off + j
		end := i + len(needle)
		if (i == 0 || !isWordByte(hay[i-1])) && (end == len(hay) || !isWordByte(hay[end])) {
			return true
		}
		off = i + 1
	}
	return false
}

// containsWordFold is indexWords for a needle not lowered yet (a display
// name, which differs per member): an ASCII needle is compared folding on
// the fly, so the common case allocates nothing.
func containsWordFold(low, needle string) bool {
	ascii := true
	for i := 0; i < len(needle); i++ {
		if needle[i] >= utf8.RuneSelf {
			ascii = false
			break
		}
	}
	if !ascii {
		return indexWords(low, strings.ToLower(needle))
	}
	if needle == "" {
		return indexWords(low, "")
	}
	first := needle[0]
	if 'A' <= first && first <= 'Z' {
		first += 'a' - 'A'
	}
	for off := 0; off+len(needle) <= len(low); {
		j := strings.IndexByte(low[off:], first)
		if j < 0 {
			return false
		}
		i := off + j
		end := i + len(needle)
		if end > len(low) {
			return false
		}
		if equalLower(needle, low[i:end]) &&
			(i == 0 || !isWordByte(low[i-1])) && (end == len(low) || !isWordByte(low[end])) {
			return true
		}
		off = i + 1
	}
	return false
}
