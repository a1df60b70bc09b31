package account

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"maunium.net/go/mautrix"
)

// jwtLeeway absorbs clock skew between the identity provider and this server
// when checking exp, nbf and iat.
const jwtLeeway = 30 * time.Second

// JWTConfig configures org.matrix.login.jwt. Field names follow the jwt.*
// keys of the server configuration, which the errors of NewJWTValidator name.
type JWTConfig struct {
	// Secret is the HMAC key, used only by HS256, HS384 and HS512.
	Secret string
	// PublicKey is the PEM public key (PUBLIC KEY, RSA PUBLIC KEY or
	// CERTIFICATE) used by RS*, PS*, ES* and EdDSA: the PEM text itself when it
	// starts with "-----BEGIN", otherwise the path of a file holding it.
	PublicKey string
	// Algorithm is the one JWS algorithm accepted; tokens signed with any
	// other, including "none", are refused.
	Algorithm string
	// Issuer, when set, must equal the token's iss claim.
	Issuer string
	// Audiences, when set, must contain at least one of the token's aud values.
	Audiences []string
	// SubjectClaim names the claim holding the user; "" means "sub".
	SubjectClaim string
}

// JWTValidator checks login tokens from an organisation's identity provider.
// It is immutable after NewJWTValidator, so one value serves all goroutines.
type JWTValidator struct {
	// alg is the canonical algorithm name; key is the verification key of the
	// type golang-jwt expects for it ([]byte, *rsa.PublicKey,
	// *ecdsa.PublicKey or ed25519.PublicKey). Pairing the two at construction
	// is what rules out algorithm confusion: an RSA public key can never be
	// used as an HMAC secret because HS* is never accepted alongside it.
	alg          string
	key          any
	issuer       string
	audiences    []string
	subjectClaim string
}

// canonicalJWTAlg returns the canonical spelling of a supported algorithm
// name given in any case, or "" when it is not supported.
func canonicalJWTAlg(name string) string {
	switch up := strings.ToUpper(strings.TrimSpace(name)); up {
	case "HS256", "HS384", "HS512",
		"RS256", "RS384", "RS512",
		"PS256", "PS384", "PS512",
		"ES256", "ES384", "ES512":
		return up
	case "EDDSA":
		return "EdDSA"
	default:
		return ""
	}
}

// jwtCurve is the curve an ECDSA algorithm is defined for (RFC 7518 3.4).
func jwtCurve(alg string) elliptic.Curve {
	switch alg {
	case "ES256":
		return elliptic.P256()
	case "ES384":
		return elliptic.P384()
	default:
		return elliptic.P521()
	}
}

// NewJWTValidator checks the configuration and loads the verification key.
// The algorithm name is matched case-insensitively. Setting the key the
// algorithm does not use (a secret for RS256, a public key for HS256) is an
// error rather than silently ignored, as it almost always means the operator
// meant a different algorithm.
func NewJWTValidator(c JWTConfig) (*JWTValidator, error) {
	alg := canonicalJWTAlg(c.Algorithm)
	if alg == "" {
		if strings.TrimSpace(c.Algorithm) == "" {
			return nil, errors.New("jwt.algorithm is required")
		}
		return nil, fmt.Errorf("jwt.algorithm %q is not supported (use HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, ES512 or EdDSA)", c.Algorithm)
	}
	v := &JWTValidator{
		alg:          alg,
		issuer:       c.Issuer,
		audiences:    append([]string(nil), c.Audiences...),
		subjectClaim: c.SubjectClaim,
	}
	if v.subjectClaim == "" {
		v.subjectClaim = "sub"
	}
	for i, a := range v.audiences {
		if a == "" {
			return nil, fmt.Errorf("jwt.audiences[%d] is empty", i)
		}
	}

	if strings.HasPrefix(alg, "HS") {
		if c.Secret == "" {
			return nil, fmt.Errorf("jwt.secret is required for %s", alg)
		}
		if c.PublicKey != "" {
			return nil, fmt.Errorf("jwt.public_key is not used with %s (it takes jwt.secret); remove it or change jwt.algorithm", alg)
		}
		v.key = []byte(c.Secret)
		return v, nil
	}

	if c.Secret != "" {
		return nil, fmt.Errorf("jwt.secret is not used with %s (it takes jwt.public_key); remove it or change jwt.algorithm", alg)
	}
	if strings.TrimSpace(c.PublicKey) == "" {
		return nil, fmt.Errorf("jwt.public_key is required for %s", alg)
	}
	pemBytes, err := readJWTPublicKey(c.PublicKey)
	if err != nil {
		return nil, err
	}
	key, err := parseJWTPublicKey(alg, pemBytes)
	if err != nil {
		return nil, fmt.Errorf("jwt.public_key: %w", err)
	}
	v.key = key
	return v, nil
}

// readJWTPublicKey returns the PEM text, reading it from a file when the
// value is not PEM itself.
func readJWTPublicKey(value string) ([]byte, error) {
	trimmed := strings.TrimSpace(value)
	if strings.HasPrefix(trimmed, "-----BEGIN") {
		return []byte(trimmed), nil
	}
	b, err := os.ReadFile(trimmed)
	if err != nil {
		return nil, fmt.Errorf("jwt.public_key: not PEM text, and reading it as a file failed: %w", err)
	}
	return b, nil
}

// parseJWTPublicKey parses the first PEM block (a PKIX "PUBLIC KEY", a
// PKCS#1 "RSA PUBLIC KEY" or a "CERTIFICATE") as the key type alg requires.
func parseJWTPublicKey(alg string, pemBytes []byte) (any, error) {
	block, _ := pem.Decode(pemBytes)
	if block == nil {
		return nil, errors.New("no PEM block found")
	}
	var (
		pub any
		err error
	)
	switch block.Type {
	case "PUBLIC KEY":
		pub, err = x509.ParsePKIXPublicKey(block.Bytes)
	case "RSA PUBLIC KEY":
		pub, err = x509.ParsePKCS1PublicKey(block.Bytes)
	case "CERTIFICATE":
		var cert *x509.Certificate
		if cert, err = x509.ParseCertificate(block.Bytes); err == nil {
			pub = cert.PublicKey
		}
	default:
		// Notably a private key: refuse rather than derive the public half,
		// a private key has no business in the homeserver's configuration.
		return nil, fmt.Errorf("PEM block is %q; want PUBLIC KEY, RSA PUBLIC KEY or CERTIFICATE", block.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("parsing %s: %w", block.Type, err)
	}

	switch alg[:2] {
	case "RS", "PS":
		k, ok := pub.(*rsa.PublicKey)
		if !ok {
			return nil, fmt.Errorf("%s needs an RSA key, got %s", alg, keyKind(pub))
		}
		// RFC 7518 3.3: a key of size 2048 bits or larger MUST be used.
		if k.N.BitLen() < 2048 {
			return nil, fmt.Errorf("%s needs an RSA key of at least 2048 bits, got %d", alg, k.N.BitLen())
		}
		return k, nil
	case "ES":
		k, ok := pub.(*ecdsa.PublicKey)
		if !ok {
			return nil, fmt.Errorf("%s needs an ECDSA key, got %s", alg, keyKind(pub))
		}
		if want := jwtCurve(alg); k.Curve != want {
			return nil, fmt.Errorf("%s needs a %s key, got %s", alg, want.Params().Name, k.Curve.Params().Name)
		}
		return k, nil
	default: // EdDSA; golang-jwt implements it for Ed25519 only
		k, ok := pub.(ed25519.PublicKey)
		if !ok {
			return nil, fmt.Errorf("EdDSA needs an Ed25519 key, got %s", keyKind(pub))
		}
		return k, nil
	}
}

func keyKind(pub any) string {
	switch k := pub.(type) {
	case *rsa.PublicKey:
		return "an RSA key"
	case *ecdsa.PublicKey:
		return "an ECDSA " + k.Curve.Params().Name + " key"
	case ed25519.PublicKey:
		return "an Ed25519 key"
	default:
		return fmt.Sprintf("a %T", pub)
	}
}

// Algorithm returns the canonical name of the accepted algorithm.
func (v *JWTValidator) Algorithm() string { return v.alg }

// Subject validates token as of now and returns the value of the subject
// claim. Checks, in golang-jwt's order: the header names exactly the
// configured algorithm; the signature verifies; exp (optional), nbf and iat
// hold within jwtLeeway; iss equals the configured issuer and aud contains
// one of the configured audiences, each only when configured.
//
// Every error is an M_FORBIDDEN mautrix.RespError with a fixed message: no
// key material and no token contents reach the client.
func (v *JWTValidator) Subject(token string, now time.Time) (string, error) {
	opts := []jwt.ParserOption{
		jwt.WithValidMethods([]string{v.alg}),
		jwt.WithLeeway(jwtLeeway),
		jwt.WithIssuedAt(),
		jwt.WithTimeFunc(func() time.Time { return now }),
	}
	if v.issuer != "" {
		opts = append(opts, jwt.WithIssuer(v.issuer))
	}
	if len(v.audiences) > 0 {
		opts = append(opts, jwt.WithAudience(v.audiences...))
	}
	claims := jwt.MapClaims{}
	// A parser per call: the time function differs between calls, and a
	// Parser's options are not meant to change under concurrent use.
	tok, err := jwt.NewParser(opts...).ParseWithClaims(token, claims, func(t *jwt.Token) (any, error) {
		// WithValidMethods already checked this; checking again keeps the
		// key from ever being handed to a different algorithm.
		if t.Method.Alg() != v.alg {
			return nil, errors.New("unexpected algorithm")
		}
		return v.key, nil
	})
	if err != nil {
		return "", v.forbidden(err, tok, claims)
	}

	raw, ok := claims[v.subjectClaim]
	if !ok || raw == nil {
		return "", jwtForbidden(fmt.Sprintf("JWT has no %s claim", v.subjectClaim))
	}
	sub, ok := raw.(string)
	if !ok {
		return "", jwtForbidden(fmt.Sprintf("JWT %s claim is not a string", v.subjectClaim))
	}
	if sub == "" {
		return "", jwtForbidden(fmt.Sprintf("JWT %s claim is empty", v.subjectClaim))
	}
	return sub, nil
}

// forbidden turns a golang-jwt error into the client-facing error. The
// sentinel checks go from the most to the least fundamental, as golang-jwt
// joins several claim errors into one.
func (v *JWTValidator) forbidden(err error, tok *jwt.Token, claims jwt.MapClaims) error {
	switch {
	case errors.Is(err, jwt.ErrTokenMalformed):
		return jwtForbidden("JWT is malformed")
	case errors.Is(err, jwt.ErrTokenUnverifiable):
		// golang-jwt reports an algorithm it does not implement this way.
		return jwtForbidden("JWT algorithm is not accepted")
	case errors.Is(err, jwt.ErrTokenSignatureInvalid):
		// WithValidMethods reports a refused algorithm as a bad signature;
		// say which it was, since that is an identity provider setup error.
		if tok == nil || tok.Method == nil || tok.Method.Alg() != v.alg {
			return jwtForbidden("JWT algorithm is not accepted")
		}
		return jwtForbidden("JWT signature is invalid")
	case errors.Is(err, jwt.ErrTokenExpired):
		return jwtForbidden("JWT has expired")
	case errors.Is(err, jwt.ErrTokenNotValidYet):
		return jwtForbidden("JWT is not valid yet")
	case errors.Is(err, jwt.ErrTokenUsedBeforeIssued):
		return jwtForbidden("JWT was issued in the future")
	case errors.Is(err, jwt.ErrTokenInvalidIssuer):
		return jwtForbidden("JWT issuer is not accepted")
	case errors.Is(err, jwt.ErrTokenInvalidAudience):
		return jwtForbidden("JWT audience is not accepted")
	case errors.Is(err, jwt.ErrTokenRequiredClaimMissing):
		// golang-jwt treats an empty iss or aud as missing.
		if iss, _ := claims["iss"].(string); v.issuer != "" && iss == "" {
			return jwtForbidden("JWT has no iss claim")
		}
		return jwtForbidden("JWT has no aud claim")
	default:
		// Wrongly typed registered claims (a string exp, a numeric aud).
		return jwtForbidden("JWT claims are invalid")
	}
}

func jwtForbidden(msg string) error {
	return mautrix.MForbidden.WithMessage(msg)
}
