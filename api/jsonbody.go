package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
)

// decodeJSON reads the request body into v. The errors are the spec's:
// a body that is not JSON at all (or not a JSON object) is M_NOT_JSON; JSON of
// the wrong shape (a string where a number belongs) is M_BAD_JSON; a body over
// the size limit is M_TOO_LARGE. Fields v does not know are ignored, as the
// spec asks of servers.
func decodeJSON(r *http.Request, v any) error {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		return bodyReadError(err)
	}
	return decodeBody(body, v)
}

// decodeBody is decodeJSON of a body already read.
func decodeBody(body []byte, v any) error {
	trimmed := bytes.TrimSpace(body)
	if len(trimmed) == 0 || trimmed[0] != '{' || !json.Valid(trimmed) {
		return matrixError("M_NOT_JSON", "Request body is not a JSON object")
	}
	if err := json.Unmarshal(trimmed, v); err != nil {
		var typeErr *json.UnmarshalTypeError
		if errors.As(err, &typeErr) && typeErr.Field != "" {
			return matrixError("M_BAD_JSON", fmt.Sprintf("%s: expected %s", typeErr.Field, typeErr.Type))
		}
		return matrixError("M_BAD_JSON", "Request body has the wrong shape: "+err.Error())
	}
	return nil
}

// bodyReadError maps a failed body read: over the size limit is M_TOO_LARGE.
func bodyReadError(err error) error {
	var tooBig *http.MaxBytesError
	if errors.As(err, &tooBig) {
		return errTooLarge(tooBig.Limit)
	}
	return matrixError("M_BAD_JSON", "Could not read the request body")
}

func errTooLarge(limit int64) error {
	return matrixError("M_TOO_LARGE", fmt.Sprintf("Request body is larger than %d bytes", limit))
}
