package account_test

import (
	"crypto/hmac"
	"crypto/sha1"
	"encoding/base64"
	"testing"
	"time"

	"github.com/weftchat/weft/account"
)

func TestTURNCredentials(t *testing.T) {
	now := time.Unix(1_700_000_000, 900_000_000) // the fraction must not leak into the expiry
	user, pass, ttl := account.TURNCredentials("s3cret", "@alice:example.org", 24*time.Hour, now)

	if ttl != 86400 {
		t.Fatalf("ttl %d, want 86400", ttl)
	}
	if want := "1700086400:@alice:example.org"; user != want {
		t.Fatalf("username %q, want %q", user, want)
	}
	mac := hmac.New(sha1.New, []byte("s3cret"))
	mac.Write([]byte("1700086400:@alice:example.org"))
	if want := base64.StdEncoding.EncodeToString(mac.Sum(nil)); pass != want {
		t.Fatalf("password %q, want %q", pass, want)
	}
	// HMAC-SHA1 is 20 bytes: 28 characters of padded standard base64.
	if len(pass) != 28 || pass[27] != '=' {
		t.Fatalf("password %q is not padded standard base64 of 20 bytes", pass)
	}
}

func TestTURNCredentialsKnownVector(t *testing.T) {
	// Computed independently:
	//   printf '%s' '1000:@bob:example.com' | openssl dgst -sha1 -hmac key -binary | base64
	user, pass, ttl := account.TURNCredentials("key", "@bob:example.com", 1000*time.Second, time.Unix(0, 0))
	if user != "1000:@bob:example.com" || ttl != 1000 {
		t.Fatalf("got %q ttl %d", user, ttl)
	}
	if want := "oSf0vuMJnGGO0QwJBH+XFmMaQBw="; pass != want {
		t.Fatalf("password %q, want %q", pass, want)
	}
}

func TestTURNCredentialsExpiryMath(t *testing.T) {
	now := time.Unix(1_000, 0)
	for _, tc := range []struct {
		lifetime time.Duration
		ttl      int
		user     string
	}{
		{time.Hour, 3600, "4600:@u:x"},
		{1500 * time.Millisecond, 1, "1001:@u:x"}, // truncated to whole seconds
		{0, 0, "1000:@u:x"},
		{-time.Minute, 0, "1000:@u:x"}, // never an expiry in the past
	} {
		user, _, ttl := account.TURNCredentials("k", "@u:x", tc.lifetime, now)
		if ttl != tc.ttl || user != tc.user {
			t.Errorf("lifetime %v: got %q ttl %d, want %q ttl %d", tc.lifetime, user, ttl, tc.user, tc.ttl)
		}
	}

	// Different secrets and users give different passwords.
	_, p1, _ := account.TURNCredentials("k1", "@u:x", time.Hour, now)
	_, p2, _ := account.TURNCredentials("k2", "@u:x", time.Hour, now)
	_, p3, _ := account.TURNCredentials("k1", "@v:x", time.Hour, now)
	if p1 == p2 || p1 == p3 {
		t.Fatal("password does not depend on secret and user")
	}
}
