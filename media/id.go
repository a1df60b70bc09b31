package media

import (
	"crypto/rand"
	"fmt"
)

// idAlphabet is the media ID alphabet: the spec allows A-Za-z0-9, '_' and
// '-'; we generate from the alphanumerics only, so IDs never start or end
// with punctuation that some clients' linkifiers trim.
const idAlphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"

// idLength gives 32 * log2(62) ≈ 190 bits of entropy: media IDs are the
// only secret protecting media on the unauthenticated legacy endpoints and
// must not be guessable or enumerable.
const idLength = 32

// maxIDLength bounds the media IDs we look up (ours are idLength; a longer
// one cannot exist, but older exports might carry other lengths).
const maxIDLength = 255

// newMediaID returns a fresh random media ID. Bytes are drawn from
// crypto/rand with rejection sampling (only values below 248 = 4*62 are
// used), so every character is uniformly distributed.
func newMediaID() (string, error) {
	out := make([]byte, 0, idLength)
	var buf [64]byte
	for len(out) < idLength {
		if _, err := rand.Read(buf[:]); err != nil {
			return "", fmt.Errorf("reading randomness for a media ID: %w", err)
		}
		for _, b := range buf {
			if b >= 4*62 {
				continue
			}
			out = append(out, idAlphabet[b%62])
			if len(out) == idLength {
				break
			}
		}
	}
	return string(out), nil
}

// ValidMediaID reports whether s may be a media ID: 1 to 255 characters of
// A-Za-z0-9, '_' and '-', as the spec requires servers to enforce before a
// media ID gets anywhere near a file path or a query.
func ValidMediaID(s string) bool {
	if s == "" || len(s) > maxIDLength {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}
