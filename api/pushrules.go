package api

import (
	"net/http"
)

// pushRuleRoutes are the read side of the push rules API. Writes (PUT,
// DELETE) come with user-defined rules.
func (s *server) pushRuleRoutes() []clientRoute {
	return []clientRoute{
		{method: "GET", path: "/pushrules/", handler: s.getPushRules, auth: true, r0: true},
		{method: "GET", path: "/pushrules/global/", handler: s.getGlobalPushRules, auth: true, r0: true},
		{method: "GET", path: "/pushrules/global/{kind}/{ruleId}", handler: s.getPushRule, auth: true, r0: true},
		{method: "GET", path: "/pushrules/global/{kind}/{ruleId}/enabled", handler: s.getPushRuleEnabled, auth: true, r0: true},
		{method: "GET", path: "/pushrules/global/{kind}/{ruleId}/actions", handler: s.getPushRuleActions, auth: true, r0: true},
	}
}

// GET /_matrix/client/v3/pushrules/
func (s *server) getPushRules(w http.ResponseWriter, r *http.Request) {
	rs, err := s.opts.Accounts.PushRules(r.Context(), requester(r).UserID)
	s.respond(w, r, map[string]any{"global": rs}, err)
}

// GET /_matrix/client/v3/pushrules/global/
func (s *server) getGlobalPushRules(w http.ResponseWriter, r *http.Request) {
	rs, err := s.opts.Accounts.PushRules(r.Context(), requester(r).UserID)
	s.respond(w, r, rs, err)
}

// GET /_matrix/client/v3/pushrules/global/{kind}/{ruleId}
func (s *server) getPushRule(w http.ResponseWriter, r *http.Request) {
	rule, err := s.opts.Accounts.PushRule(r.Context(), requester(r).UserID, pathParam(r, "kind"), pathParam(r, "ruleId"))
	s.respond(w, r, rule, err)
}

// GET /_matrix/client/v3/pushrules/global/{kind}/{ruleId}/enabled
func (s *server) getPushRuleEnabled(w http.ResponseWriter, r *http.Request) {
	rule, err := s.opts.Accounts.PushRule(r.Context(), requester(r).UserID, pathParam(r, "kind"), pathParam(r, "ruleId"))
	s.respond(w, r, map[string]bool{"enabled": rule.Enabled}, err)
}

// GET /_matrix/client/v3/pushrules/global/{kind}/{ruleId}/actions
func (s *server) getPushRuleActions(w http.ResponseWriter, r *http.Request) {
	rule, err := s.opts.Accounts.PushRule(r.Context(), requester(r).UserID, pathParam(r, "kind"), pathParam(r, "ruleId"))
	s.respond(w, r, map[string]any{"actions": rule.Actions}, err)
}
