package account

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"
)

// UIA stage types.
const (
	StageDummy             = "m.login.dummy"
	StagePassword          = "m.login.password"
	StageRegistrationToken = "m.login.registration_token"
)

// UIAChallenge is the 401 answer of user-interactive auth: the flows that
// would complete it, what is done so far, and the session to continue. When
// the last attempted stage failed, Errcode/Error say why.
type UIAChallenge struct {
	Flows     []UIAFlow      `json:"flows"`
	Params    map[string]any `json:"params"`
	Session   string         `json:"session"`
	Completed []string       `json:"completed,omitempty"`
	Errcode   string         `json:"errcode,omitempty"`
	Message   string         `json:"error,omitempty"`
}

// UIAFlow is one way to complete UIA.
type UIAFlow struct {
	Stages []string `json:"stages"`
}

func (c *UIAChallenge) Error() string {
	if c.Errcode != "" {
		return "user-interactive auth: " + c.Errcode + ": " + c.Message
	}
	return "user-interactive auth required"
}

// uiaAuth is the "auth" object of a request.
type uiaAuth struct {
	Type       string `json:"type"`
	Session    string `json:"session"`
	Password   string `json:"password"`
	User       string `json:"user"` // deprecated form of identifier
	Identifier struct {
		Type string `json:"type"`
		User string `json:"user"`
	} `json:"identifier"`
	Token string `json:"token"`
}

// uiaRequest is one UIA-protected operation.
type uiaRequest struct {
	op     string
	userID id.UserID // "" for registration
	flows  [][]string
}

func newSessionID() string {
	var b [18]byte
	_, _ = rand.Read(b[:])
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// checkUIA runs one round of user-interactive auth. It returns the session
// when a flow is complete; otherwise a *UIAChallenge to send as 401. The
// caller deletes the session once the operation succeeded (finishUIA).
func (s *Service) checkUIA(ctx context.Context, req uiaRequest, rawAuth json.RawMessage) (*UIASession, error) {
	var auth uiaAuth
	if len(rawAuth) > 0 && string(rawAuth) != "null" {
		if err := json.Unmarshal(rawAuth, &auth); err != nil {
			return nil, errBadJSON("auth is not a valid authentication object")
		}
	}
	var sess *UIASession
	if auth.Session != "" {
		got, err := s.store.UIASession(ctx, auth.Session)
		if errors.Is(err, ErrNotFound) {
			return nil, mautrix.RespError{ErrCode: "M_UNKNOWN", Err: "Unknown or expired UIA session", StatusCode: 400}
		}
		if err != nil {
			return nil, fmt.Errorf("loading UIA session: %w", err)
		}
		// A session is bound to one operation by one user: it cannot
		// authorise something else than what it was started for.
		if got.Operation != req.op || got.UserID != req.userID {
			return nil, errForbidden("UIA session belongs to another operation")
		}
		sess = got
	} else {
		sess = &UIASession{ID: newSessionID(), Operation: req.op, UserID: req.userID, ExpiresAt: s.now().Add(s.cfg.UIASessionTTL)}
		if err := s.store.CreateUIASession(ctx, *sess); err != nil {
			return nil, fmt.Errorf("creating UIA session: %w", err)
		}
	}
	challenge := func(errcode, msg string) error {
		c := &UIAChallenge{Params: map[string]any{}, Session: sess.ID, Completed: sess.Completed, Errcode: errcode, Message: msg}
		for _, f := range req.flows {
			c.Flows = append(c.Flows, UIAFlow{Stages: f})
		}
		return c
	}
	if auth.Type != "" {
		if !stageOffered(req.flows, auth.Type) {
			return nil, challenge("M_UNRECOGNIZED", "Authentication type "+auth.Type+" is not offered here")
		}
		if !slices.Contains(sess.Completed, auth.Type) {
			regToken, err := s.runStage(ctx, req, auth)
			var re mautrix.RespError
			if errors.As(err, &re) {
				return nil, challenge(re.ErrCode, re.Err)
			}
			if err != nil {
				return nil, err
			}
			if err := s.store.CompleteUIAStage(ctx, sess.ID, auth.Type, regToken, s.now()); err != nil {
				if errors.Is(err, ErrNotFound) {
					return nil, challenge("M_FORBIDDEN", "Registration token is not valid")
				}
				return nil, fmt.Errorf("recording UIA stage: %w", err)
			}
			sess.Completed = append(sess.Completed, auth.Type)
			if regToken != "" {
				sess.RegToken = regToken
			}
		}
	}
	for _, f := range req.flows {
		if flowDone(f, sess.Completed) {
			return sess, nil
		}
	}
	return nil, challenge("", "")
}

func stageOffered(flows [][]string, stage string) bool {
	for _, f := range flows {
		if slices.Contains(f, stage) {
			return true
		}
	}
	return false
}

func flowDone(flow, completed []string) bool {
	for _, st := range flow {
		if !slices.Contains(completed, st) {
			return false
		}
	}
	return true
}

// runStage checks one stage's credentials. For a registration token it
// returns the token, which the store reserves with the stage.
func (s *Service) runStage(ctx context.Context, req uiaRequest, auth uiaAuth) (string, error) {
	switch auth.Type {
	case StageDummy:
		return "", nil
	case StagePassword:
		who := auth.Identifier.User
		if who == "" {
			who = auth.User
		}
		if who != "" {
			// Checking someone else's password proves nothing about the requester.
			reqLocalpart, _, _ := req.userID.Parse()
			if lp := s.localpartFor(who); lp == "" || !strings.EqualFold(lp, reqLocalpart) {
				return "", errForbidden("Password is for another user")
			}
		}
		u, err := s.userByID(ctx, req.userID)
		if err != nil {
			return "", err
		}
		if !passwordMatches(u.PasswordHash, auth.Password) {
			return "", errForbidden("Invalid password")
		}
		return "", nil
	case StageRegistrationToken:
		if auth.Token == "" {
			return "", errMissingParam("Missing registration token")
		}
		if ok, err := s.RegistrationTokenValid(ctx, auth.Token); err != nil {
			return "", err
		} else if !ok {
			return "", errForbidden("Registration token is not valid")
		}
		return auth.Token, nil
	}
	return "", errForbidden("Unsupported authentication type")
}

// finishUIA deletes a used session so it can authorise nothing else.
func (s *Service) finishUIA(ctx context.Context, sess *UIASession) {
	if err := s.store.DeleteUIASession(ctx, sess.ID); err != nil {
		s.log.Warn("deleting used UIA session", "err", err)
	}
}

// userFlows are the flows for an operation by a signed-in user: their password.
func userFlows() [][]string { return [][]string{{StagePassword}} }

// AuthorizeUser runs UIA for a sensitive operation by a signed-in user.
// It returns nil when the user has proven themselves; the session is then spent.
func (s *Service) AuthorizeUser(ctx context.Context, op string, userID id.UserID, rawAuth json.RawMessage) error {
	sess, err := s.checkUIA(ctx, uiaRequest{op: op, userID: userID, flows: userFlows()}, rawAuth)
	if err != nil {
		return err
	}
	s.finishUIA(ctx, sess)
	return nil
}
