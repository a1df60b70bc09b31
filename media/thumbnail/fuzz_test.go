package thumbnail

import (
	"bytes"
	"encoding/binary"
	"errors"
	"image"
	"io"
	"runtime/metrics"
	"testing"
)

// FuzzThumbnail runs the whole pipeline on arbitrary bytes: it must never
// panic, errors must be of the package's kinds, and what one input
// allocates must stay within a constant times the caps (a bigger
// allocation would need a header the pixel cap refuses).
func FuzzThumbnail(f *testing.F) {
	const (
		maxBytes  = 1 << 20
		maxPixels = 1 << 18
		// The worst decoders take ~20 bytes per pixel (a progressive
		// CMYK JPEG: pixels plus coefficients); the input is read once
		// and its header kept.
		maxAlloc = 32*maxPixels + 2*maxBytes + 1<<20
	)
	allocs := []metrics.Sample{{Name: "/gc/heap/allocs:bytes"}}
	allocated := func() uint64 {
		metrics.Read(allocs)
		return allocs[0].Value.Uint64()
	}
	seeds := [][]byte{
		pngHeader(100000, 100000),
		jpegHeader(65535, 65535),
		gifHeader(0, 0),
		webpHeader(16, 16, 1<<4, 1000),
		exifJPEG(f, 6, binary.LittleEndian),
		encodeAs(f, "png", halfTransparent()),
	}
	for _, s := range samples(f) {
		seeds = append(seeds, s.data, s.data[:len(s.data)/2], s.data[:len(s.data)-1-s.slack])
	}
	for _, s := range seeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		before := allocated()
		defer func() {
			// Fuzz inputs run one at a time in each worker process.
			if n := allocated() - before; n > maxAlloc {
				t.Fatalf("%d-byte input allocated %d bytes, bound %d", len(data), n, maxAlloc)
			}
		}()
		img, format, err := Decode(bytes.NewReader(data), maxBytes, maxPixels)
		if err != nil {
			for _, known := range []error{ErrCorrupt, ErrUnsupported, ErrTooManyPixels, ErrTooLarge} {
				if errors.Is(err, known) {
					return
				}
			}
			t.Fatalf("error of no known kind (format %q): %v", format, err)
		}
		b := img.Bounds()
		if b.Empty() || int64(b.Dx())*int64(b.Dy()) > maxPixels {
			t.Fatalf("decoded %v past the pixel cap", b)
		}
		for _, r := range []Size{{32, 32, Crop}, {64, 48, Scale}, {1, 100, Crop}} {
			th, err := Resize(img, r.Width, r.Height, r.Method)
			if err != nil {
				t.Fatalf("Resize %v: %v", r, err)
			}
			w, h := Dimensions(b.Dx(), b.Dy(), r.Width, r.Height, r.Method)
			if th.Bounds() != image.Rect(0, 0, w, h) || w > r.Width || h > r.Height || w > b.Dx() || h > b.Dy() {
				t.Fatalf("Resize %v of %v: %v (Dimensions %dx%d)", r, b, th.Bounds(), w, h)
			}
			if _, err := Encode(io.Discard, th); err != nil {
				t.Fatalf("Encode: %v", err)
			}
		}
	})
}

// FuzzDimensions checks plan's arithmetic for any sizes: the crop region
// lies in the source, the thumbnail is never larger than the request, the
// region or the source, and scale keeps the source's shape.
func FuzzDimensions(f *testing.F) {
	f.Add(64, 48, 32, 32, true)
	f.Add(1, 1<<30, 1<<40, 1, false)
	f.Add(65535, 3, 7, 65535, true)
	f.Add(17, 65, 8, 32, false) // the rounded side may be off by half the other
	f.Fuzz(func(t *testing.T, sw, sh, w, h int, crop bool) {
		m := Scale
		if crop {
			m = Crop
		}
		const maxImageSide = 1<<31 - 1
		ow, oh := Dimensions(sw, sh, w, h, m)
		if sw <= 0 || sh <= 0 || w <= 0 || h <= 0 {
			if ow != 0 || oh != 0 {
				t.Fatalf("Dimensions of non-positive sizes = %dx%d", ow, oh)
			}
			return
		}
		if sw > maxImageSide || sh > maxImageSide {
			return // no decoder makes such an image
		}
		r, pw, ph := plan(sw, sh, w, h, m)
		if pw != ow || ph != oh {
			t.Fatalf("plan %dx%d, Dimensions %dx%d", pw, ph, ow, oh)
		}
		if !r.In(image.Rect(0, 0, sw, sh)) || r.Empty() {
			t.Fatalf("crop region %v outside %dx%d", r, sw, sh)
		}
		if ow < 1 || oh < 1 || ow > w || oh > h || ow > r.Dx() || oh > r.Dy() {
			t.Fatalf("%dx%d of %dx%d for %dx%d %s: region %v", ow, oh, sw, sh, w, h, m, r)
		}
		if m == Scale {
			// Same shape: the computed side is within half a pixel of
			// the source's ratio (ow*sh - oh*sw off by at most half the
			// other side), unless the 1-pixel floor lifted it.
			d := int64(ow)*int64(sh) - int64(oh)*int64(sw)
			if max(d, -d) > max(int64(sw), int64(sh))/2+1 && ow > 1 && oh > 1 {
				t.Fatalf("%dx%d does not have the shape of %dx%d", ow, oh, sw, sh)
			}
		}
	})
}
