package api

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"

	"github.com/weftchat/weft/syncapi"
	"maunium.net/go/mautrix"
)

func TestDecodeJSONErrors(t *testing.T) {
	type body struct {
		Name  string `json:"name"`
		Count int    `json:"count"`
	}
	cases := []struct {
		in, errcode string
	}{
		{``, "M_NOT_JSON"},
		{`not json`, "M_NOT_JSON"},
		{`{"name": "x"`, "M_NOT_JSON"},
		{`[1,2]`, "M_NOT_JSON"},
		{`"str"`, "M_NOT_JSON"},
		{`{"count": "seven"}`, "M_BAD_JSON"},
		{`{"name": 5}`, "M_BAD_JSON"},
		{`{"name": "ok", "count": 3, "extra": true}`, ""},
		{`{"name":"` + strings.Repeat("a", 200) + `"}`, "M_TOO_LARGE"},
	}
	for _, c := range cases {
		r := httptest.NewRequest("POST", "/", strings.NewReader(c.in))
		r.Body = http.MaxBytesReader(httptest.NewRecorder(), r.Body, 100)
		var v body
		err := decodeJSON(r, &v)
		var re mautrix.RespError
		switch {
		case c.errcode == "" && err != nil:
			t.Errorf("%q: unexpected error %v", c.in, err)
		case c.errcode != "" && (!errors.As(err, &re) || re.ErrCode != c.errcode):
			t.Errorf("%q: got %v, want %s", c.in, err, c.errcode)
		}
	}
}

func TestStatusFor(t *testing.T) {
	cases := map[int]mautrix.RespError{
		403: {ErrCode: "M_FORBIDDEN"},
		404: {ErrCode: "M_NOT_FOUND"},
		413: {ErrCode: "M_TOO_LARGE"},
		429: {ErrCode: "M_LIMIT_EXCEEDED"},
		401: {ErrCode: "M_UNKNOWN_TOKEN"},
		405: {ErrCode: "M_UNRECOGNIZED", StatusCode: 405},
		400: {ErrCode: "COM.EXAMPLE_SOMETHING"},
	}
	for want, e := range cases {
		if got := statusFor(e); got != want {
			t.Errorf("%s: %d, want %d", e.ErrCode, got, want)
		}
	}
}

// A handler panic becomes one 500 M_UNKNOWN and one log line with the request id.
func TestRecovererLogsOnce(t *testing.T) {
	var logs bytes.Buffer
	log := slog.New(slog.NewJSONHandler(&logs, nil))
	h := requestID(recoverer(log)(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {
		panic("boom")
	})))
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/x", nil))
	var e struct{ Errcode string }
	_ = json.Unmarshal(rec.Body.Bytes(), &e)
	if rec.Code != 500 || e.Errcode != "M_UNKNOWN" {
		t.Fatalf("got %d %s", rec.Code, rec.Body)
	}
	rid := rec.Header().Get("X-Request-Id")
	if n := strings.Count(logs.String(), "panic while serving request"); n != 1 || !strings.Contains(logs.String(), rid) {
		t.Fatalf("want one panic log line with request id %s, got:\n%s", rid, logs.String())
	}
}

// An error that is not a Matrix error is a 500 whose cause is logged, not sent.
func TestInternalErrorsAreHidden(t *testing.T) {
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	rec := httptest.NewRecorder()
	writeError(rec, httptest.NewRequest("GET", "/x", nil), log, errors.New("pq: password=hunter2 connection refused"))
	if rec.Code != 500 || strings.Contains(rec.Body.String(), "hunter2") {
		t.Fatalf("got %d %s", rec.Code, rec.Body)
	}
	if !strings.Contains(logs.String(), "hunter2") {
		t.Fatalf("cause not logged")
	}
}

func TestRealIP(t *testing.T) {
	trusted := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("127.0.0.1/32")}
	cases := []struct {
		remote, xff, want string
		trusted           []netip.Prefix
	}{
		{"127.0.0.1:5000", "203.0.113.7", "203.0.113.7", trusted},
		{"127.0.0.1:5000", "198.51.100.1, 203.0.113.7, 10.1.2.3", "203.0.113.7", trusted}, // skip our own proxies
		{"127.0.0.1:5000", "", "127.0.0.1", trusted},
		{"127.0.0.1:5000", "not-an-ip", "127.0.0.1", trusted},
		{"198.51.100.9:5000", "203.0.113.7", "198.51.100.9", trusted}, // untrusted peer: header ignored
		{"127.0.0.1:5000", "203.0.113.7", "127.0.0.1", nil},           // nothing trusted: header ignored
		{"127.0.0.1:5000", "::ffff:203.0.113.7", "203.0.113.7", trusted},
	}
	for _, c := range cases {
		var got string
		h := realIP(c.trusted)(http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) { got = clientIP(r) }))
		r := httptest.NewRequest("GET", "/", nil)
		r.RemoteAddr = c.remote
		if c.xff != "" {
			r.Header.Set("X-Forwarded-For", c.xff)
		}
		h.ServeHTTP(httptest.NewRecorder(), r)
		if got != c.want {
			t.Errorf("remote %s xff %q: client %s, want %s", c.remote, c.xff, got, c.want)
		}
	}
}

// TestRenderParked: a parked answer is a whole HTTP/1.1 response, for
// answers and errors, reusing its buffer without mixing answers.
func TestRenderParked(t *testing.T) {
	s := &server{log: slog.New(slog.DiscardHandler)}
	pr := parkedRequest{id: "0123456789abcdef", method: "GET", path: "/_matrix/client/v3/sync", keepAlive: true}
	for i, c := range []struct {
		resp      *syncapi.Response
		err       error
		keepAlive bool
		status    int
		body      string
	}{
		{&syncapi.Response{NextBatch: "s1_0"}, nil, true, 200, `"next_batch":"s1_0"`},
		{&syncapi.Response{NextBatch: "s2_0" + strings.Repeat("x", 9000)}, nil, false, 200, `"next_batch":"s2_0xxx`},
		{nil, mautrix.MInvalidParam.WithMessage("bad token"), true, 400, `"errcode":"M_INVALID_PARAM"`},
		{&syncapi.Response{NextBatch: "s3_0"}, nil, true, 200, `"next_batch":"s3_0"`},
	} {
		pr.keepAlive = c.keepAlive
		buf, out, status, n := s.renderParked(pr, c.resp, c.err)
		resp, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(out)), nil)
		if err != nil {
			t.Fatalf("case %d: %v\n%s", i, err, out)
		}
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != c.status || status != c.status || int64(len(body)) != n || resp.ContentLength != n ||
			!strings.Contains(string(body), c.body) || !json.Valid(body) {
			t.Fatalf("case %d: status %d/%d, %d bytes of %d: %s", i, resp.StatusCode, status, len(body), n, body)
		}
		if resp.Header.Get("Content-Type") != "application/json" || resp.Header.Get("X-Request-Id") != pr.id ||
			resp.Header.Get("Access-Control-Allow-Origin") != "*" || resp.Header.Get("Date") == "" || resp.Close == c.keepAlive {
			t.Fatalf("case %d: headers %v (close %v)", i, resp.Header, resp.Close)
		}
		putAnswerBuf(buf)
	}
}
