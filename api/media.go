package api

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"

	"github.com/weftchat/weft/media"
	"github.com/weftchat/weft/media/thumbnail"
)

// URLPreviewer answers preview_url: OpenGraph data for a URL, as the
// spec's response object (media.Previewer). A nil Options.URLPreview means
// previews are off. Errors are Matrix errors carrying their status.
type URLPreviewer interface {
	Preview(ctx context.Context, user id.UserID, rawURL string, ts int64) (map[string]any, error)
}

// mediaCSP is served with all media: nothing in it may run scripts, load
// anything, or navigate, even if a browser is made to render it.
const mediaCSP = "sandbox; default-src 'none'; script-src 'none'; plugin-types application/pdf; " +
	"style-src 'unsafe-inline'; media-src 'self'; object-src 'self';"

// mountMedia registers the media repository: uploads and the deprecated
// unauthenticated endpoints under /_matrix/media (v3 and r0, one table),
// asynchronous create under /_matrix/media/v1, and the authenticated
// downloads under /_matrix/client/v1/media (spec v1.11).
func (s *server) mountMedia(r chi.Router) {
	s.mountClient(r, "/_matrix/media", []clientRoute{
		{method: "POST", path: "/upload", handler: s.uploadMedia, auth: true, r0: true},
		{method: "PUT", path: "/upload/{serverName}/{mediaId}", handler: s.uploadPendingMedia, auth: true},
		{method: "GET", path: "/download/{serverName}/{mediaId}", handler: s.downloadMedia(true), r0: true},
		{method: "GET", path: "/download/{serverName}/{mediaId}/{fileName}", handler: s.downloadMedia(true), r0: true},
		{method: "GET", path: "/thumbnail/{serverName}/{mediaId}", handler: s.thumbnailMedia(true), r0: true},
		// The spec gives the deprecated config and preview_url endpoints
		// the same access token requirement as their replacements.
		{method: "GET", path: "/config", handler: s.mediaConfig, auth: true, r0: true},
		{method: "GET", path: "/preview_url", handler: s.previewURL, auth: true, r0: true},
	})
	r.With(s.requireAuth).Post("/_matrix/media/v1/create", s.createMedia)
	authed := r.With(s.requireAuth)
	authed.Get("/_matrix/client/v1/media/download/{serverName}/{mediaId}", s.downloadMedia(false))
	authed.Get("/_matrix/client/v1/media/download/{serverName}/{mediaId}/{fileName}", s.downloadMedia(false))
	authed.Get("/_matrix/client/v1/media/thumbnail/{serverName}/{mediaId}", s.thumbnailMedia(false))
	authed.Get("/_matrix/client/v1/media/config", s.mediaConfig)
	authed.Get("/_matrix/client/v1/media/preview_url", s.previewURL)
}

// limitBodies is limitBody with one exception: media uploads may be as
// large as media.max_upload_size, which is usually far above the limit
// that suits JSON bodies. The upload path is recognised before routing, as
// limitBody runs before the router; a path that only looks like an upload
// is routed to nothing else (only upload handlers live under
// /_matrix/media/*/upload), so the larger limit reaches no other handler.
func (s *server) limitBodies(maxBody int64) func(http.Handler) http.Handler {
	general := limitBody(maxBody)
	if s.opts.Media == nil {
		return general
	}
	uploads := limitBody(s.opts.Media.MaxUploadSize())
	return func(next http.Handler) http.Handler {
		g, u := general(next), uploads(next)
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if isMediaUpload(r) {
				u.ServeHTTP(w, r)
				return
			}
			g.ServeHTTP(w, r)
		})
	}
}

func isMediaUpload(r *http.Request) bool {
	p := r.URL.Path
	switch r.Method {
	case http.MethodPost:
		return p == "/_matrix/media/v3/upload" || p == "/_matrix/media/r0/upload"
	case http.MethodPut:
		return strings.HasPrefix(p, "/_matrix/media/v3/upload/")
	}
	return false
}

// upload reads the parts of an upload request other than the body.
func upload(r *http.Request) media.Upload {
	return media.Upload{
		User:        requester(r).UserID,
		ContentType: r.Header.Get("Content-Type"),
		FileName:    r.URL.Query().Get("filename"),
		Length:      r.ContentLength,
		Body:        r.Body,
	}
}

// uploadErr maps a failure to read the upload body: over the body limit is
// M_TOO_LARGE; anything else (the client went away, a broken chunked
// body) is the client's 400, not an outage.
func uploadErr(err error, limit int64) error {
	if !errors.Is(err, media.ErrBody) {
		return err
	}
	var tooLarge *http.MaxBytesError
	if errors.As(err, &tooLarge) {
		return mautrix.MTooLarge.WithMessage("Cannot upload files larger than " + media.FormatBytes(limit))
	}
	e := matrixError("M_UNKNOWN", "Could not read the uploaded content")
	e.StatusCode = http.StatusBadRequest
	return e
}

// POST /_matrix/media/v3/upload: stores the body (streamed to disk, never
// held in memory) under a new media ID and answers its mxc:// URI once the
// content is durable.
func (s *server) uploadMedia(w http.ResponseWriter, r *http.Request) {
	uri, err := s.opts.Media.Upload(r.Context(), upload(r))
	if err != nil {
		writeError(w, r, s.log, uploadErr(err, s.opts.Media.MaxUploadSize()))
		return
	}
	writeJSON(w, http.StatusOK, &mautrix.RespMediaUpload{ContentURI: uri})
}

// POST /_matrix/media/v1/create: reserves a media ID for content uploaded
// later with PUT /upload/{serverName}/{mediaId}.
func (s *server) createMedia(w http.ResponseWriter, r *http.Request) {
	uri, expires, err := s.opts.Media.Create(r.Context(), requester(r).UserID)
	if err != nil {
		writeError(w, r, s.log, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"content_uri":       uri.String(),
		"unused_expires_at": expires.UnixMilli(),
	})
}

// PUT /_matrix/media/v3/upload/{serverName}/{mediaId}: the content of a
// media ID made by POST /create, by the user who made it, once.
func (s *server) uploadPendingMedia(w http.ResponseWriter, r *http.Request) {
	uri := id.ContentURI{Homeserver: chi.URLParam(r, "serverName"), FileID: chi.URLParam(r, "mediaId")}
	if err := s.opts.Media.UploadTo(r.Context(), uri, upload(r)); err != nil {
		writeError(w, r, s.log, uploadErr(err, s.opts.Media.MaxUploadSize()))
		return
	}
	writeJSON(w, http.StatusOK, struct{}{})
}

// mediaWait reads timeout_ms: how long to wait for content not uploaded
// yet (default 20 s; the domain caps it).
func (s *server) mediaWait(w http.ResponseWriter, r *http.Request) (time.Duration, bool) {
	ms, set, ok := s.queryInt(w, r, r.URL.Query(), "timeout_ms", 0)
	if !ok {
		return 0, false
	}
	if !set {
		return media.DefaultWait, true
	}
	return time.Duration(min(ms, int(media.MaxWait/time.Millisecond))) * time.Millisecond, true
}

// GET /_matrix/client/v1/media/download/{serverName}/{mediaId}[/{fileName}]
// (authenticated), and GET /_matrix/media/v3/download/... (legacy:
// unauthenticated, and blind to media uploaded during the freeze). The
// path's fileName, when given, replaces the upload's in
// Content-Disposition.
func (s *server) downloadMedia(legacy bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		wait, ok := s.mediaWait(w, r)
		if !ok {
			return
		}
		uri := id.ContentURI{Homeserver: chi.URLParam(r, "serverName"), FileID: chi.URLParam(r, "mediaId")}
		c, err := s.opts.Media.Download(r.Context(), uri, media.Access{Legacy: legacy, Wait: wait})
		if err != nil {
			writeError(w, r, s.log, err)
			return
		}
		name := c.FileName
		if p := chi.URLParam(r, "fileName"); p != "" {
			name = p
			// chi matches on the raw path when it has escapes the
			// decoded one cannot show (%2F): the parameter is then
			// still escaped.
			if r.URL.RawPath != "" {
				if u, err := url.PathUnescape(p); err == nil {
					name = u
				}
			}
		}
		kind := "attachment"
		if media.InlineSafe(c.ContentType) {
			kind = "inline"
		}
		serveContent(w, r, c, disposition(kind, name), !legacy)
	}
}

// GET /_matrix/client/v1/media/thumbnail/{serverName}/{mediaId}
// (authenticated) and GET /_matrix/media/v3/thumbnail/... (legacy, as for
// downloads): width and height (required), method (crop or scale; default
// scale), animated, timeout_ms.
func (s *server) thumbnailMedia(legacy bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		var req media.ThumbnailRequest
		for _, p := range []struct {
			name string
			into *int
		}{{"width", &req.Width}, {"height", &req.Height}} {
			n, set, ok := s.queryInt(w, r, q, p.name, 1)
			if !ok {
				return
			}
			if !set {
				writeError(w, r, s.log, matrixError("M_MISSING_PARAM", p.name+" is required"))
				return
			}
			*p.into = n
		}
		switch m := q.Get("method"); m {
		case "", "scale":
			req.Method = thumbnail.Scale
		case "crop":
			req.Method = thumbnail.Crop
		default:
			writeError(w, r, s.log, matrixError("M_INVALID_PARAM", "method must be crop or scale"))
			return
		}
		animated, _, ok := s.queryBool(w, r, q, "animated")
		if !ok {
			return
		}
		req.Animated = animated
		wait, ok := s.mediaWait(w, r)
		if !ok {
			return
		}
		uri := id.ContentURI{Homeserver: chi.URLParam(r, "serverName"), FileID: chi.URLParam(r, "mediaId")}
		c, err := s.opts.Media.Thumbnail(r.Context(), uri, req, media.Access{Legacy: legacy, Wait: wait})
		if err != nil {
			writeError(w, r, s.log, err)
			return
		}
		// The spec requires inline for thumbnails; every type we serve as
		// one is on its inline list.
		serveContent(w, r, c, disposition("inline", "thumbnail"+thumbnailExt(c.ContentType)), !legacy)
	}
}

func thumbnailExt(contentType string) string {
	switch strings.ToLower(strings.TrimSpace(strings.Split(contentType, ";")[0])) {
	case "image/jpeg":
		return ".jpg"
	case "image/png":
		return ".png"
	case "image/gif":
		return ".gif"
	case "image/webp":
		return ".webp"
	}
	return ""
}

// serveContent answers with media bytes: range requests, If-None-Match
// (the ETag is the content's SHA-256, a strong validator since the bytes
// under it never change) and If-Modified-Since are http.ServeContent's.
// Authenticated responses may only be cached by the client itself.
func serveContent(w http.ResponseWriter, r *http.Request, c *media.Content, disp string, authenticated bool) {
	defer c.Close()
	h := w.Header()
	h.Set("Content-Type", c.ContentType)
	h.Set("Content-Disposition", disp)
	h.Set("Content-Security-Policy", mediaCSP)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Cross-Origin-Resource-Policy", "cross-origin")
	h.Set("ETag", `"`+c.SHA256+`"`)
	if authenticated {
		h.Set("Cache-Control", "private, max-age=31536000, immutable")
	} else {
		h.Set("Cache-Control", "public, max-age=31536000, immutable")
	}
	// c.Blob, not c: Content embeds the Blob interface, which would hide
	// the file's WriteTo, and with it sendfile.
	http.ServeContent(w, r, "", c.Modified, c.Blob)
}

// disposition builds a Content-Disposition value (RFC 6266): a plain ASCII
// name as a quoted filename, anything else as RFC 8187 filename*, so
// names in any script survive and none can break out of the header.
func disposition(kind, name string) string {
	if name == "" {
		return kind
	}
	plain := true
	for i := 0; i < len(name); i++ {
		if c := name[i]; c < 0x20 || c > 0x7e || c == '"' || c == '\\' || c == '%' {
			plain = false
			break
		}
	}
	if plain {
		return kind + `; filename="` + name + `"`
	}
	const hex = "0123456789ABCDEF"
	var b strings.Builder
	b.WriteString(kind + "; filename*=utf-8''")
	for i := 0; i < len(name); i++ {
		c := name[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("!#$&+-.^_`|~", c) >= 0 {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('%')
		b.WriteByte(hex[c>>4])
		b.WriteByte(hex[c&15])
	}
	return b.String()
}

// GET /_matrix/client/v1/media/config (and the deprecated
// /_matrix/media/v3/config): the upload size limit.
func (s *server) mediaConfig(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, &mautrix.RespMediaConfig{UploadSize: s.opts.Media.MaxUploadSize()})
}

// GET /_matrix/client/v1/media/preview_url (and the deprecated
// /_matrix/media/v3/preview_url): OpenGraph data for url, og:image as an
// mxc:// URI, or {} for a type with no preview; 404 M_UNRECOGNIZED when
// previews are off (media.url_preview.enabled). The spec lists only 200
// and 429; failures follow the previewer's Matrix errors: 400
// M_MISSING_PARAM/M_INVALID_PARAM for a missing or non-http(s) url, 403
// M_FORBIDDEN for an address or URL the server will not fetch (with a
// generic message: the cause may name an internal address), 504 M_UNKNOWN
// when the fetch timed out, 502 M_UNKNOWN when the remote side failed, 429
// when the user asked for too many uncached previews.
func (s *server) previewURL(w http.ResponseWriter, r *http.Request) {
	if s.opts.URLPreview == nil {
		writeError(w, r, s.log, matrixError("M_UNRECOGNIZED", "URL previews are disabled on this server"))
		return
	}
	q := r.URL.Query()
	raw := q.Get("url")
	if raw == "" {
		writeError(w, r, s.log, matrixError("M_MISSING_PARAM", "url is required"))
		return
	}
	var ts int64
	if v := q.Get("ts"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			writeError(w, r, s.log, matrixError("M_INVALID_PARAM", "ts must be an integer"))
			return
		}
		ts = n
	}
	og, err := s.opts.URLPreview.Preview(r.Context(), requester(r).UserID, raw, ts)
	s.respond(w, r, og, err)
}
