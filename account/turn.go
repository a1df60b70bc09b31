package account

import (
	"crypto/hmac"
	"crypto/sha1"
	"encoding/base64"
	"strconv"
	"time"
)

// TURNCredentials returns time-limited TURN credentials in the scheme of
// coturn's use-auth-secret (the "TURN REST API" draft) for
// GET /_matrix/client/v3/voip/turnServer.
//
// username is "<expiry>:<userID>", where expiry is a Unix time in seconds;
// password is the standard base64 of HMAC-SHA1(secret, username). The TURN
// server, sharing the secret, recomputes the password and refuses the
// username once expiry has passed.
//
// Invariant: expiry == now.Unix() + ttlSeconds exactly, so the ttl the client
// is told and the expiry the TURN server enforces agree to the second.
// lifetime is truncated to whole seconds; a lifetime under one second gives
// credentials that are already expired (ttlSeconds 0), so callers should
// configure a positive lifetime.
func TURNCredentials(secret string, userID string, lifetime time.Duration, now time.Time) (username, password string, ttlSeconds int) {
	ttlSeconds = max(int(lifetime/time.Second), 0)
	expiry := now.Unix() + int64(ttlSeconds)
	username = strconv.FormatInt(expiry, 10) + ":" + userID
	mac := hmac.New(sha1.New, []byte(secret))
	mac.Write([]byte(username)) // hash.Hash.Write never returns an error
	password = base64.StdEncoding.EncodeToString(mac.Sum(nil))
	return username, password, ttlSeconds
}
