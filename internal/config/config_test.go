package config_test

import (
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/weftchat/weft"
	"github.com/weftchat/weft/internal/config"
)

func writeFile(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "weft.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// The sample documents the defaults: loading it must give exactly Default().
func TestSampleLoadsToDefaults(t *testing.T) {
	p := writeFile(t, string(weft.SampleConfig()))
	cfg, err := config.Load(p, nil)
	if err != nil {
		t.Fatalf("sample config does not load: %v", err)
	}
	def := config.Default()
	// The sample writes explicit empty lists.
	def.Support.Contacts = []config.Contact{}
	def.JWT.Audiences = []string{}
	def.RateLimits.ExemptUsers = []string{}
	def.TURN.URIs = []string{}
	def.HTTP.TrustedProxies = []string{}
	def.Media.URLPreview.IPRangeAllowlist = []string{}
	if !reflect.DeepEqual(*cfg, def) {
		t.Fatalf("sample differs from defaults:\nsample:  %+v\ndefault: %+v", *cfg, def)
	}
}

// Every key the struct has must be documented in the sample.
func TestSampleDocumentsEveryKey(t *testing.T) {
	var doc map[string]any
	if err := yaml.Unmarshal(weft.SampleConfig(), &doc); err != nil {
		t.Fatal(err)
	}
	var keys []string
	var walk func(prefix string, m map[string]any)
	walk = func(prefix string, m map[string]any) {
		for k, v := range m {
			if sub, ok := v.(map[string]any); ok {
				walk(prefix+k+".", sub)
				continue
			}
			keys = append(keys, prefix+k)
		}
	}
	walk("", doc)
	for _, env := range config.EnvVariables() {
		key := strings.ToLower(strings.TrimPrefix(env, config.EnvPrefix))
		found := slices.ContainsFunc(keys, func(k string) bool { return strings.ReplaceAll(k, ".", "_") == key })
		if !found {
			t.Errorf("%s has no key in config.sample.yaml", env)
		}
	}
	if !slices.Contains(keys, "support.contacts") {
		t.Errorf("support.contacts is not documented")
	}
}

func TestNoFileGivesDefaults(t *testing.T) {
	cfg, err := config.Load("", nil)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.ServerName != "localhost" || cfg.Listen != "127.0.0.1:8008" || cfg.DataDir != "./weft-data" {
		t.Fatalf("unexpected defaults: %+v", cfg)
	}
	if got := cfg.BaseURL(); got != "http://127.0.0.1:8008" {
		t.Fatalf("BaseURL = %q", got)
	}
}

func TestUnknownKeyIsRejectedByName(t *testing.T) {
	p := writeFile(t, "server_name: example.org\ndatabase:\n  urll: postgres://x\n")
	_, err := config.Load(p, nil)
	if err == nil || !strings.Contains(err.Error(), "urll") {
		t.Fatalf("want error naming urll, got %v", err)
	}
}

func TestInvalidValuesAreRejectedByKey(t *testing.T) {
	cases := map[string]string{
		"log: {level: loud}":                          "log.level",
		"listen: nonsense":                            "listen",
		"server_name: 'bad name'":                     "server_name",
		"database: {url: 'mysql://x'}":                "database.url",
		"database: {max_conns: 1}":                    "database.max_conns",
		"http: {shutdown_grace: soon}":                "soon",
		"support: {contacts: [{role: m.role.admin}]}": "support.contacts[0]",
		"support: {page: 'not a url'}":                "support.page",
		"public_baseurl: ftp://x":                     "public_baseurl",
		"well_known: {server: 'a b'}":                 "well_known.server",
	}
	for body, want := range cases {
		_, err := config.Load(writeFile(t, body), nil)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: want error naming %s, got %v", body, want, err)
		}
	}
}

func TestEnvironmentOverridesFile(t *testing.T) {
	p := writeFile(t, "server_name: file.example\nlisten: 127.0.0.1:9000\nhttp: {shutdown_grace: 3s}\n")
	cfg, err := config.Load(p, []string{
		"WEFT_SERVER_NAME=env.example",
		"WEFT_DATABASE_URL=postgres://u@h/db",
		"WEFT_HTTP_SHUTDOWN_GRACE=1m",
		"WEFT_DATABASE_MAX_CONNS=7",
		"WEFT_TEST_DATABASE_URL=ignored",
		"PATH=/bin",
	})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.ServerName != "env.example" || cfg.Listen != "127.0.0.1:9000" ||
		cfg.Database.URL != "postgres://u@h/db" || time.Duration(cfg.HTTP.ShutdownGrace) != time.Minute ||
		cfg.Database.MaxConns != 7 {
		t.Fatalf("env not applied: %+v", cfg)
	}
}

func TestOperatorContractNames(t *testing.T) {
	vars := config.EnvVariables()
	for _, want := range []string{"WEFT_SERVER_NAME", "WEFT_LISTEN", "WEFT_DATABASE_URL", "WEFT_DATA_DIR", "WEFT_LOG_LEVEL",
		"WEFT_REGISTRATION_MODE", "WEFT_REGISTRATION_SHARED_SECRET", "WEFT_RATE_LIMITS_ENABLED"} {
		if !slices.Contains(vars, want) {
			t.Errorf("%s missing from %v", want, vars)
		}
	}
}

func TestBadEnvironment(t *testing.T) {
	for env, want := range map[string]string{
		"WEFT_SERVR_NAME=x":           "WEFT_SERVR_NAME",
		"WEFT_DATABASE_MAX_CONNS=ten": "database.max_conns",
		"WEFT_LOG_LEVEL=loud":         "log.level",
	} {
		_, err := config.Load("", []string{env})
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: want error naming %s, got %v", env, want, err)
		}
	}
}
