package api

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"

	"maunium.net/go/mautrix/id"

	"github.com/weftchat/weft/room"
)

// POST /_matrix/client/v3/rooms/{roomId}/receipt/{receiptType}/{eventId}
//
// The body is required by the spec but some clients send none: an empty
// body is taken as {}. A thread_id that is not a string is 400
// M_INVALID_PARAM, as the spec lists.
func (s *server) sendReceipt(w http.ResponseWriter, r *http.Request) {
	var req struct {
		ThreadID json.RawMessage `json:"thread_id"`
	}
	if err := decodeOptionalJSON(r, &req); err != nil {
		writeError(w, r, s.log, err)
		return
	}
	var threadID *string
	if req.ThreadID != nil {
		var t string
		if err := json.Unmarshal(req.ThreadID, &t); err != nil {
			writeError(w, r, s.log, matrixError("M_INVALID_PARAM", "thread_id must be a non-empty string"))
			return
		}
		threadID = &t
	}
	err := s.opts.Rooms.SendReceipt(r.Context(), requester(r).UserID, pathRoom(r), pathParam(r, "receiptType"),
		id.EventID(pathParam(r, "eventId")), threadID)
	s.respond(w, r, struct{}{}, err)
}

// POST /_matrix/client/v3/rooms/{roomId}/read_markers
func (s *server) setReadMarkers(w http.ResponseWriter, r *http.Request) {
	var req struct {
		FullyRead   id.EventID `json:"m.fully_read"`
		Read        id.EventID `json:"m.read"`
		ReadPrivate id.EventID `json:"m.read.private"`
	}
	if err := decodeJSON(r, &req); err != nil {
		writeError(w, r, s.log, err)
		return
	}
	err := s.opts.Rooms.SetReadMarkers(r.Context(), requester(r).UserID, pathRoom(r),
		room.ReadMarkers{FullyRead: req.FullyRead, Read: req.Read, ReadPrivate: req.ReadPrivate})
	s.respond(w, r, struct{}{}, err)
}

// decodeOptionalJSON is decodeJSON for a body that may be empty.
func decodeOptionalJSON(r *http.Request, v any) error {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		return bodyReadError(err)
	}
	if len(bytes.TrimSpace(body)) == 0 {
		return nil
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	return decodeJSON(r, v)
}
