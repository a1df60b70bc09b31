package urlpreview

import (
	"fmt"
	"io"
	"net/url"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"golang.org/x/net/html"
	"golang.org/x/net/html/charset"
)

// Limits on what a page can make us return: the map goes into a JSON
// response and a cache row, so a hostile page must not be able to inflate it.
const (
	maxProperties = 64
	maxKeyBytes   = 64
	// maxValueBytes truncates text values; URL values longer than this are
	// dropped instead, since a cut URL points somewhere else.
	maxValueBytes = 4096
	// maxDimension bounds og:*:width/height (an int64 in the map).
	maxDimension = 1 << 20
)

// urlProperties are resolved against the page's URL and kept only if they
// then are absolute http(s) URLs (no javascript:, data: or file: links).
var urlProperties = map[string]bool{
	"og:url": true, "og:image": true, "og:image:url": true, "og:image:secure_url": true,
	"og:video": true, "og:video:url": true, "og:video:secure_url": true,
	"og:audio": true, "og:audio:url": true, "og:audio:secure_url": true,
}

// ParseOpenGraph reads an HTML document and returns its OpenGraph
// properties: every <meta property="og:..." content="..."> (or name="og:..."),
// keys lower-cased, first occurrence wins. Values are strings with whitespace
// collapsed and control characters removed, except og:*:width and
// og:*:height, which are int64 (dropped when not a positive integer).
//
// A page may list several og:image; only the first is kept, with the
// og:image:* properties given before the second one. og:image falls back to
// og:image:secure_url, then og:image:url. og:title and og:description fall
// back to <title> (outside <svg>/<math>) and <meta name="description">.
// URL-valued properties are resolved against base (the final URL of the
// page; nil leaves them as they are if already absolute).
//
// contentType is the Content-Type header; its charset, a byte order mark or
// a <meta charset> in the first 1024 bytes selects the decoding, as browsers
// do. The reader is consumed to EOF: cap it before calling. The only errors
// are the reader's.
func ParseOpenGraph(r io.Reader, contentType string, base *url.URL) (map[string]any, error) {
	utf8Reader, err := charset.NewReader(r, contentType)
	if err != nil {
		return nil, fmt.Errorf("detecting charset: %w", err)
	}
	p := ogParser{og: map[string]any{}, base: base}
	z := html.NewTokenizer(utf8Reader)
	for {
		tt := z.Next()
		switch tt {
		case html.ErrorToken:
			if err := z.Err(); err != io.EOF {
				return nil, fmt.Errorf("parsing HTML: %w", err)
			}
			return p.finish(), nil
		case html.StartTagToken, html.SelfClosingTagToken:
			name, hasAttr := z.TagName()
			switch string(name) {
			case "meta":
				if hasAttr {
					p.meta(z)
				}
			case "title":
				// The tokenizer reads a title's content as one RCDATA text
				// token (entities decoded) up to </title>.
				if tt == html.StartTagToken && p.foreignDepth == 0 && !p.sawTitle {
					p.sawTitle = true
					if z.Next() == html.TextToken {
						p.title = clean(string(z.Text()))
					}
				}
			case "svg", "math":
				if tt == html.StartTagToken {
					p.foreignDepth++
				}
			}
		case html.EndTagToken:
			name, _ := z.TagName()
			if s := string(name); (s == "svg" || s == "math") && p.foreignDepth > 0 {
				p.foreignDepth--
			}
		}
	}
}

type ogParser struct {
	og   map[string]any
	base *url.URL
	// images counts og:image properties seen: og:image:* after the second
	// describe an image we do not keep.
	images       int
	foreignDepth int
	sawTitle     bool
	title        string
	description  string
	sawDesc      bool
}

func (p *ogParser) meta(z *html.Tokenizer) {
	var property, name, content string
	hasContent := false
	for {
		k, v, more := z.TagAttr()
		switch string(k) {
		case "property":
			property = string(v)
		case "name":
			name = string(v)
		case "content":
			content, hasContent = string(v), true
		}
		if !more {
			break
		}
	}
	if !hasContent {
		return
	}
	key := strings.ToLower(strings.TrimSpace(property))
	if !strings.HasPrefix(key, "og:") {
		key = strings.ToLower(strings.TrimSpace(name))
	}
	if key == "description" {
		if !p.sawDesc {
			p.sawDesc = true
			p.description = clean(content)
		}
		return
	}
	if !strings.HasPrefix(key, "og:") || !validKey(key) {
		return
	}
	if key == "og:image" {
		p.images++
		if p.images > 1 {
			return
		}
	} else if strings.HasPrefix(key, "og:image:") && p.images > 1 {
		return
	}
	p.set(key, content)
}

func (p *ogParser) set(key, raw string) {
	if _, ok := p.og[key]; ok || len(p.og) >= maxProperties {
		return
	}
	if strings.HasSuffix(key, ":width") || strings.HasSuffix(key, ":height") {
		n, err := strconv.ParseInt(strings.TrimSpace(raw), 10, 64)
		if err == nil && n > 0 && n <= maxDimension {
			p.og[key] = n
		}
		return
	}
	if urlProperties[key] {
		if u, ok := p.resolve(raw); ok {
			p.og[key] = u
		}
		return
	}
	if v := clean(raw); v != "" {
		p.og[key] = v
	}
}

func (p *ogParser) resolve(raw string) (string, bool) {
	u, err := url.Parse(strings.TrimSpace(raw))
	if err != nil {
		return "", false
	}
	if p.base != nil {
		u = p.base.ResolveReference(u)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return "", false
	}
	s := u.String()
	if len(s) > maxValueBytes || !utf8.ValidString(s) {
		return "", false
	}
	return s, true
}

func (p *ogParser) finish() map[string]any {
	if _, ok := p.og["og:image"]; !ok {
		for _, alt := range []string{"og:image:secure_url", "og:image:url"} {
			if v, ok := p.og[alt]; ok {
				p.og["og:image"] = v
				break
			}
		}
	}
	if _, ok := p.og["og:title"]; !ok && p.title != "" {
		p.og["og:title"] = p.title
	}
	if _, ok := p.og["og:description"]; !ok && p.description != "" {
		p.og["og:description"] = p.description
	}
	return p.og
}

// validKey keeps property names to what OpenGraph uses (og:image:secure_url,
// og:locale:alternate, og:video:release_date...), so keys are safe to log
// and to store.
func validKey(k string) bool {
	if len(k) > maxKeyBytes {
		return false
	}
	for _, c := range []byte(k) {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == ':' || c == '_' || c == '-' || c == '.') {
			return false
		}
	}
	return true
}

// clean collapses runs of whitespace to one space, drops control and
// invalid bytes, and truncates to maxValueBytes at a rune boundary.
func clean(s string) string {
	s = strings.ToValidUTF8(s, "")
	var b strings.Builder
	space := false
	for _, r := range s {
		switch {
		case unicode.IsSpace(r):
			space = b.Len() > 0
			continue
		case unicode.IsControl(r) || r == utf8.RuneError:
			continue
		}
		n := utf8.RuneLen(r)
		if space {
			n++
		}
		if b.Len()+n > maxValueBytes {
			break
		}
		if space {
			b.WriteByte(' ')
			space = false
		}
		b.WriteRune(r)
	}
	return b.String()
}
