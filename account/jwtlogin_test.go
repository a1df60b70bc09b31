package account_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"maunium.net/go/mautrix"

	"github.com/weftchat/weft/account"
)

var jwtTestNow = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// jwtKeys is a fresh set of keys, one or more per family, made by each test
// that needs them so no test depends on another.
type jwtKeys struct {
	secret        []byte
	rsa           *rsa.PrivateKey
	rsaPEM        string
	rsa2          *rsa.PrivateKey
	ec            *ecdsa.PrivateKey
	ecPEM         string
	ec384PEM      string
	ed            ed25519.PrivateKey
	edPEM         string
	rsaPrivatePEM string
}

func newJWTKeys(t *testing.T) *jwtKeys {
	t.Helper()
	k := &jwtKeys{secret: []byte("0123456789abcdef0123456789abcdef-test-secret")}
	var err error
	if k.rsa, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
		t.Fatal(err)
	}
	if k.rsa2, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
		t.Fatal(err)
	}
	if k.ec, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
		t.Fatal(err)
	}
	ec384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	var edPub ed25519.PublicKey
	if edPub, k.ed, err = ed25519.GenerateKey(rand.Reader); err != nil {
		t.Fatal(err)
	}
	k.rsaPEM = jwtPublicPEM(t, &k.rsa.PublicKey)
	k.ecPEM = jwtPublicPEM(t, &k.ec.PublicKey)
	k.ec384PEM = jwtPublicPEM(t, &ec384.PublicKey)
	k.edPEM = jwtPublicPEM(t, edPub)
	der, err := x509.MarshalPKCS8PrivateKey(k.rsa)
	if err != nil {
		t.Fatal(err)
	}
	k.rsaPrivatePEM = string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
	return k
}

func jwtPublicPEM(t *testing.T, pub any) string {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
}

func jwtSign(t *testing.T, method jwt.SigningMethod, key any, claims jwt.MapClaims) string {
	t.Helper()
	s, err := jwt.NewWithClaims(method, claims).SignedString(key)
	if err != nil {
		t.Fatalf("signing %s: %v", method.Alg(), err)
	}
	return s
}

// jwtGoodClaims are valid at jwtTestNow for issuer "https://idp.example" and
// audience "weft".
func jwtGoodClaims() jwt.MapClaims {
	return jwt.MapClaims{
		"sub": "alice",
		"iss": "https://idp.example",
		"aud": "weft",
		"iat": jwtTestNow.Add(-time.Minute).Unix(),
		"nbf": jwtTestNow.Add(-time.Minute).Unix(),
		"exp": jwtTestNow.Add(5 * time.Minute).Unix(),
	}
}

func mustJWTValidator(t *testing.T, c account.JWTConfig) *account.JWTValidator {
	t.Helper()
	v, err := account.NewJWTValidator(c)
	if err != nil {
		t.Fatalf("NewJWTValidator: %v", err)
	}
	return v
}

// wantJWTForbidden checks err is M_FORBIDDEN whose message contains msg.
func wantJWTForbidden(t *testing.T, err error, msg string) {
	t.Helper()
	var re mautrix.RespError
	if !errors.As(err, &re) {
		t.Fatalf("error %v (%T) is not a mautrix.RespError", err, err)
	}
	if re.ErrCode != "M_FORBIDDEN" {
		t.Fatalf("errcode %q, want M_FORBIDDEN (%v)", re.ErrCode, err)
	}
	if !strings.Contains(re.Err, msg) {
		t.Fatalf("message %q does not contain %q", re.Err, msg)
	}
}

func TestJWTGoodTokenEachAlgorithm(t *testing.T) {
	k := newJWTKeys(t)
	cases := []struct {
		alg    string
		method jwt.SigningMethod
		sign   any
		cfg    account.JWTConfig
	}{
		{"HS256", jwt.SigningMethodHS256, k.secret, account.JWTConfig{Secret: string(k.secret)}},
		{"HS384", jwt.SigningMethodHS384, k.secret, account.JWTConfig{Secret: string(k.secret)}},
		{"HS512", jwt.SigningMethodHS512, k.secret, account.JWTConfig{Secret: string(k.secret)}},
		{"RS256", jwt.SigningMethodRS256, k.rsa, account.JWTConfig{PublicKey: k.rsaPEM}},
		{"RS384", jwt.SigningMethodRS384, k.rsa, account.JWTConfig{PublicKey: k.rsaPEM}},
		{"RS512", jwt.SigningMethodRS512, k.rsa, account.JWTConfig{PublicKey: k.rsaPEM}},
		{"PS256", jwt.SigningMethodPS256, k.rsa, account.JWTConfig{PublicKey: k.rsaPEM}},
		{"PS512", jwt.SigningMethodPS512, k.rsa, account.JWTConfig{PublicKey: k.rsaPEM}},
		{"ES256", jwt.SigningMethodES256, k.ec, account.JWTConfig{PublicKey: k.ecPEM}},
		{"EdDSA", jwt.SigningMethodEdDSA, k.ed, account.JWTConfig{PublicKey: k.edPEM}},
		// Algorithm names are matched case-insensitively.
		{"eddsa", jwt.SigningMethodEdDSA, k.ed, account.JWTConfig{PublicKey: k.edPEM}},
		{"rs256", jwt.SigningMethodRS256, k.rsa, account.JWTConfig{PublicKey: k.rsaPEM}},
	}
	for _, tc := range cases {
		t.Run(tc.alg, func(t *testing.T) {
			tc.cfg.Algorithm = tc.alg
			tc.cfg.Issuer = "https://idp.example"
			tc.cfg.Audiences = []string{"other", "weft"}
			v := mustJWTValidator(t, tc.cfg)
			sub, err := v.Subject(jwtSign(t, tc.method, tc.sign, jwtGoodClaims()), jwtTestNow)
			if err != nil {
				t.Fatalf("Subject: %v", err)
			}
			if sub != "alice" {
				t.Fatalf("subject %q, want alice", sub)
			}
		})
	}
}

func TestJWTMinimalToken(t *testing.T) {
	// No exp, nbf, iat, iss or aud: all optional when not configured.
	k := newJWTKeys(t)
	v := mustJWTValidator(t, account.JWTConfig{Algorithm: "HS256", Secret: string(k.secret)})
	sub, err := v.Subject(jwtSign(t, jwt.SigningMethodHS256, k.secret, jwt.MapClaims{"sub": "@bob:example.org"}), jwtTestNow)
	if err != nil || sub != "@bob:example.org" {
		t.Fatalf("got %q, %v", sub, err)
	}
}

func TestJWTRefused(t *testing.T) {
	k := newJWTKeys(t)
	hs := account.JWTConfig{Algorithm: "HS256", Secret: string(k.secret), Issuer: "https://idp.example", Audiences: []string{"weft"}}
	rs := account.JWTConfig{Algorithm: "RS256", PublicKey: k.rsaPEM, Issuer: "https://idp.example", Audiences: []string{"weft"}}
	es := account.JWTConfig{Algorithm: "ES256", PublicKey: k.ecPEM}
	ed := account.JWTConfig{Algorithm: "EdDSA", PublicKey: k.edPEM}

	with := func(mod func(jwt.MapClaims)) jwt.MapClaims {
		c := jwtGoodClaims()
		mod(c)
		return c
	}
	hsTok := func(c jwt.MapClaims) string { return jwtSign(t, jwt.SigningMethodHS256, k.secret, c) }

	otherEC, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	_, otherEd, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}

	cases := []struct {
		name  string
		cfg   account.JWTConfig
		token string
		msg   string
	}{
		{"expired", hs, hsTok(with(func(c jwt.MapClaims) { c["exp"] = jwtTestNow.Add(-time.Minute).Unix() })), "JWT has expired"},
		{"not yet valid", hs, hsTok(with(func(c jwt.MapClaims) { c["nbf"] = jwtTestNow.Add(time.Minute).Unix() })), "JWT is not valid yet"},
		{"issued in the future", hs, hsTok(with(func(c jwt.MapClaims) { c["iat"] = jwtTestNow.Add(time.Hour).Unix() })), "JWT was issued in the future"},
		{"wrong audience", hs, hsTok(with(func(c jwt.MapClaims) { c["aud"] = []string{"someone-else", "another"} })), "JWT audience is not accepted"},
		{"missing audience", hs, hsTok(with(func(c jwt.MapClaims) { delete(c, "aud") })), "JWT has no aud claim"},
		{"wrong issuer", hs, hsTok(with(func(c jwt.MapClaims) { c["iss"] = "https://evil.example" })), "JWT issuer is not accepted"},
		{"missing issuer", hs, hsTok(with(func(c jwt.MapClaims) { delete(c, "iss") })), "JWT has no iss claim"},
		{"empty issuer", hs, hsTok(with(func(c jwt.MapClaims) { c["iss"] = "" })), "JWT has no iss claim"},
		{"empty audience", hs, hsTok(with(func(c jwt.MapClaims) { c["aud"] = "" })), "JWT has no aud claim"},
		{"missing subject", hs, hsTok(with(func(c jwt.MapClaims) { delete(c, "sub") })), "JWT has no sub claim"},
		{"empty subject", hs, hsTok(with(func(c jwt.MapClaims) { c["sub"] = "" })), "JWT sub claim is empty"},
		{"numeric exp as string", hs, hsTok(with(func(c jwt.MapClaims) { c["exp"] = "tomorrow" })), "JWT claims are invalid"},
		{"HMAC other secret", hs, jwtSign(t, jwt.SigningMethodHS256, []byte("not-the-secret-not-the-secret!!!"), jwtGoodClaims()), "JWT signature is invalid"},
		{"RSA other key", rs, jwtSign(t, jwt.SigningMethodRS256, k.rsa2, jwtGoodClaims()), "JWT signature is invalid"},
		{"ECDSA other key", es, jwtSign(t, jwt.SigningMethodES256, otherEC, jwtGoodClaims()), "JWT signature is invalid"},
		{"Ed25519 other key", ed, jwtSign(t, jwt.SigningMethodEdDSA, otherEd, jwtGoodClaims()), "JWT signature is invalid"},
		// The classic confusion attack: the attacker knows the RSA public
		// key and uses its PEM bytes as an HMAC secret.
		{"alg confusion HS256 with RSA PEM", rs, jwtSign(t, jwt.SigningMethodHS256, []byte(k.rsaPEM), jwtGoodClaims()), "JWT algorithm is not accepted"},
		{"other algorithm of the same family", rs, jwtSign(t, jwt.SigningMethodRS512, k.rsa, jwtGoodClaims()), "JWT algorithm is not accepted"},
		{"alg none", hs, jwtSign(t, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, jwtGoodClaims()), "JWT algorithm is not accepted"},
		{"alg none for RSA config", rs, jwtSign(t, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, jwtGoodClaims()), "JWT algorithm is not accepted"},
		{"unknown alg", hs, unsignedWithHeader(`{"alg":"HS1024","typ":"JWT"}`), "JWT algorithm is not accepted"},
		{"garbage", hs, "not.a.jwt", "JWT is malformed"},
		{"empty", hs, "", "JWT is malformed"},
		{"tampered payload", hs, jwtTamper(t, hsTok(jwtGoodClaims())), "JWT signature is invalid"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			v := mustJWTValidator(t, tc.cfg)
			sub, err := v.Subject(tc.token, jwtTestNow)
			if err == nil {
				t.Fatalf("accepted, subject %q", sub)
			}
			wantJWTForbidden(t, err, tc.msg)
			if strings.Contains(err.Error(), string(k.secret)) {
				t.Fatal("error leaks the secret")
			}
		})
	}
}

// unsignedWithHeader builds a token with the given header, good claims and a
// junk signature.
func unsignedWithHeader(header string) string {
	claims, _ := json.Marshal(jwtGoodClaims())
	enc := base64.RawURLEncoding
	return enc.EncodeToString([]byte(header)) + "." + enc.EncodeToString(claims) + ".c2ln"
}

// jwtTamper swaps the payload of a signed token for another one, keeping the
// original signature.
func jwtTamper(t *testing.T, token string) string {
	t.Helper()
	parts := strings.Split(token, ".")
	other := strings.Split(jwtSign(t, jwt.SigningMethodHS256, []byte("x"), jwt.MapClaims{"sub": "admin"}), ".")
	return parts[0] + "." + other[1] + "." + parts[2]
}

func TestJWTLeeway(t *testing.T) {
	k := newJWTKeys(t)
	v := mustJWTValidator(t, account.JWTConfig{Algorithm: "HS256", Secret: string(k.secret)})
	// Expired 10s ago and not valid for another 10s: both inside the leeway.
	c := jwt.MapClaims{
		"sub": "alice",
		"exp": jwtTestNow.Add(-10 * time.Second).Unix(),
		"nbf": jwtTestNow.Add(10 * time.Second).Unix(),
		"iat": jwtTestNow.Add(10 * time.Second).Unix(),
	}
	if _, err := v.Subject(jwtSign(t, jwt.SigningMethodHS256, k.secret, c), jwtTestNow); err != nil {
		t.Fatalf("within leeway refused: %v", err)
	}
	c["exp"] = jwtTestNow.Add(-2 * time.Minute).Unix()
	_, err := v.Subject(jwtSign(t, jwt.SigningMethodHS256, k.secret, c), jwtTestNow)
	wantJWTForbidden(t, err, "JWT has expired")
}

func TestJWTLargerCurves(t *testing.T) {
	for _, tc := range []struct {
		method *jwt.SigningMethodECDSA
		curve  elliptic.Curve
	}{
		{jwt.SigningMethodES384, elliptic.P384()},
		{jwt.SigningMethodES512, elliptic.P521()},
	} {
		t.Run(tc.method.Alg(), func(t *testing.T) {
			key, err := ecdsa.GenerateKey(tc.curve, rand.Reader)
			if err != nil {
				t.Fatal(err)
			}
			v := mustJWTValidator(t, account.JWTConfig{Algorithm: tc.method.Alg(), PublicKey: jwtPublicPEM(t, &key.PublicKey)})
			sub, err := v.Subject(jwtSign(t, tc.method, key, jwtGoodClaims()), jwtTestNow)
			if err != nil || sub != "alice" {
				t.Fatalf("got %q, %v", sub, err)
			}
		})
	}
}

func TestJWTCustomSubjectClaim(t *testing.T) {
	k := newJWTKeys(t)
	v := mustJWTValidator(t, account.JWTConfig{Algorithm: "ES256", PublicKey: k.ecPEM, SubjectClaim: "preferred_username"})
	c := jwtGoodClaims()
	c["preferred_username"] = "carol"
	sub, err := v.Subject(jwtSign(t, jwt.SigningMethodES256, k.ec, c), jwtTestNow)
	if err != nil || sub != "carol" {
		t.Fatalf("got %q, %v; want carol", sub, err)
	}

	// sub alone does not do when another claim is configured.
	_, err = v.Subject(jwtSign(t, jwt.SigningMethodES256, k.ec, jwtGoodClaims()), jwtTestNow)
	wantJWTForbidden(t, err, "JWT has no preferred_username claim")

	c["preferred_username"] = 42
	_, err = v.Subject(jwtSign(t, jwt.SigningMethodES256, k.ec, c), jwtTestNow)
	wantJWTForbidden(t, err, "JWT preferred_username claim is not a string")
}

func TestJWTPublicKeyFromFile(t *testing.T) {
	k := newJWTKeys(t)
	path := filepath.Join(t.TempDir(), "idp.pem")
	if err := os.WriteFile(path, []byte(k.rsaPEM), 0o600); err != nil {
		t.Fatal(err)
	}
	v := mustJWTValidator(t, account.JWTConfig{Algorithm: "PS256", PublicKey: path})
	sub, err := v.Subject(jwtSign(t, jwt.SigningMethodPS256, k.rsa, jwtGoodClaims()), jwtTestNow)
	if err != nil || sub != "alice" {
		t.Fatalf("got %q, %v", sub, err)
	}
	if v.Algorithm() != "PS256" {
		t.Fatalf("Algorithm() = %q", v.Algorithm())
	}
}

func TestJWTPublicKeyFormats(t *testing.T) {
	k := newJWTKeys(t)
	pkcs1 := string(pem.EncodeToMemory(&pem.Block{Type: "RSA PUBLIC KEY", Bytes: x509.MarshalPKCS1PublicKey(&k.rsa.PublicKey)}))
	for name, c := range map[string]struct {
		alg    string
		pem    string
		method jwt.SigningMethod
		key    any
	}{
		"RSA PKCS1":       {"RS256", pkcs1, jwt.SigningMethodRS256, k.rsa},
		"RSA certificate": {"RS256", jwtSelfSigned(t, k.rsa, &k.rsa.PublicKey), jwt.SigningMethodRS256, k.rsa},
		"EC certificate":  {"ES256", jwtSelfSigned(t, k.ec, &k.ec.PublicKey), jwt.SigningMethodES256, k.ec},
		"Ed certificate":  {"EdDSA", jwtSelfSigned(t, k.ed, k.ed.Public()), jwt.SigningMethodEdDSA, k.ed},
		"leading space":   {"EdDSA", "\n  " + k.edPEM, jwt.SigningMethodEdDSA, k.ed},
	} {
		t.Run(name, func(t *testing.T) {
			v := mustJWTValidator(t, account.JWTConfig{Algorithm: c.alg, PublicKey: c.pem})
			if sub, err := v.Subject(jwtSign(t, c.method, c.key, jwtGoodClaims()), jwtTestNow); err != nil || sub != "alice" {
				t.Fatalf("got %q, %v", sub, err)
			}
		})
	}
}

func jwtSelfSigned(t *testing.T, priv crypto.Signer, pub any) string {
	t.Helper()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "idp.example"},
		NotBefore:    jwtTestNow.Add(-time.Hour),
		NotAfter:     jwtTestNow.Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, priv)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
}

func TestNewJWTValidatorErrors(t *testing.T) {
	k := newJWTKeys(t)
	missing := filepath.Join(t.TempDir(), "missing.pem")
	small, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		cfg  account.JWTConfig
		key  string // the config key the error must name
	}{
		{"no algorithm", account.JWTConfig{Secret: "s"}, "jwt.algorithm"},
		{"unknown algorithm", account.JWTConfig{Algorithm: "HS1024", Secret: "s"}, "jwt.algorithm"},
		{"none algorithm", account.JWTConfig{Algorithm: "none", Secret: "s"}, "jwt.algorithm"},
		{"HS without secret", account.JWTConfig{Algorithm: "HS256"}, "jwt.secret"},
		{"HS with a public key too", account.JWTConfig{Algorithm: "HS256", Secret: "s", PublicKey: k.rsaPEM}, "jwt.public_key"},
		{"RS with a secret too", account.JWTConfig{Algorithm: "RS256", Secret: "s", PublicKey: k.rsaPEM}, "jwt.secret"},
		{"RS without key", account.JWTConfig{Algorithm: "RS256"}, "jwt.public_key"},
		{"RS with EC key", account.JWTConfig{Algorithm: "RS256", PublicKey: k.ecPEM}, "jwt.public_key"},
		{"ES with RSA key", account.JWTConfig{Algorithm: "ES256", PublicKey: k.rsaPEM}, "jwt.public_key"},
		{"ES256 with P-384 key", account.JWTConfig{Algorithm: "ES256", PublicKey: k.ec384PEM}, "jwt.public_key"},
		{"EdDSA with RSA key", account.JWTConfig{Algorithm: "EdDSA", PublicKey: k.rsaPEM}, "jwt.public_key"},
		{"private key", account.JWTConfig{Algorithm: "RS256", PublicKey: k.rsaPrivatePEM}, "jwt.public_key"},
		{"missing file", account.JWTConfig{Algorithm: "RS256", PublicKey: missing}, "jwt.public_key"},
		{"bad PEM", account.JWTConfig{Algorithm: "RS256", PublicKey: "-----BEGIN PUBLIC KEY-----\nnope\n"}, "jwt.public_key"},
		{"RSA key under 2048 bits", account.JWTConfig{Algorithm: "RS256", PublicKey: jwtPublicPEM(t, &small.PublicKey)}, "jwt.public_key"},
		{"empty audience", account.JWTConfig{Algorithm: "HS256", Secret: "s", Audiences: []string{""}}, "jwt.audiences"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			v, err := account.NewJWTValidator(tc.cfg)
			if err == nil {
				t.Fatalf("accepted: %+v", v)
			}
			if !strings.Contains(err.Error(), tc.key) {
				t.Fatalf("error %q does not name %s", err, tc.key)
			}
			if strings.Contains(err.Error(), "PRIVATE KEY-----") || strings.Contains(err.Error(), "MII") {
				t.Fatalf("error %q leaks key material", err)
			}
		})
	}
}

func TestJWTValidatorConcurrent(t *testing.T) {
	// One validator serves every login; -race checks Subject shares nothing
	// mutable between calls.
	k := newJWTKeys(t)
	v := mustJWTValidator(t, account.JWTConfig{Algorithm: "HS256", Secret: string(k.secret)})
	tok := jwtSign(t, jwt.SigningMethodHS256, k.secret, jwtGoodClaims())
	done := make(chan error, 8)
	for i := range 8 {
		go func() {
			now := jwtTestNow
			if i%2 == 1 {
				now = jwtTestNow.Add(time.Hour) // expired for these
			}
			_, err := v.Subject(tok, now)
			if (err == nil) != (i%2 == 0) {
				done <- errors.New("unexpected result")
				return
			}
			done <- nil
		}()
	}
	for range 8 {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
}
