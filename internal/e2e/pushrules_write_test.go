package e2e

import (
	"context"
	"encoding/json"
	"net/http"
	"slices"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
)

// TestPushRulesWrite drives the write side of the push rules API: user
// rules of each kind with before/after, enabling and changing the actions
// of server-default rules, deletion, the errors the spec lists, and the new
// ruleset reaching /sync as m.push_rules account data.
func TestPushRulesWrite(t *testing.T) {
	srv := startAccounts(t, nil)
	cli := registerUser(t, srv, "pushwriter", "push rules password")
	ctx := context.Background()
	rule := func(kind, ruleID string, suffix ...string) string {
		return clientURL(srv, "v3", append([]string{"pushrules", "global", kind, ruleID}, suffix...)...)
	}
	put := func(url string, body any) rawResponse { return doJSON(t, "PUT", url, cli.AccessToken, body) }
	ids := func(kind string) []string {
		all := doJSON(t, "GET", clientURL(srv, "v3", "pushrules", ""), cli.AccessToken, nil)
		all.wantOK(t)
		specValidate(t, all.Body, "pushrules.yaml", "/pushrules/", "get", "200")
		return pushRuleIDs(t, dig(all.Body, "global", kind))
	}

	// Content rules: user rules come before the server default, in the
	// order before/after ask for.
	put(rule("content", "cake"), map[string]any{"pattern": "cake", "actions": []any{"notify", map[string]any{"set_tweak": "sound", "value": "cakealarm.wav"}}}).wantOK(t)
	put(rule("content", "lie")+"?before=cake", map[string]any{"pattern": "cake*lie", "actions": []any{"notify"}}).wantOK(t)
	put(rule("content", "tea")+"?after=cake", map[string]any{"pattern": "tea", "actions": []any{"notify"}}).wantOK(t)
	if got, want := ids("content"), []string{"lie", "cake", "tea", ".m.rule.contains_user_name"}; !slices.Equal(got, want) {
		t.Errorf("content rules %v, want %v", got, want)
	}
	got := doJSON(t, "GET", rule("content", "cake"), cli.AccessToken, nil)
	got.wantOK(t)
	specValidate(t, got.Body, "pushrules.yaml", "/pushrules/global/{kind}/{ruleId}", "get", "200")
	if w := `{"actions":["notify",{"set_tweak":"sound","value":"cakealarm.wav"}],"default":false,"enabled":true,"pattern":"cake","rule_id":"cake"}`; pushRuleJSON(t, got.Body) != w {
		t.Errorf("content rule cake: %s, want %s", got.Raw, w)
	}

	// An override rule goes after .m.rule.master and before the other
	// server-default overrides.
	put(rule("override", "beer"), map[string]any{
		"conditions": []any{map[string]any{"kind": "event_match", "key": "content.body", "pattern": "beer"}, map[string]any{"kind": "room_member_count", "is": "<=10"}},
		"actions":    []any{"notify"},
	}).wantOK(t)
	if o := ids("override"); len(o) < 3 || o[0] != ".m.rule.master" || o[1] != "beer" {
		t.Errorf("override rules %v: want .m.rule.master, then beer", o)
	}

	// Room and sender rules.
	roomID := createRoom(t, cli, &mautrix.ReqCreateRoom{Preset: "private_chat"})
	put(rule("room", string(roomID)), map[string]any{"actions": []any{}}).wantOK(t)
	put(rule("sender", "@spambot:example.org"), map[string]any{"actions": []any{}}).wantOK(t)
	if r, s := ids("room"), ids("sender"); !slices.Equal(r, []string{string(roomID)}) || !slices.Equal(s, []string{"@spambot:example.org"}) {
		t.Errorf("room rules %v, sender rules %v", r, s)
	}

	// Server-default rules: enabled and actions can change, nothing else.
	put(rule("override", ".m.rule.master", "enabled"), map[string]any{"enabled": true}).wantOK(t)
	en := doJSON(t, "GET", rule("override", ".m.rule.master", "enabled"), cli.AccessToken, nil)
	if en.wantOK(t); string(en.Raw) != `{"enabled":true}` {
		t.Errorf("master enabled after PUT: %s", en.Raw)
	}
	put(rule("underride", ".m.rule.message", "actions"), map[string]any{"actions": []any{"notify", map[string]any{"set_tweak": "sound", "value": "default"}}}).wantOK(t)
	act := doJSON(t, "GET", rule("underride", ".m.rule.message", "actions"), cli.AccessToken, nil)
	if act.wantOK(t); string(act.Raw) != `{"actions":["notify",{"set_tweak":"sound","value":"default"}]}` {
		t.Errorf("message actions after PUT: %s", act.Raw)
	}
	// Historical actions are dropped.
	put(rule("content", "tea", "actions"), map[string]any{"actions": []any{"dont_notify"}}).wantOK(t)
	act = doJSON(t, "GET", rule("content", "tea", "actions"), cli.AccessToken, nil)
	if act.wantOK(t); string(act.Raw) != `{"actions":[]}` {
		t.Errorf("actions [dont_notify] read back as %s, want []", act.Raw)
	}
	put(rule("content", "tea", "enabled"), map[string]any{"enabled": false}).wantOK(t)

	// Errors.
	for _, c := range []struct {
		what    string
		r       rawResponse
		status  int
		errcode string
	}{
		{"delete a server-default rule", doJSON(t, "DELETE", rule("override", ".m.rule.master"), cli.AccessToken, nil), http.StatusBadRequest, "M_UNKNOWN"},
		{"delete an unknown rule", doJSON(t, "DELETE", rule("content", "nope"), cli.AccessToken, nil), http.StatusNotFound, "M_NOT_FOUND"},
		{"before an unknown rule", put(rule("content", "x")+"?before=nope", map[string]any{"pattern": "x", "actions": []any{"notify"}}), http.StatusBadRequest, "M_UNKNOWN"},
		{"content rule without pattern", put(rule("content", "x"), map[string]any{"actions": []any{"notify"}}), http.StatusBadRequest, "M_BAD_JSON"},
		{"rule without actions", put(rule("override", "x"), map[string]any{"conditions": []any{}}), http.StatusBadRequest, "M_BAD_JSON"},
		{"enabled of an unknown rule", put(rule("override", "nope", "enabled"), map[string]any{"enabled": true}), http.StatusNotFound, "M_NOT_FOUND"},
		{"actions of an unknown rule", put(rule("override", "nope", "actions"), map[string]any{"actions": []any{}}), http.StatusNotFound, "M_NOT_FOUND"},
		{"unknown kind", put(rule("everything", "x"), map[string]any{"actions": []any{}}), http.StatusBadRequest, "M_INVALID_PARAM"},
		{"enabled missing", put(rule("override", ".m.rule.master", "enabled"), map[string]any{}), http.StatusBadRequest, "M_BAD_JSON"},
		{"not JSON", doJSON(t, "PUT", rule("override", "x"), cli.AccessToken, "{"), http.StatusBadRequest, "M_NOT_JSON"},
	} {
		if c.r.Status != c.status || c.r.Body["errcode"] != c.errcode {
			t.Errorf("%s: %d %s, want %d %s", c.what, c.r.Status, c.r.Raw, c.status, c.errcode)
		}
		if c.r.Status >= 400 {
			specValidateErr(t, c.r)
		}
	}

	// Delete user rules.
	doJSON(t, "DELETE", rule("content", "lie"), cli.AccessToken, nil).wantOK(t)
	doJSON(t, "DELETE", rule("room", string(roomID)), cli.AccessToken, nil).wantOK(t)
	if got, want := ids("content"), []string{"cake", "tea", ".m.rule.contains_user_name"}; !slices.Equal(got, want) {
		t.Errorf("content rules after delete %v, want %v", got, want)
	}
	if r := ids("room"); len(r) != 0 {
		t.Errorf("room rules after delete %v", r)
	}

	// /sync delivers the whole current ruleset as m.push_rules.
	resp, err := cli.FullSyncRequest(ctx, mautrix.ReqSync{Timeout: 0})
	if err != nil {
		t.Fatal(err)
	}
	var synced json.RawMessage
	for _, ev := range resp.AccountData.Events {
		if ev.Type == event.AccountDataPushRules {
			synced = ev.Content.VeryRaw
		}
	}
	if synced == nil {
		t.Fatal("no m.push_rules in /sync's account data")
	}
	var content struct {
		Global map[string][]map[string]any `json:"global"`
	}
	if err := json.Unmarshal(synced, &content); err != nil {
		t.Fatal(err)
	}
	var contentIDs []string
	for _, r := range content.Global["content"] {
		contentIDs = append(contentIDs, r["rule_id"].(string))
	}
	if want := []string{"cake", "tea", ".m.rule.contains_user_name"}; !slices.Equal(contentIDs, want) {
		t.Errorf("m.push_rules in /sync: content rules %v, want %v", contentIDs, want)
	}
	if content.Global["override"][0]["enabled"] != true {
		t.Errorf("m.push_rules in /sync: master not enabled: %v", content.Global["override"][0])
	}
	// An incremental sync after a change carries it.
	since := resp.NextBatch
	put(rule("override", ".m.rule.master", "enabled"), map[string]any{"enabled": false}).wantOK(t)
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err = cli.FullSyncRequest(ctx, mautrix.ReqSync{Since: since, Timeout: 1000})
		if err != nil {
			t.Fatal(err)
		}
		found := false
		for _, ev := range resp.AccountData.Events {
			found = found || ev.Type == event.AccountDataPushRules
		}
		if found {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the change of push rules did not reach /sync")
		}
		since = resp.NextBatch
	}
}
