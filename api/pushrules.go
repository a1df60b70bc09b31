package api

import (
	"encoding/json"
	"net/http"

	"maunium.net/go/mautrix"

	"github.com/weftchat/weft/push"
)

// pushRuleRoutes are the push rules API (pushrules.yaml). Writes count
// against the per-user write rate limit (requireAuth), as the spec's 429
// allows.
func (s *server) pushRuleRoutes() []clientRoute {
	rule := "/pushrules/{scope}/{kind}/{ruleId}"
	return []clientRoute{
		{method: "GET", path: "/pushrules/", handler: s.getPushRules, auth: true, r0: true},
		{method: "GET", path: "/pushrules/{scope}/", handler: s.getScopePushRules, auth: true, r0: true},
		{method: "GET", path: rule, handler: s.getPushRule, auth: true, r0: true},
		{method: "PUT", path: rule, handler: s.putPushRule, auth: true, r0: true},
		{method: "DELETE", path: rule, handler: s.deletePushRule, auth: true, r0: true},
		{method: "GET", path: rule + "/enabled", handler: s.getPushRuleEnabled, auth: true, r0: true},
		{method: "PUT", path: rule + "/enabled", handler: s.putPushRuleEnabled, auth: true, r0: true},
		{method: "GET", path: rule + "/actions", handler: s.getPushRuleActions, auth: true, r0: true},
		{method: "PUT", path: rule + "/actions", handler: s.putPushRuleActions, auth: true, r0: true},
	}
}

// GET /_matrix/client/v3/pushrules/
func (s *server) getPushRules(w http.ResponseWriter, r *http.Request) {
	rs, err := s.opts.Push.Rules(r.Context(), requester(r).UserID)
	s.respond(w, r, map[string]any{"global": rs}, err)
}

// GET /_matrix/client/v3/pushrules/global/
func (s *server) getScopePushRules(w http.ResponseWriter, r *http.Request) {
	if pathParam(r, "scope") != "global" {
		writeError(w, r, s.log, mautrix.MInvalidParam.WithMessage("Unknown push rule scope: only global exists"))
		return
	}
	rs, err := s.opts.Push.Rules(r.Context(), requester(r).UserID)
	s.respond(w, r, rs, err)
}

// pushRule is the rule named by the path.
func (s *server) pushRule(r *http.Request) (push.Rule, error) {
	return s.opts.Push.Rule(r.Context(), requester(r).UserID, pathParam(r, "scope"), pathParam(r, "kind"), pathParam(r, "ruleId"))
}

// GET /_matrix/client/v3/pushrules/global/{kind}/{ruleId}
func (s *server) getPushRule(w http.ResponseWriter, r *http.Request) {
	rule, err := s.pushRule(r)
	s.respond(w, r, rule, err)
}

// PUT /_matrix/client/v3/pushrules/global/{kind}/{ruleId}
func (s *server) putPushRule(w http.ResponseWriter, r *http.Request) {
	var body json.RawMessage
	if err := decodeJSON(r, &body); err != nil {
		writeError(w, r, s.log, err)
		return
	}
	q := r.URL.Query()
	err := s.opts.Push.PutRule(r.Context(), requester(r).UserID, pathParam(r, "scope"), pathParam(r, "kind"), pathParam(r, "ruleId"),
		q.Get("before"), q.Get("after"), body)
	s.respond(w, r, struct{}{}, err)
}

// DELETE /_matrix/client/v3/pushrules/global/{kind}/{ruleId}
func (s *server) deletePushRule(w http.ResponseWriter, r *http.Request) {
	err := s.opts.Push.DeleteRule(r.Context(), requester(r).UserID, pathParam(r, "scope"), pathParam(r, "kind"), pathParam(r, "ruleId"))
	s.respond(w, r, struct{}{}, err)
}

// GET /_matrix/client/v3/pushrules/global/{kind}/{ruleId}/enabled
func (s *server) getPushRuleEnabled(w http.ResponseWriter, r *http.Request) {
	rule, err := s.pushRule(r)
	s.respond(w, r, map[string]bool{"enabled": rule.Enabled}, err)
}

// PUT /_matrix/client/v3/pushrules/global/{kind}/{ruleId}/enabled
func (s *server) putPushRuleEnabled(w http.ResponseWriter, r *http.Request) {
	var body struct {
		Enabled *bool `json:"enabled"`
	}
	if err := decodeJSON(r, &body); err != nil {
		writeError(w, r, s.log, err)
		return
	}
	if body.Enabled == nil {
		writeError(w, r, s.log, mautrix.MBadJSON.WithMessage("enabled is required"))
		return
	}
	err := s.opts.Push.SetRuleEnabled(r.Context(), requester(r).UserID, pathParam(r, "scope"), pathParam(r, "kind"), pathParam(r, "ruleId"), *body.Enabled)
	s.respond(w, r, struct{}{}, err)
}

// GET /_matrix/client/v3/pushrules/global/{kind}/{ruleId}/actions
func (s *server) getPushRuleActions(w http.ResponseWriter, r *http.Request) {
	rule, err := s.pushRule(r)
	s.respond(w, r, map[string]any{"actions": rule.Actions}, err)
}

// PUT /_matrix/client/v3/pushrules/global/{kind}/{ruleId}/actions
func (s *server) putPushRuleActions(w http.ResponseWriter, r *http.Request) {
	var body struct {
		Actions *[]push.Action `json:"actions"`
	}
	if err := decodeJSON(r, &body); err != nil {
		writeError(w, r, s.log, err)
		return
	}
	if body.Actions == nil {
		writeError(w, r, s.log, mautrix.MBadJSON.WithMessage("actions is required"))
		return
	}
	err := s.opts.Push.SetRuleActions(r.Context(), requester(r).UserID, pathParam(r, "scope"), pathParam(r, "kind"), pathParam(r, "ruleId"), *body.Actions)
	s.respond(w, r, struct{}{}, err)
}
