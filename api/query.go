package api

import (
	"net/http"
	"net/url"
	"strconv"
)

// queryInt reads an optional integer parameter; ok is false (and the error
// answered) when it is present and not an integer at least minValue.
func (s *server) queryInt(w http.ResponseWriter, r *http.Request, q url.Values, name string, minValue int) (n int, set, ok bool) {
	v := q.Get(name)
	if v == "" {
		return 0, false, true
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < minValue {
		msg := name + " must be a non-negative integer"
		if minValue > 0 {
			msg = name + " must be a positive integer"
		}
		writeError(w, r, s.log, matrixError("M_INVALID_PARAM", msg))
		return 0, true, false
	}
	return n, true, true
}

// queryBool reads an optional true/false parameter.
func (s *server) queryBool(w http.ResponseWriter, r *http.Request, q url.Values, name string) (b, set, ok bool) {
	switch q.Get(name) {
	case "":
		return false, false, true
	case "true":
		return true, true, true
	case "false":
		return false, true, true
	}
	writeError(w, r, s.log, matrixError("M_INVALID_PARAM", name+" must be true or false"))
	return false, true, false
}
