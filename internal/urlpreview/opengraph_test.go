package urlpreview_test

import (
	"errors"
	"io"
	"net/url"
	"reflect"
	"strings"
	"testing"
	"testing/iotest"
	"unicode"
	"unicode/utf8"

	"github.com/weftchat/weft/internal/urlpreview"
)

type ogCase struct {
	name        string
	html        string
	contentType string
	base        string
	want        map[string]any
}

var ogCases = []ogCase{
	{
		name: "og tags",
		html: `<!DOCTYPE html><html><head>
<title>Ignored title</title>
<meta property="og:title" content="Matrix Blog Post">
<meta property="og:description" content="A really cool post">
<meta property="og:type" content="article">
<meta property="og:site_name" content="Matrix.org">
<meta property="og:url" content="https://matrix.org/blog/post">
<meta property="og:image" content="https://matrix.org/img/logo.png">
<meta property="og:image:type" content="image/png">
<meta property="og:image:width" content="48">
<meta property="og:image:height" content=" 64 ">
<meta property="og:image:alt" content="The logo">
<meta name="description" content="Ignored description">
</head><body></body></html>`,
		base: "https://matrix.org/blog/post",
		want: map[string]any{
			"og:title": "Matrix Blog Post", "og:description": "A really cool post", "og:type": "article",
			"og:site_name": "Matrix.org", "og:url": "https://matrix.org/blog/post",
			"og:image": "https://matrix.org/img/logo.png", "og:image:type": "image/png",
			"og:image:width": int64(48), "og:image:height": int64(64), "og:image:alt": "The logo",
		},
	},
	{
		name: "fallbacks to title and meta description",
		html: `<html><head><title>  Plain
   page  </title><meta name="Description" content="What it is about"></head></html>`,
		want: map[string]any{"og:title": "Plain page", "og:description": "What it is about"},
	},
	{
		name: "og:title wins over title, description still falls back",
		html: `<title>Title tag</title><meta property="og:title" content="OG title"><meta name="description" content="Desc">`,
		want: map[string]any{"og:title": "OG title", "og:description": "Desc"},
	},
	{
		name: "relative og:image resolved against the page",
		html: `<meta property="og:image" content="../img/a%20b.png?x=1&amp;y=2"><meta property="og:url" content="/canonical">`,
		base: "https://example.org/blog/2024/post.html",
		want: map[string]any{"og:image": "https://example.org/blog/img/a%20b.png?x=1&y=2", "og:url": "https://example.org/canonical"},
	},
	{
		name: "scheme-relative og:image takes the page's scheme",
		html: `<meta property="og:image" content="//cdn.example.net/p.jpg">`,
		base: "http://example.org/",
		want: map[string]any{"og:image": "http://cdn.example.net/p.jpg"},
	},
	{
		name: "non-http og:image dropped",
		html: `<meta property="og:image" content="javascript:alert(1)"><meta property="og:image:secure_url" content="data:image/png;base64,AAAA"><meta property="og:url" content="file:///etc/passwd"><meta property="og:video" content="ftp://example.org/v.mp4">`,
		base: "https://example.org/",
		want: map[string]any{},
	},
	{
		name: "relative og:image without a base dropped",
		html: `<meta property="og:image" content="/img.png">`,
		want: map[string]any{},
	},
	{
		name: "og:image falls back to secure_url",
		html: `<meta property="og:image:secure_url" content="https://example.org/s.png"><meta property="og:image:url" content="https://example.org/u.png">`,
		want: map[string]any{"og:image:secure_url": "https://example.org/s.png", "og:image:url": "https://example.org/u.png", "og:image": "https://example.org/s.png"},
	},
	{
		name: "only the first image and its properties",
		html: `<meta property="og:image" content="https://example.org/1.png">
<meta property="og:image:width" content="100">
<meta property="og:image" content="https://example.org/2.png">
<meta property="og:image:width" content="200">
<meta property="og:image:height" content="300">`,
		want: map[string]any{"og:image": "https://example.org/1.png", "og:image:width": int64(100)},
	},
	{
		name: "entities decoded",
		html: `<title>Tom &amp; Jerry &lt;3 &#x263A; &eacute;</title><meta property="og:description" content="&quot;Quoted&quot; &amp;amp; &#169;">`,
		want: map[string]any{"og:title": "Tom & Jerry <3 ☺ é", "og:description": `"Quoted" &amp; ©`},
	},
	{
		name:        "charset from the Content-Type header",
		html:        "<title>Gr\xfc\xdfe aus K\xf6ln</title>",
		contentType: "text/html; charset=iso-8859-1",
		want:        map[string]any{"og:title": "Grüße aus Köln"},
	},
	{
		name: "charset from meta",
		html: "<html><head><meta charset=\"shift_jis\"><meta property=\"og:title\" content=\"\x93\xfa\x96\x7b\x8c\xea\"></head></html>",
		want: map[string]any{"og:title": "日本語"},
	},
	{
		name: "charset from http-equiv",
		html: "<meta http-equiv=\"Content-Type\" content=\"text/html; charset=koi8-r\"><title>\xf0\xd2\xc9\xd7\xc5\xd4</title>",
		want: map[string]any{"og:title": "Привет"},
	},
	{
		name:        "header charset wins over meta",
		html:        "<meta charset=\"shift_jis\"><title>na\xefve</title>",
		contentType: "text/html; charset=windows-1252",
		want:        map[string]any{"og:title": "naïve"},
	},
	{
		name: "invalid bytes and control characters removed",
		html: "<meta charset=utf-8><title>ok \xff\xfe done — ✓</title><meta property=og:site_name content=\"x\x00y\x07z\">",
		want: map[string]any{"og:title": "ok done — ✓", "og:site_name": "xyz"},
	},
	{
		name: "keys case-insensitive, name= accepted for og, first wins",
		html: `<meta property="OG:Title" content="First"><meta name="og:title" content="Second"><meta name="og:locale" content="en_GB"><meta property="og:locale" content="fr_FR">`,
		want: map[string]any{"og:title": "First", "og:locale": "en_GB"},
	},
	{
		name: "empty and missing content ignored",
		html: `<meta property="og:title" content="  "><meta property="og:title"><meta property="og:title" content="Real"><meta property="og:description" content="">`,
		want: map[string]any{"og:title": "Real"},
	},
	{
		name: "bad dimensions dropped",
		html: `<meta property="og:image:width" content="wide"><meta property="og:image:height" content="-5"><meta property="og:video:width" content="99999999999"><meta property="og:video:height" content="720">`,
		want: map[string]any{"og:video:height": int64(720)},
	},
	{
		name: "tags in script, style, comments and noscript are not tags",
		html: `<script>document.write('<meta property="og:title" content="script">')</script>
<style>/* <title>style</title> */</style>
<!-- <meta property="og:description" content="comment"> -->
<noscript><meta property="og:type" content="noscript"></noscript>
<title>Real</title>`,
		want: map[string]any{"og:title": "Real"},
	},
	{
		name: "svg title is not the page title",
		html: `<body><svg><title>Icon</title><path d=""/></svg><title>Page</title></body>`,
		want: map[string]any{"og:title": "Page"},
	},
	{
		name: "only the first title",
		html: `<title>One</title><title>Two</title>`,
		want: map[string]any{"og:title": "One"},
	},
	{
		name: "unterminated document",
		html: `<head><meta property="og:title" content="Cut`,
		want: map[string]any{},
	},
	{
		name: "unterminated title still used",
		html: `<head><meta property="og:site_name" content="S"><title>Cut off`,
		want: map[string]any{"og:site_name": "S", "og:title": "Cut off"},
	},
	{
		name: "odd keys and non-og properties ignored",
		html: `<meta property="og:ti tle" content="x"><meta property="twitter:title" content="t"><meta name="keywords" content="k"><meta property="og:` + strings.Repeat("a", 80) + `" content="long">`,
		want: map[string]any{},
	},
	{
		name: "unquoted and single-quoted attributes",
		html: `<meta property=og:title content=Bare><meta property='og:type' content='website'>`,
		want: map[string]any{"og:title": "Bare", "og:type": "website"},
	},
}

func TestParseOpenGraph(t *testing.T) {
	for _, c := range ogCases {
		t.Run(c.name, func(t *testing.T) {
			var base *url.URL
			if c.base != "" {
				var err error
				if base, err = url.Parse(c.base); err != nil {
					t.Fatal(err)
				}
			}
			ct := c.contentType
			if ct == "" {
				ct = "text/html"
			}
			got, err := urlpreview.ParseOpenGraph(strings.NewReader(c.html), ct, base)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, c.want) {
				t.Errorf("got  %#v\nwant %#v", got, c.want)
			}
		})
	}
}

func TestParseOpenGraphLimits(t *testing.T) {
	var b strings.Builder
	for i := range 200 {
		b.WriteString(`<meta property="og:k` + strings.Repeat("x", i%5) + string(rune('a'+i%26)) + string(rune('a'+i/26)) + `" content="v">`)
	}
	b.WriteString(`<meta property="og:description" content="` + strings.Repeat("é", 5000) + `">`)
	b.WriteString(`<meta property="og:image" content="https://example.org/` + strings.Repeat("a", 5000) + `">`)
	got, err := urlpreview.ParseOpenGraph(strings.NewReader(b.String()), "text/html", nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 64 {
		t.Errorf("%d properties kept, want the cap of 64", len(got))
	}
	// Under the property cap, a long text value is cut at a rune boundary
	// and a long URL is dropped rather than cut.
	got, err = urlpreview.ParseOpenGraph(strings.NewReader(b.String()[strings.Index(b.String(), `<meta property="og:description"`):]), "text/html", nil)
	if err != nil {
		t.Fatal(err)
	}
	d, _ := got["og:description"].(string)
	if len(d) > 4096 || len(d) < 4094 || !utf8.ValidString(d) {
		t.Errorf("description of %d bytes (valid UTF-8: %v), want cut to <= 4096", len(d), utf8.ValidString(d))
	}
	if _, ok := got["og:image"]; ok {
		t.Errorf("over-long og:image kept")
	}
}

func TestParseOpenGraphReadError(t *testing.T) {
	boom := errors.New("connection reset")
	r := io.MultiReader(strings.NewReader(strings.Repeat("<p>x</p>", 300)), iotest.ErrReader(boom))
	if _, err := urlpreview.ParseOpenGraph(r, "text/html", nil); !errors.Is(err, boom) {
		t.Errorf("err = %v, want the reader's error", err)
	}
}

// FuzzParseOpenGraph feeds arbitrary bytes and content types: the parser
// must not panic, must terminate, and must keep its output contract.
func FuzzParseOpenGraph(f *testing.F) {
	for _, c := range ogCases {
		f.Add([]byte(c.html), c.contentType)
	}
	f.Add([]byte("<meta property=og:image content=/x.png><svg><title>t</svg><title>"), "text/html; charset=utf-16")
	f.Add([]byte("\xfe\xff\x00<\x00t\x00i\x00t\x00l\x00e\x00>\x00x"), "")
	base, _ := url.Parse("https://example.org/dir/page.html")
	f.Fuzz(func(t *testing.T, data []byte, contentType string) {
		og, err := urlpreview.ParseOpenGraph(strings.NewReader(string(data)), contentType, base)
		if err != nil {
			t.Fatalf("error from an in-memory reader: %v", err)
		}
		if len(og) > 64+3 { // the cap, plus the three fallbacks
			t.Fatalf("%d properties", len(og))
		}
		for k, v := range og {
			if !strings.HasPrefix(k, "og:") || len(k) > 64 {
				t.Fatalf("bad key %q", k)
			}
			switch v := v.(type) {
			case int64:
				if !strings.HasSuffix(k, ":width") && !strings.HasSuffix(k, ":height") || v <= 0 || v > 1<<20 {
					t.Fatalf("%s = %d", k, v)
				}
			case string:
				if v == "" || len(v) > 4096 || !utf8.ValidString(v) {
					t.Fatalf("%s = %q", k, v)
				}
				for _, r := range v {
					if unicode.IsControl(r) {
						t.Fatalf("%s has control character %q", k, r)
					}
				}
				if k == "og:image" || k == "og:url" {
					u, err := url.Parse(v)
					if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
						t.Fatalf("%s = %q is not an absolute http(s) URL", k, v)
					}
				}
			default:
				t.Fatalf("%s has type %T", k, v)
			}
		}
	})
}
