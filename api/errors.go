package api

import (
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"

	"maunium.net/go/mautrix"

	"github.com/weftchat/weft/account"
)

// statusByErrcode is the HTTP status of each Matrix errcode whose status does
// not depend on the endpoint. An error that carries its own StatusCode (for
// example M_UNRECOGNIZED as 405, or M_FORBIDDEN that must be 401) keeps it.
var statusByErrcode = map[string]int{
	"M_FORBIDDEN":                 http.StatusForbidden,
	"M_UNKNOWN_TOKEN":             http.StatusUnauthorized,
	"M_MISSING_TOKEN":             http.StatusUnauthorized,
	"M_USER_LOCKED":               http.StatusUnauthorized,
	"M_USER_SUSPENDED":            http.StatusForbidden,
	"M_BAD_JSON":                  http.StatusBadRequest,
	"M_NOT_JSON":                  http.StatusBadRequest,
	"M_NOT_FOUND":                 http.StatusNotFound,
	"M_LIMIT_EXCEEDED":            http.StatusTooManyRequests,
	"M_UNRECOGNIZED":              http.StatusNotFound,
	"M_UNKNOWN":                   http.StatusInternalServerError,
	"M_UNAUTHORIZED":              http.StatusUnauthorized,
	"M_USER_DEACTIVATED":          http.StatusForbidden,
	"M_USER_IN_USE":               http.StatusBadRequest,
	"M_INVALID_USERNAME":          http.StatusBadRequest,
	"M_ROOM_IN_USE":               http.StatusBadRequest,
	"M_INVALID_ROOM_STATE":        http.StatusBadRequest,
	"M_UNSUPPORTED_ROOM_VERSION":  http.StatusBadRequest,
	"M_INCOMPATIBLE_ROOM_VERSION": http.StatusBadRequest,
	"M_BAD_STATE":                 http.StatusBadRequest,
	"M_GUEST_ACCESS_FORBIDDEN":    http.StatusForbidden,
	"M_MISSING_PARAM":             http.StatusBadRequest,
	"M_INVALID_PARAM":             http.StatusBadRequest,
	"M_TOO_LARGE":                 http.StatusRequestEntityTooLarge,
	"M_EXCLUSIVE":                 http.StatusBadRequest,
	"M_RESOURCE_LIMIT_EXCEEDED":   http.StatusForbidden,
	"M_WEAK_PASSWORD":             http.StatusBadRequest,
	"M_THREEPID_DENIED":           http.StatusForbidden,
	"M_SERVER_NOT_TRUSTED":        http.StatusForbidden,
	"M_WRONG_ROOM_KEYS_VERSION":   http.StatusForbidden,
	"M_CANNOT_OVERWRITE_MEDIA":    http.StatusConflict,
	"M_NOT_YET_UPLOADED":          http.StatusGatewayTimeout,
}

// statusFor is the one place that turns a Matrix error into an HTTP status.
func statusFor(e mautrix.RespError) int {
	if e.StatusCode != 0 {
		return e.StatusCode
	}
	if s, ok := statusByErrcode[e.ErrCode]; ok {
		return s
	}
	return http.StatusBadRequest
}

// matrixError builds an error with an errcode and a message.
func matrixError(errcode, msg string) mautrix.RespError {
	return mautrix.RespError{ErrCode: errcode, Err: msg}
}

// writeError answers with err as a Matrix error. Anything that is not a
// mautrix.RespError is a bug or an outage: the client gets a bare 500
// M_UNKNOWN and the cause is logged here, once, with the request id.
func writeError(w http.ResponseWriter, r *http.Request, log *slog.Logger, err error) {
	var re mautrix.RespError
	var rep *mautrix.RespError
	var uia *account.UIAChallenge
	switch {
	case errors.As(err, &uia):
		// User-interactive auth: 401 with flows, params, session, completed,
		// and errcode/error only when a stage just failed.
		writeJSON(w, http.StatusUnauthorized, uia)
		return
	case errors.As(err, &re):
	case errors.As(err, &rep):
		re = *rep
	case hasNULText(err):
		re = matrixError("M_INVALID_PARAM", "Strings may not contain the NUL character (U+0000)")
	default:
		log.ErrorContext(r.Context(), "internal error", "request_id", RequestID(r.Context()),
			"method", r.Method, "path", r.URL.Path, "err", err)
		re = matrixError("M_UNKNOWN", "Internal server error")
		re.StatusCode = http.StatusInternalServerError
	}
	for k, v := range re.ExtraHeader {
		w.Header().Set(k, v)
	}
	writeJSON(w, statusFor(re), &re)
}

// writeJSON writes v as the JSON response body.
func writeJSON(w http.ResponseWriter, status int, v any) {
	var body []byte
	var err error
	if a, ok := v.(jsonAppender); ok {
		body = a.AppendJSON(nil)
	} else {
		body, err = json.Marshal(v)
	}
	if err != nil {
		status = http.StatusInternalServerError
		body = []byte(`{"errcode":"M_UNKNOWN","error":"Internal server error"}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

// jsonAppender is a body that encodes itself without encoding/json's
// validation of what it writes (a /sync response: syncapi/encode.go).
type jsonAppender interface {
	AppendJSON(dst []byte) []byte
}

// hasNULText reports whether err is PostgreSQL refusing a U+0000 in a text
// value (SQLSTATE 22021): the client sent "\u0000" in a string that is
// stored or looked up as text, which is their error, not an outage.
func hasNULText(err error) bool {
	var pg interface{ SQLState() string }
	return errors.As(err, &pg) && pg.SQLState() == "22021"
}

// respond ends a handler: err as a Matrix error, or v as a 200 JSON body.
func (s *server) respond(w http.ResponseWriter, r *http.Request, v any, err error) {
	if err != nil {
		writeError(w, r, s.log, err)
		return
	}
	writeJSON(w, http.StatusOK, v)
}
