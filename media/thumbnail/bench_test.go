package thumbnail

import (
	"bytes"
	"image"
	"image/color"
	"image/gif"
	"io"
	"math"
	"math/rand/v2"
	"testing"
)

// photo is a deterministic stand-in for a photograph: smooth gradients, a
// hard-edged disc and per-pixel noise, so encoders cannot shortcut it.
// testdata/photo_1920x1080.webp was made from photo(1920, 1080)
// (testdata/README.md).
func photo(w, h int) *image.RGBA {
	m := image.NewRGBA(image.Rect(0, 0, w, h))
	rng := rand.New(rand.NewPCG(1, 2))
	clamp := func(v float64) uint8 { return uint8(max(0, min(255, v))) }
	for y := range h {
		for x := range w {
			fx, fy := float64(x)/float64(w), float64(y)/float64(h)
			r := 128 + 100*math.Sin(6*fx+2*fy)
			g := 128 + 100*math.Sin(3*fy-4*fx*fx)
			b := 128 + 100*math.Cos(5*fx*fy+1)
			dx, dy := fx-0.6, fy-0.4
			if dx*dx+dy*dy < 0.04 {
				r, g, b = 230, 200, 40
			}
			n := float64(rng.IntN(17) - 8)
			m.SetRGBA(x, y, color.RGBA{clamp(r + n), clamp(g + n), clamp(b + n), 255})
		}
	}
	return m
}

// BenchmarkThumbnail is the whole path for one request: decode a 1920x1080
// source, make a 320x240 scale thumbnail (320x180) and encode it.
func BenchmarkThumbnail(b *testing.B) {
	src := photo(1920, 1080)
	var gifData bytes.Buffer
	// 256 colours, Floyd-Steinberg dithered: how a GIF of a photo looks.
	if err := gif.Encode(&gifData, src, &gif.Options{NumColors: 256}); err != nil {
		b.Fatal(err)
	}
	for _, s := range []struct {
		format string
		data   []byte
	}{
		{"jpeg", encodeAs(b, "jpeg", src)},
		{"png", encodeAs(b, "png", src)},
		{"gif", gifData.Bytes()},
		{"webp", testdata(b, "photo_1920x1080.webp")},
	} {
		b.Run(s.format, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(s.data)))
			for b.Loop() {
				img, _, err := Decode(bytes.NewReader(s.data), 64<<20, 1920*1080)
				if err != nil {
					b.Fatal(err)
				}
				th, err := Resize(img, 320, 240, Scale)
				if err != nil {
					b.Fatal(err)
				}
				if th.Bounds().Dx() != 320 || th.Bounds().Dy() != 180 {
					b.Fatalf("thumbnail %v", th.Bounds())
				}
				if _, err := Encode(io.Discard, th); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
