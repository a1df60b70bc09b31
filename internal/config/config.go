// Package config defines Weft's typed configuration: its defaults, how a YAML
// file and WEFT_* environment variables are layered onto them, and the checks
// every value passes before the server starts.
//
// Precedence, lowest first: built-in defaults, the YAML file, environment
// variables. Every key has an environment name derived from its YAML path:
// `database.url` is WEFT_DATABASE_URL, `log.level` is WEFT_LOG_LEVEL.
package config

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/url"
	"os"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
	"maunium.net/go/mautrix/id"
)

// Config is the whole configuration. YAML tags are the file's key names;
// the environment names are derived from them (see envNames).
type Config struct {
	// ServerName is the domain part of every user ID and room alias. It can
	// never change once users exist: storage refuses to start otherwise.
	ServerName string `yaml:"server_name"`
	// Listen is the host:port of the client-server API.
	Listen string `yaml:"listen"`
	// PublicBaseURL is the URL clients reach Listen at (behind a proxy, the
	// proxy's URL). Empty: derived, see Config.BaseURL.
	PublicBaseURL string `yaml:"public_baseurl"`
	// DataDir holds the signing key, media and the embedded PostgreSQL cluster.
	DataDir string `yaml:"data_dir"`

	Log       Log       `yaml:"log"`
	Database  Database  `yaml:"database"`
	HTTP      HTTP      `yaml:"http"`
	WellKnown WellKnown `yaml:"well_known"`
	Support   Support   `yaml:"support"`

	Registration  Registration  `yaml:"registration"`
	Passwords     Passwords     `yaml:"passwords"`
	Login         Login         `yaml:"login"`
	JWT           JWT           `yaml:"jwt"`
	RateLimits    RateLimits    `yaml:"rate_limits"`
	UserDirectory UserDirectory `yaml:"user_directory"`
	TURN          TURN          `yaml:"turn"`
	Presence      Presence      `yaml:"presence"`
	Media         Media         `yaml:"media"`
	Push          Push          `yaml:"push"`
}

// Push configures push notifications: delivery of users' notifications to
// the push gateways their pushers name (POST /_matrix/push/v1/notify).
type Push struct {
	// Enabled delivers notifications to pushers. Off: clients can still
	// set pushers, but nothing is sent.
	Enabled bool `yaml:"enabled"`
	// GatewayAllowedCIDRs are ranges push gateways may be reached at
	// although they are not public (a gateway on the organisation's
	// network); every other non-global address is refused.
	GatewayAllowedCIDRs []string `yaml:"gateway_allowed_cidrs"`
	// GatewayTimeout bounds one request to a gateway.
	GatewayTimeout Duration `yaml:"gateway_timeout"`
	// Workers is how many users' notifications are sent at once.
	Workers int `yaml:"workers"`
	// MaxBackoff caps the wait between retries to a failing gateway (the
	// wait starts at 1s and doubles).
	MaxBackoff Duration `yaml:"max_backoff"`
	// GiveUpAfter: a notification still failing this long after its first
	// attempt is dropped (logged) and the next one is tried.
	GiveUpAfter Duration `yaml:"give_up_after"`
}

// Media configures the media repository (uploads, downloads, thumbnails).
// Content is stored under data_dir/media.
type Media struct {
	// MaxUploadSize is the largest file accepted, in bytes (M_TOO_LARGE
	// above it). Uploads are exempt from http.max_body_bytes.
	MaxUploadSize int64 `yaml:"max_upload_size"`
	// UserQuota is the most bytes one user may upload in total; 0: no quota.
	UserQuota int64 `yaml:"user_quota"`
	// MaxPendingUploads bounds the media IDs a user has created for
	// asynchronous upload and not yet filled.
	MaxPendingUploads int `yaml:"max_pending_uploads"`
	// UnusedExpiry is how long such an ID waits for its content.
	UnusedExpiry Duration `yaml:"unused_expiry"`
	// MaxImagePixels: larger images are never decoded (no thumbnails).
	MaxImagePixels int64 `yaml:"max_image_pixels"`
	// ThumbnailSizes are precomputed for every image upload.
	ThumbnailSizes []ThumbnailSize `yaml:"thumbnail_sizes"`
	// FreezeUnauthenticated serves media uploaded while it is set only on
	// the authenticated endpoints (spec v1.11): the legacy
	// /_matrix/media/v3/download and thumbnail answer 404 for it.
	FreezeUnauthenticated bool       `yaml:"freeze_unauthenticated"`
	URLPreview            URLPreview `yaml:"url_preview"`
}

// ThumbnailSize is one precomputed thumbnail size.
type ThumbnailSize struct {
	Width  int    `yaml:"width"`
	Height int    `yaml:"height"`
	Method string `yaml:"method"` // crop or scale
}

// URLPreview configures GET /_matrix/client/v1/media/preview_url.
type URLPreview struct {
	Enabled bool `yaml:"enabled"`
	// Timeout bounds fetching one URL, redirects included.
	Timeout Duration `yaml:"timeout"`
	// MaxBytes bounds the bytes read from one URL.
	MaxBytes int64 `yaml:"max_bytes"`
	// IPRangeAllowlist lists CIDRs previews may reach although they are
	// private (an intranet wiki); everything non-public is refused otherwise.
	IPRangeAllowlist []string `yaml:"ip_range_allowlist"`
}

// Presence controls when users who stop using their clients are shown as
// away (unavailable) or offline.
type Presence struct {
	// IdleAfter: an online user with no activity (no /sync with
	// set_presence=online, no presence update) for this long becomes
	// unavailable.
	IdleAfter Duration `yaml:"idle_after"`
	// OfflineAfter: a user none of whose clients has been syncing for this
	// long becomes offline.
	OfflineAfter Duration `yaml:"offline_after"`
}

// Registration controls who may create accounts.
type Registration struct {
	// Mode is disabled, open (m.login.dummy) or token (m.login.registration_token).
	Mode string `yaml:"mode"`
	// SharedSecret enables Synapse-compatible /_synapse/admin/v1/register.
	SharedSecret string `yaml:"shared_secret"`
	// AllowGuests lets kind=guest register guest accounts.
	AllowGuests bool `yaml:"allow_guests"`
}

// Passwords is the password policy and hashing cost.
type Passwords struct {
	MinLength     int  `yaml:"min_length"`
	RequireDigit  bool `yaml:"require_digit"`
	RequireSymbol bool `yaml:"require_symbol"`
	RequireLower  bool `yaml:"require_lowercase"`
	RequireUpper  bool `yaml:"require_uppercase"`
	BcryptCost    int  `yaml:"bcrypt_cost"`
}

// Login configures sessions and brute-force protection.
type Login struct {
	// AccessTokenLifetime applies to clients that asked for a refresh token.
	AccessTokenLifetime Duration `yaml:"access_token_lifetime"`
	// After MaxFailures failed password logins within FailureWindow, the
	// account refuses logins for LockDuration.
	MaxFailures   int      `yaml:"max_failures"`
	FailureWindow Duration `yaml:"failure_window"`
	LockDuration  Duration `yaml:"lock_duration"`
}

// JWT configures org.matrix.login.jwt, for an organisation's identity provider.
type JWT struct {
	Enabled bool `yaml:"enabled"`
	// Secret is the HMAC key (HS256/384/512).
	Secret string `yaml:"secret"`
	// PublicKey is a PEM public key (RS*, PS*, ES*, EdDSA), inline or a file path.
	PublicKey string   `yaml:"public_key"`
	Algorithm string   `yaml:"algorithm"`
	Issuer    string   `yaml:"issuer"`
	Audiences []string `yaml:"audiences"`
	// SubjectClaim holds the user's localpart (or full user ID on this server).
	SubjectClaim string `yaml:"subject_claim"`
	// AutoProvision creates the account on its first login.
	AutoProvision bool `yaml:"auto_provision"`
}

// RateLimits are token buckets answered with M_LIMIT_EXCEEDED.
type RateLimits struct {
	Enabled bool `yaml:"enabled"`
	// Login and Register are per client IP.
	Login    Bucket `yaml:"login"`
	Register Bucket `yaml:"register"`
	// Writes are per user, on every authenticated POST/PUT/DELETE.
	Writes Bucket `yaml:"writes"`
	// ExemptAdmins exempts server admins from the per-user limits.
	ExemptAdmins bool `yaml:"exempt_admins"`
	// ExemptUsers lists user IDs (bots, bridges) exempt from per-user limits.
	ExemptUsers []string `yaml:"exempt_users"`
}

// Bucket is a token bucket: PerSecond tokens refill, Burst at most.
type Bucket struct {
	PerSecond float64 `yaml:"per_second"`
	Burst     int     `yaml:"burst"`
}

// UserDirectory controls who appears in user directory searches.
type UserDirectory struct {
	// SearchAllUsers includes every local user, not only those sharing a room.
	SearchAllUsers bool `yaml:"search_all_users"`
}

// TURN configures VoIP relay credentials (coturn's REST API scheme).
type TURN struct {
	URIs         []string `yaml:"uris"`
	SharedSecret string   `yaml:"shared_secret"`
	// Lifetime of the credentials handed out.
	Lifetime Duration `yaml:"lifetime"`
}

// Log configures the structured logger.
type Log struct {
	Level  string `yaml:"level"`  // debug, info, warn, error
	Format string `yaml:"format"` // text or json
}

// Database selects the PostgreSQL server.
type Database struct {
	// URL of an external PostgreSQL server. Empty: run the embedded cluster.
	URL      string   `yaml:"url"`
	MaxConns int      `yaml:"max_conns"`
	Embedded Embedded `yaml:"embedded"`
}

// Embedded configures the private PostgreSQL cluster used when Database.URL
// is empty.
type Embedded struct {
	// BinDir holds initdb and postgres. Empty: pg_config --bindir, then the
	// usual Debian and Homebrew locations.
	BinDir string `yaml:"bin_dir"`
	// RunAs is the system account that owns and runs the cluster when Weft
	// itself runs as root (PostgreSQL refuses to run as root).
	RunAs string `yaml:"run_as"`
}

// HTTP configures the client-server listener.
type HTTP struct {
	// MaxBodyBytes caps every request body; larger bodies get M_TOO_LARGE.
	MaxBodyBytes int64 `yaml:"max_body_bytes"`
	// ShutdownGrace is how long in-flight requests may run after SIGTERM.
	ShutdownGrace Duration `yaml:"shutdown_grace"`
	// ReadHeaderTimeout bounds slow-header clients.
	ReadHeaderTimeout Duration `yaml:"read_header_timeout"`
	// TrustedProxies are the reverse proxies (IPs or CIDRs) whose
	// X-Forwarded-For is believed, so rate limits and device IPs see the
	// client's address instead of the proxy's.
	TrustedProxies []string `yaml:"trusted_proxies"`
}

// WellKnown configures the /.well-known/matrix documents.
type WellKnown struct {
	// Server is the m.server delegation (host:port of the federation API)
	// served at /.well-known/matrix/server. Empty: that document is 404.
	Server string `yaml:"server"`
}

// Support is served at /.well-known/matrix/support (spec v1.10).
type Support struct {
	Page     string    `yaml:"page"`
	Contacts []Contact `yaml:"contacts"`
}

// Contact is one way to reach the operator.
type Contact struct {
	MatrixID string `yaml:"matrix_id"`
	Email    string `yaml:"email_address"`
	Role     string `yaml:"role"`
}

// Duration is a time.Duration written as "30s", "5m" in YAML and env.
type Duration time.Duration

// UnmarshalYAML parses a Go duration string.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	var s string
	if err := n.Decode(&s); err != nil {
		return err
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("%q is not a duration like 30s or 5m", s)
	}
	*d = Duration(v)
	return nil
}

// MarshalYAML writes the duration back as a string.
func (d Duration) MarshalYAML() (any, error) { return time.Duration(d).String(), nil }

// Default returns the configuration used when nothing is configured.
func Default() Config {
	return Config{
		ServerName: "localhost",
		Listen:     "127.0.0.1:8008",
		DataDir:    "./weft-data",
		Log:        Log{Level: "info", Format: "text"},
		Database: Database{
			MaxConns: 20,
			Embedded: Embedded{RunAs: "postgres"},
		},
		HTTP: HTTP{
			MaxBodyBytes:      10 << 20,
			ShutdownGrace:     Duration(10 * time.Second),
			ReadHeaderTimeout: Duration(10 * time.Second),
		},
		Registration: Registration{Mode: "disabled"},
		Passwords:    Passwords{MinLength: 10, BcryptCost: 12},
		Login: Login{
			AccessTokenLifetime: Duration(time.Hour),
			MaxFailures:         10,
			FailureWindow:       Duration(15 * time.Minute),
			LockDuration:        Duration(15 * time.Minute),
		},
		JWT: JWT{Algorithm: "HS256", SubjectClaim: "sub"},
		RateLimits: RateLimits{
			Enabled:      true,
			Login:        Bucket{PerSecond: 0.2, Burst: 5},
			Register:     Bucket{PerSecond: 0.1, Burst: 3},
			Writes:       Bucket{PerSecond: 10, Burst: 50},
			ExemptAdmins: true,
		},
		TURN:     TURN{Lifetime: Duration(24 * time.Hour)},
		Presence: Presence{IdleAfter: Duration(5 * time.Minute), OfflineAfter: Duration(2 * time.Minute)},
		Media: Media{
			MaxUploadSize:     100 << 20,
			MaxPendingUploads: 10,
			UnusedExpiry:      Duration(24 * time.Hour),
			MaxImagePixels:    32_000_000,
			ThumbnailSizes: []ThumbnailSize{
				{Width: 32, Height: 32, Method: "crop"},
				{Width: 96, Height: 96, Method: "crop"},
				{Width: 320, Height: 240, Method: "scale"},
				{Width: 640, Height: 480, Method: "scale"},
				{Width: 800, Height: 600, Method: "scale"},
			},
			FreezeUnauthenticated: true,
			URLPreview: URLPreview{
				Timeout:  Duration(10 * time.Second),
				MaxBytes: 10 << 20,
			},
		},
		Push: Push{
			Enabled:             true,
			GatewayAllowedCIDRs: []string{},
			GatewayTimeout:      Duration(10 * time.Second),
			Workers:             8,
			MaxBackoff:          Duration(10 * time.Minute),
			GiveUpAfter:         Duration(24 * time.Hour),
		},
	}
}

// Load builds the configuration from the defaults, the YAML file at path
// (skipped when path is empty) and the WEFT_* variables in environ
// (os.Environ() form), then validates it. Errors name the offending key.
func Load(path string, environ []string) (*Config, error) {
	cfg := Default()
	if path != "" {
		raw, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("reading config file: %w", err)
		}
		if err := decodeYAML(raw, &cfg); err != nil {
			return nil, fmt.Errorf("config file %s: %w", path, err)
		}
	}
	if err := applyEnv(&cfg, environ); err != nil {
		return nil, err
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &cfg, nil
}

// decodeYAML decodes strictly: an unknown key is an error naming it.
func decodeYAML(raw []byte, cfg *Config) error {
	dec := yaml.NewDecoder(strings.NewReader(string(raw)))
	dec.KnownFields(true)
	if err := dec.Decode(cfg); err != nil {
		if errors.Is(err, io.EOF) {
			return nil // an empty file means defaults
		}
		return err
	}
	return nil
}

// Validate checks every value and names the key of the first bad one.
func (c *Config) Validate() error {
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("config key %s: %s", key, fmt.Sprintf(format, args...)))
	}
	if err := validServerName(c.ServerName); err != nil {
		bad("server_name", "%v", err)
	}
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		bad("listen", "%q is not host:port", c.Listen)
	}
	if c.PublicBaseURL != "" {
		if u, err := url.Parse(c.PublicBaseURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			bad("public_baseurl", "%q is not an http(s) URL", c.PublicBaseURL)
		}
	}
	if c.DataDir == "" {
		bad("data_dir", "must not be empty")
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		bad("log.level", "%q is not one of debug, info, warn, error", c.Log.Level)
	}
	switch c.Log.Format {
	case "text", "json":
	default:
		bad("log.format", "%q is not one of text, json", c.Log.Format)
	}
	if c.Database.URL != "" {
		if u, err := url.Parse(c.Database.URL); err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
			bad("database.url", "must be a postgres:// URL")
		}
	}
	if c.Database.MaxConns < 2 || c.Database.MaxConns > 1000 {
		bad("database.max_conns", "%d is outside 2..1000", c.Database.MaxConns)
	}
	if c.HTTP.MaxBodyBytes < 1024 {
		bad("http.max_body_bytes", "%d is below 1024", c.HTTP.MaxBodyBytes)
	}
	if c.HTTP.ShutdownGrace < 0 {
		bad("http.shutdown_grace", "must not be negative")
	}
	if c.HTTP.ReadHeaderTimeout <= 0 {
		bad("http.read_header_timeout", "must be positive")
	}
	if _, err := c.HTTP.TrustedPrefixes(); err != nil {
		bad("http.trusted_proxies", "%v", err)
	}
	if c.WellKnown.Server != "" {
		if err := validServerName(c.WellKnown.Server); err != nil {
			bad("well_known.server", "%v", err)
		}
	}
	if c.Support.Page != "" {
		if u, err := url.Parse(c.Support.Page); err != nil || u.Scheme == "" || u.Host == "" {
			bad("support.page", "%q is not an absolute URL", c.Support.Page)
		}
	}
	for i, ct := range c.Support.Contacts {
		key := fmt.Sprintf("support.contacts[%d]", i)
		if ct.MatrixID == "" && ct.Email == "" {
			bad(key, "needs matrix_id or email_address")
		}
		if ct.MatrixID != "" {
			if _, _, err := id.UserID(ct.MatrixID).ParseAndValidateRelaxed(); err != nil {
				bad(key+".matrix_id", "%q is not a Matrix user ID", ct.MatrixID)
			}
		}
		if ct.Email != "" && !strings.Contains(ct.Email, "@") {
			bad(key+".email_address", "%q is not an email address", ct.Email)
		}
		if ct.Role == "" {
			bad(key+".role", "is required (m.role.admin or m.role.security)")
		}
	}
	switch c.Registration.Mode {
	case "disabled", "open", "token":
	default:
		bad("registration.mode", "%q is not one of disabled, open, token", c.Registration.Mode)
	}
	if c.Passwords.MinLength < 0 || c.Passwords.MinLength > 1024 {
		bad("passwords.min_length", "%d is outside 0..1024", c.Passwords.MinLength)
	}
	if c.Passwords.BcryptCost < 4 || c.Passwords.BcryptCost > 31 {
		bad("passwords.bcrypt_cost", "%d is outside 4..31", c.Passwords.BcryptCost)
	}
	if c.Login.AccessTokenLifetime < Duration(time.Minute) {
		bad("login.access_token_lifetime", "must be at least 1m")
	}
	if c.Login.MaxFailures < 0 {
		bad("login.max_failures", "must not be negative (0 disables lockout)")
	}
	if c.Login.MaxFailures > 0 && (c.Login.FailureWindow <= 0 || c.Login.LockDuration <= 0) {
		bad("login.failure_window", "failure_window and lock_duration must be positive when max_failures is set")
	}
	if c.JWT.Enabled {
		switch {
		case strings.HasPrefix(c.JWT.Algorithm, "HS"):
			if c.JWT.Secret == "" {
				bad("jwt.secret", "is required for %s", c.JWT.Algorithm)
			}
		case c.JWT.Algorithm == "":
			bad("jwt.algorithm", "is required")
		default:
			if c.JWT.PublicKey == "" {
				bad("jwt.public_key", "is required for %s", c.JWT.Algorithm)
			}
		}
		if c.JWT.SubjectClaim == "" {
			bad("jwt.subject_claim", "must not be empty")
		}
	}
	for name, b := range map[string]Bucket{"login": c.RateLimits.Login, "register": c.RateLimits.Register, "writes": c.RateLimits.Writes} {
		if c.RateLimits.Enabled && (b.PerSecond <= 0 || b.Burst < 1) {
			bad("rate_limits."+name, "per_second must be positive and burst at least 1")
		}
	}
	for i, u := range c.RateLimits.ExemptUsers {
		if _, _, err := id.UserID(u).ParseAndValidateRelaxed(); err != nil {
			bad(fmt.Sprintf("rate_limits.exempt_users[%d]", i), "%q is not a Matrix user ID", u)
		}
	}
	if len(c.TURN.URIs) > 0 && c.TURN.SharedSecret == "" {
		bad("turn.shared_secret", "is required when turn.uris is set")
	}
	if c.TURN.Lifetime <= 0 {
		bad("turn.lifetime", "must be positive")
	}
	if c.Presence.IdleAfter < Duration(time.Second) {
		bad("presence.idle_after", "must be at least 1s")
	}
	if c.Presence.OfflineAfter < Duration(time.Second) {
		bad("presence.offline_after", "must be at least 1s")
	}
	c.Media.validate(bad)
	c.Push.validate(bad)
	return errors.Join(errs...)
}

func (p *Push) validate(bad func(key, format string, args ...any)) {
	if _, err := p.AllowedPrefixes(); err != nil {
		bad("push.gateway_allowed_cidrs", "%v", err)
	}
	if p.GatewayTimeout <= 0 {
		bad("push.gateway_timeout", "must be positive")
	}
	if p.Workers < 1 || p.Workers > 1000 {
		bad("push.workers", "%d is outside 1..1000", p.Workers)
	}
	if p.MaxBackoff < Duration(time.Second) {
		bad("push.max_backoff", "must be at least 1s")
	}
	if p.GiveUpAfter < p.MaxBackoff {
		bad("push.give_up_after", "must be at least max_backoff")
	}
}

// AllowedPrefixes parses GatewayAllowedCIDRs (a bare IP is one address).
func (p Push) AllowedPrefixes() ([]netip.Prefix, error) {
	return HTTP{TrustedProxies: p.GatewayAllowedCIDRs}.TrustedPrefixes()
}

// maxThumbnailSide bounds configured thumbnail sides: a thumbnail is for
// showing small, and each size is made for every image upload.
const maxThumbnailSide = 4096

func (m *Media) validate(bad func(key, format string, args ...any)) {
	if m.MaxUploadSize < 1 {
		bad("media.max_upload_size", "must be at least 1 byte")
	}
	if m.UserQuota < 0 {
		bad("media.user_quota", "must not be negative (0: no quota)")
	}
	if m.MaxPendingUploads < 1 {
		bad("media.max_pending_uploads", "must be at least 1")
	}
	if m.UnusedExpiry < Duration(time.Second) {
		bad("media.unused_expiry", "must be at least 1s")
	}
	if m.MaxImagePixels < 1 {
		bad("media.max_image_pixels", "must be at least 1")
	}
	for i, sz := range m.ThumbnailSizes {
		key := fmt.Sprintf("media.thumbnail_sizes[%d]", i)
		if sz.Width < 1 || sz.Height < 1 || sz.Width > maxThumbnailSide || sz.Height > maxThumbnailSide {
			bad(key, "width and height must be within 1..%d, got %dx%d", maxThumbnailSide, sz.Width, sz.Height)
		}
		if sz.Method != "crop" && sz.Method != "scale" {
			bad(key+".method", "%q is not crop or scale", sz.Method)
		}
	}
	if m.URLPreview.Timeout <= 0 {
		bad("media.url_preview.timeout", "must be positive")
	}
	if m.URLPreview.MaxBytes < 1024 {
		bad("media.url_preview.max_bytes", "%d is below 1024", m.URLPreview.MaxBytes)
	}
	if _, err := m.URLPreview.AllowedPrefixes(); err != nil {
		bad("media.url_preview.ip_range_allowlist", "%v", err)
	}
}

// AllowedPrefixes parses IPRangeAllowlist (a bare IP is a single address).
func (u URLPreview) AllowedPrefixes() ([]netip.Prefix, error) {
	// The same grammar as http.trusted_proxies.
	return HTTP{TrustedProxies: u.IPRangeAllowlist}.TrustedPrefixes()
}

// BaseURL is the client-facing URL of this server: public_baseurl when set;
// otherwise http://listen for a loopback listener (a developer's machine) and
// https://server_name for anything else (the usual reverse-proxy setup).
func (c *Config) BaseURL() string {
	if c.PublicBaseURL != "" {
		return strings.TrimSuffix(c.PublicBaseURL, "/")
	}
	host, _, _ := net.SplitHostPort(c.Listen)
	if ip := net.ParseIP(host); host == "localhost" || (ip != nil && ip.IsLoopback()) {
		return "http://" + c.Listen
	}
	return "https://" + c.ServerName
}

// validServerName checks the spec's server name grammar: a DNS name, IPv4
// literal or bracketed IPv6 literal, with an optional port.
func validServerName(s string) error {
	if s == "" {
		return errors.New("must not be empty")
	}
	host := s
	if h, port, err := net.SplitHostPort(s); err == nil {
		host = h
		if port == "" {
			return fmt.Errorf("%q has an empty port", s)
		}
		if strings.Contains(s, "[") {
			host = "[" + h + "]"
		}
	}
	if strings.HasPrefix(host, "[") {
		if !strings.HasSuffix(host, "]") || net.ParseIP(host[1:len(host)-1]) == nil {
			return fmt.Errorf("%q is not a valid IPv6 literal", s)
		}
		return nil
	}
	if len(host) > 255 {
		return fmt.Errorf("%q is longer than 255 characters", s)
	}
	for _, r := range host {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '.') {
			return fmt.Errorf("%q has the character %q, not allowed in a server name", s, r)
		}
	}
	return nil
}

// TrustedPrefixes parses TrustedProxies (a bare IP is a single-address prefix).
func (h HTTP) TrustedPrefixes() ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range h.TrustedProxies {
		if p, err := netip.ParsePrefix(s); err == nil {
			out = append(out, p.Masked())
			continue
		}
		a, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("%q is not an IP address or CIDR", s)
		}
		out = append(out, netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()))
	}
	return out, nil
}
