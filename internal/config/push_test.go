package config_test

import (
	"strings"
	"testing"
	"time"

	"github.com/weftchat/weft/internal/config"
)

func TestPushDefaults(t *testing.T) {
	cfg, err := config.Load("", nil)
	if err != nil {
		t.Fatal(err)
	}
	p := cfg.Push
	if !p.Enabled || len(p.GatewayAllowedCIDRs) != 0 || time.Duration(p.GatewayTimeout) != 10*time.Second ||
		p.Workers != 8 || time.Duration(p.MaxBackoff) != 10*time.Minute || time.Duration(p.GiveUpAfter) != 24*time.Hour {
		t.Fatalf("push defaults: %+v", p)
	}
}

func TestPushFromFileAndEnvironment(t *testing.T) {
	p := writeFile(t, `
push:
  enabled: false
  gateway_allowed_cidrs: ["10.1.0.0/16"]
  max_backoff: 30s
`)
	cfg, err := config.Load(p, []string{
		"WEFT_PUSH_GATEWAY_ALLOWED_CIDRS=127.0.0.1,::1/128",
		"WEFT_PUSH_GATEWAY_TIMEOUT=3s",
		"WEFT_PUSH_WORKERS=2",
		"WEFT_PUSH_GIVE_UP_AFTER=1h",
	})
	if err != nil {
		t.Fatal(err)
	}
	c := cfg.Push
	if c.Enabled || time.Duration(c.GatewayTimeout) != 3*time.Second || c.Workers != 2 ||
		time.Duration(c.MaxBackoff) != 30*time.Second || time.Duration(c.GiveUpAfter) != time.Hour {
		t.Fatalf("push config not applied: %+v", c)
	}
	prefixes, err := c.AllowedPrefixes()
	if err != nil || len(prefixes) != 2 || prefixes[0].String() != "127.0.0.1/32" || prefixes[1].String() != "::1/128" {
		t.Fatalf("allowed CIDRs %v %v", prefixes, err)
	}
}

func TestPushInvalidValuesAreRejectedByKey(t *testing.T) {
	cases := map[string]string{
		"push: {gateway_allowed_cidrs: [intranet]}":   "push.gateway_allowed_cidrs",
		"push: {gateway_timeout: 0s}":                 "push.gateway_timeout",
		"push: {workers: 0}":                          "push.workers",
		"push: {max_backoff: 10ms}":                   "push.max_backoff",
		"push: {max_backoff: 1h, give_up_after: 30m}": "push.give_up_after",
		"push: {gateway_allow: ['10.0.0.0/8']}":       "gateway_allow",
	}
	for body, want := range cases {
		_, err := config.Load(writeFile(t, body), nil)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: want error naming %s, got %v", body, want, err)
		}
	}
}
