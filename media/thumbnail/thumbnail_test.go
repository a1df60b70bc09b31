package thumbnail

import (
	"bytes"
	"compress/zlib"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"image"
	"image/color"
	"image/color/palette"
	"image/gif"
	"image/jpeg"
	"image/png"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"testing/iotest"

	"golang.org/x/image/draw"
)

// Limits generous enough for every test image.
const (
	testMaxBytes  = 8 << 20
	testMaxPixels = 1 << 22
)

// gradient is an opaque test picture with no two neighbours alike.
func gradient(w, h int) *image.RGBA {
	m := image.NewRGBA(image.Rect(0, 0, w, h))
	for y := range h {
		for x := range w {
			m.SetRGBA(x, y, color.RGBA{uint8(x * 255 / w), uint8(y * 255 / h), uint8((x + y) % 256), 0xff})
		}
	}
	return m
}

// bands is a picture of equal vertical bands of colours, left to right.
func bands(w, h int, cs ...color.Color) *image.RGBA {
	m := image.NewRGBA(image.Rect(0, 0, w, h))
	for i, c := range cs {
		r := image.Rect(i*w/len(cs), 0, (i+1)*w/len(cs), h)
		draw.Draw(m, r, image.NewUniform(c), image.Point{}, draw.Src)
	}
	return m
}

func encodeAs(t testing.TB, format string, m image.Image) []byte {
	t.Helper()
	var buf bytes.Buffer
	var err error
	switch format {
	case "jpeg":
		err = jpeg.Encode(&buf, m, &jpeg.Options{Quality: 95})
	case "png":
		err = png.Encode(&buf, m)
	case "gif":
		err = gif.Encode(&buf, m, nil)
	default:
		t.Fatalf("cannot encode %s", format)
	}
	if err != nil {
		t.Fatalf("encode %s: %v", format, err)
	}
	return buf.Bytes()
}

func testdata(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// sample is one encoded 64x48 test image.
type sample struct {
	name, format string
	data         []byte
	// slack is how many bytes at the end decoding does not need: a GIF's
	// first frame ends before the trailer, and a RIFF chunk of odd
	// length is followed by a padding byte.
	slack int
}

// samples are a 64x48 picture in each format. The WebP files were made
// with cwebp (testdata/README.md).
func samples(t testing.TB) []sample {
	src := gradient(64, 48)
	return []sample{
		{"jpeg", "jpeg", encodeAs(t, "jpeg", src), 0},
		{"jpeg-progressive", "jpeg", testdata(t, "progressive.jpg"), 0},
		{"png", "png", encodeAs(t, "png", src), 0},
		{"gif", "gif", encodeAs(t, "gif", src), 1},
		{"webp-lossy", "webp", testdata(t, "lossy.webp"), 0},
		{"webp-lossless", "webp", testdata(t, "lossless.webp"), 1},
		{"webp-lossy-alpha", "webp", testdata(t, "alpha_lossy.webp"), 0},
		{"webp-lossless-alpha", "webp", testdata(t, "alpha_lossless.webp"), 1},
	}
}

func TestDecodeAndResizeEachFormat(t *testing.T) {
	requests := []struct {
		w, h   int
		m      Method
		ww, wh int
	}{
		{32, 32, Scale, 32, 24},
		{16, 100, Scale, 16, 12},
		{100, 12, Scale, 16, 12},
		{64, 48, Scale, 64, 48},
		{640, 480, Scale, 64, 48}, // never upscaled
		{1, 1, Scale, 1, 1},
		{32, 32, Crop, 32, 32},
		{16, 40, Crop, 16, 40},
		{64, 48, Crop, 64, 48},
		{128, 48, Crop, 64, 24},           // the 8:3 strip of the middle, not upscaled
		{96, 96, Crop, 48, 48},            // the largest centred square, not upscaled
		{800, 600, Crop, 64, 48},          // same aspect: the whole picture
		{1, 1000, Crop, 1, 48},            // a sliver
		{1 << 40, 1 << 40, Scale, 64, 48}, // absurd requests do not overflow
		{1 << 40, 1, Crop, 64, 1},
	}
	for _, s := range samples(t) {
		t.Run(s.name, func(t *testing.T) {
			img, format, err := Decode(bytes.NewReader(s.data), testMaxBytes, testMaxPixels)
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if format != s.format {
				t.Errorf("format %q, want %q", format, s.format)
			}
			if got := img.Bounds().Size(); got != image.Pt(64, 48) {
				t.Fatalf("decoded size %v, want 64x48", got)
			}
			for _, r := range requests {
				th, err := Resize(img, r.w, r.h, r.m)
				if err != nil {
					t.Fatalf("Resize %dx%d %s: %v", r.w, r.h, r.m, err)
				}
				if got := th.Bounds(); got != image.Rect(0, 0, r.ww, r.wh) {
					t.Errorf("Resize %dx%d %s: bounds %v, want %dx%d", r.w, r.h, r.m, got, r.ww, r.wh)
				}
				if w, h := Dimensions(64, 48, r.w, r.h, r.m); w != r.ww || h != r.wh {
					t.Errorf("Dimensions %dx%d %s = %dx%d, want %dx%d", r.w, r.h, r.m, w, h, r.ww, r.wh)
				}
			}
		})
	}
}

// near reports whether two colours are within tol of each other per channel
// (8-bit scale).
func near(a, b color.Color, tol int) bool {
	ar, ag, ab, aa := a.RGBA()
	br, bg, bb, ba := b.RGBA()
	d := func(x, y uint32) bool { return abs(int(x>>8)-int(y>>8)) <= tol }
	return d(ar, br) && d(ag, bg) && d(ab, bb) && d(aa, ba)
}

func abs(x int) int { return max(x, -x) }

var (
	red   = color.RGBA{0xff, 0, 0, 0xff}
	green = color.RGBA{0, 0xff, 0, 0xff}
	blue  = color.RGBA{0, 0, 0xff, 0xff}
	white = color.RGBA{0xff, 0xff, 0xff, 0xff}
)

func TestCropKeepsTheCentre(t *testing.T) {
	data := encodeAs(t, "png", bands(300, 100, red, green, blue))
	img, _, err := Decode(bytes.NewReader(data), testMaxBytes, testMaxPixels)
	if err != nil {
		t.Fatal(err)
	}
	th, err := Resize(img, 50, 50, Crop)
	if err != nil {
		t.Fatal(err)
	}
	// The centred square is exactly the green band; the kernel reads no
	// pixel outside the cropped region, so not one pixel may be off.
	for y := range 50 {
		for x := range 50 {
			if c := th.At(x, y); !near(c, green, 0) {
				t.Fatalf("pixel (%d,%d) = %v, want green", x, y, c)
			}
		}
	}
}

func TestScaleKeepsTheWholePicture(t *testing.T) {
	data := encodeAs(t, "png", bands(300, 100, red, green, blue))
	img, _, err := Decode(bytes.NewReader(data), testMaxBytes, testMaxPixels)
	if err != nil {
		t.Fatal(err)
	}
	th, err := Resize(img, 30, 30, Scale)
	if err != nil {
		t.Fatal(err)
	}
	if th.Bounds() != image.Rect(0, 0, 30, 10) {
		t.Fatalf("bounds %v, want 30x10", th.Bounds())
	}
	for _, c := range []struct {
		x    int
		want color.Color
	}{{0, red}, {5, red}, {15, green}, {24, blue}, {29, blue}} {
		if got := th.At(c.x, 5); !near(got, c.want, 0) {
			t.Errorf("pixel (%d,5) = %v, want %v", c.x, got, c.want)
		}
	}
}

func TestGIFFirstFrame(t *testing.T) {
	frame := func(c color.Color) *image.Paletted {
		m := image.NewPaletted(image.Rect(0, 0, 40, 30), palette.Plan9)
		draw.Draw(m, m.Bounds(), image.NewUniform(c), image.Point{}, draw.Src)
		return m
	}
	var buf bytes.Buffer
	err := gif.EncodeAll(&buf, &gif.GIF{
		Image: []*image.Paletted{frame(red), frame(blue), frame(green)},
		Delay: []int{10, 10, 10},
	})
	if err != nil {
		t.Fatal(err)
	}
	img, format, err := Decode(&buf, testMaxBytes, testMaxPixels)
	if err != nil || format != "gif" {
		t.Fatalf("Decode: %v, %q", err, format)
	}
	th, err := Resize(img, 20, 20, Scale)
	if err != nil {
		t.Fatal(err)
	}
	if th.Bounds() != image.Rect(0, 0, 20, 15) {
		t.Fatalf("bounds %v", th.Bounds())
	}
	for _, p := range []image.Point{{0, 0}, {10, 7}, {19, 14}} {
		if c := th.At(p.X, p.Y); !near(c, red, 0) {
			t.Errorf("pixel %v = %v, want red (the first frame)", p, c)
		}
	}
}

// halfTransparent is a 64x48 picture whose left half is fully transparent.
func halfTransparent() *image.NRGBA {
	m := image.NewNRGBA(image.Rect(0, 0, 64, 48))
	for y := range 48 {
		for x := range 64 {
			a := uint8(0xff)
			if x < 32 {
				a = 0
			}
			m.SetNRGBA(x, y, color.NRGBA{uint8(x * 4), uint8(y * 5), 200, a})
		}
	}
	return m
}

func TestEncodeChoosesFormatByAlpha(t *testing.T) {
	transparentGIF := image.NewPaletted(image.Rect(0, 0, 64, 48), color.Palette{color.Transparent, blue})
	for y := range 48 {
		for x := 32; x < 64; x++ {
			transparentGIF.SetColorIndex(x, y, 1)
		}
	}
	cases := []struct {
		name  string
		data  []byte
		alpha bool
	}{
		{"jpeg", encodeAs(t, "jpeg", gradient(64, 48)), false},
		{"opaque png", encodeAs(t, "png", gradient(64, 48)), false},
		{"opaque gif", encodeAs(t, "gif", gradient(64, 48)), false},
		{"opaque webp", testdata(t, "lossy.webp"), false},
		{"png with alpha", encodeAs(t, "png", halfTransparent()), true},
		{"gif with transparent index", encodeAs(t, "gif", transparentGIF), true},
		{"lossy webp with alpha", testdata(t, "alpha_lossy.webp"), true},
		{"lossless webp with alpha", testdata(t, "alpha_lossless.webp"), true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			img, _, err := Decode(bytes.NewReader(c.data), testMaxBytes, testMaxPixels)
			if err != nil {
				t.Fatal(err)
			}
			th, err := Resize(img, 32, 32, Scale)
			if err != nil {
				t.Fatal(err)
			}
			var out bytes.Buffer
			ct, err := Encode(&out, th)
			if err != nil {
				t.Fatal(err)
			}
			want := "image/jpeg"
			if c.alpha {
				want = "image/png"
			}
			if ct != want {
				t.Fatalf("content type %q, want %q", ct, want)
			}
			// The bytes are what the content type says, and keep the
			// transparency.
			got, format, err := image.Decode(bytes.NewReader(out.Bytes()))
			if err != nil || "image/"+format != ct {
				t.Fatalf("output decodes as %q (%v), want %s", format, err, ct)
			}
			if got.Bounds() != image.Rect(0, 0, 32, 24) {
				t.Errorf("output bounds %v", got.Bounds())
			}
			if c.alpha {
				if _, _, _, a := got.At(2, 12).RGBA(); a != 0 {
					t.Errorf("left pixel alpha %#x, want transparent", a)
				}
				if _, _, _, a := got.At(29, 12).RGBA(); a != 0xffff {
					t.Errorf("right pixel alpha %#x, want opaque", a)
				}
			}
		})
	}
}

// pngHeader is a PNG signature and IHDR chunk declaring w x h RGBA
// pixels, and nothing else.
func pngHeader(w, h uint32) []byte {
	ihdr := binary.BigEndian.AppendUint32([]byte("IHDR"), w)
	ihdr = binary.BigEndian.AppendUint32(ihdr, h)
	ihdr = append(ihdr, 8, 6, 0, 0, 0) // depth 8, RGBA, no interlace
	b := append([]byte("\x89PNG\r\n\x1a\n"), 0, 0, 0, 13)
	b = append(b, ihdr...)
	return binary.BigEndian.AppendUint32(b, crc32.ChecksumIEEE(ihdr))
}

// pngBomb is a complete, valid w x h RGBA PNG of zeros: a few KiB per
// million pixels, which decode to 4 bytes per pixel.
func pngBomb(t testing.TB, w, h uint32) []byte {
	var z bytes.Buffer
	zw := zlib.NewWriter(&z)
	row := make([]byte, 1+4*w) // filter type 0, then transparent black
	for range h {
		if _, err := zw.Write(row); err != nil {
			t.Fatal(err)
		}
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	b := pngHeader(w, h)
	for _, c := range []struct {
		typ  string
		data []byte
	}{{"IDAT", z.Bytes()}, {"IEND", nil}} {
		b = binary.BigEndian.AppendUint32(b, uint32(len(c.data)))
		chunk := append([]byte(c.typ), c.data...)
		b = append(b, chunk...)
		b = binary.BigEndian.AppendUint32(b, crc32.ChecksumIEEE(chunk))
	}
	return b
}

// jpegHeader is SOI, a baseline SOF declaring w x h YCbCr pixels and the
// start of a scan, which ends DecodeConfig's search for a JFIF-less file.
func jpegHeader(w, h uint16) []byte {
	b := []byte{0xff, 0xd8, 0xff, 0xc0, 0, 17, 8, byte(h >> 8), byte(h), byte(w >> 8), byte(w), 3}
	b = append(b, 1, 0x22, 0, 2, 0x11, 0, 3, 0x11, 0)
	return append(b, 0xff, 0xda, 0, 12)
}

// gifHeader is a GIF header declaring a w x h logical screen.
func gifHeader(w, h uint16) []byte {
	b := binary.LittleEndian.AppendUint16([]byte("GIF89a"), w)
	b = binary.LittleEndian.AppendUint16(b, h)
	return append(b, 0, 0, 0, ';')
}

// webpHeader is a RIFF WebP with a VP8X chunk declaring a w x h canvas and
// the given flags, and a RIFF length of riffLen.
func webpHeader(w, h uint32, flags byte, riffLen uint32) []byte {
	b := binary.LittleEndian.AppendUint32([]byte("RIFF"), riffLen)
	b = append(b, "WEBPVP8X"...)
	b = binary.LittleEndian.AppendUint32(b, 10)
	b = append(b, flags, 0, 0, 0)
	b = append(b, byte(w-1), byte((w-1)>>8), byte((w-1)>>16))
	return append(b, byte(h-1), byte((h-1)>>8), byte((h-1)>>16))
}

func TestTooManyPixelsRefusedBeforeAllocating(t *testing.T) {
	const maxPixels = 2048 * 2048
	bomb := pngBomb(t, 2049, 2048)
	allocated := func(data []byte, maxPixels int64) (uint64, error) {
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		_, _, err := Decode(bytes.NewReader(data), testMaxBytes, maxPixels)
		runtime.ReadMemStats(&after)
		return after.TotalAlloc - before.TotalAlloc, err
	}
	// The control: admitted, the bomb (16 KiB) takes its 16 MiB, and the
	// measurement sees it.
	if n, err := allocated(bomb, 2*maxPixels); err != nil || n < 2049*2048*4 {
		t.Fatalf("bomb of %d bytes admitted: allocated %d bytes, err %v", len(bomb), n, err)
	}
	cases := []struct {
		name string
		data []byte
	}{
		{"png 100000x100000", pngHeader(100000, 100000)},
		{"jpeg 65535x65535", jpegHeader(65535, 65535)},
		{"gif 65535x65535", gifHeader(65535, 65535)},
		{"webp 40000x40000", webpHeader(40000, 40000, 0, 1000)},
		{"png 2049x2048", pngHeader(2049, 2048)}, // one column over the limit
		{"png bomb 2049x2048", bomb},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			// Pad with data so a decoder that went on would find some.
			data := append(bytes.Clone(c.data), make([]byte, 64<<10)...)
			n, err := allocated(data, maxPixels)
			if !errors.Is(err, ErrTooManyPixels) {
				t.Fatalf("err = %v, want ErrTooManyPixels", err)
			}
			// Decoding even the smallest of these would take 16 MiB.
			t.Logf("allocated %d bytes", n)
			if n > 256<<10 {
				t.Errorf("allocated %d bytes before refusing", n)
			}
		})
	}
	// Exactly at the limit is accepted: a 2x2 picture with a limit of 4.
	data := encodeAs(t, "png", gradient(2, 2))
	if _, _, err := Decode(bytes.NewReader(data), testMaxBytes, 4); err != nil {
		t.Errorf("2x2 with a limit of 4 pixels: %v", err)
	}
	if _, _, err := Decode(bytes.NewReader(data), testMaxBytes, 3); !errors.Is(err, ErrTooManyPixels) {
		t.Errorf("2x2 with a limit of 3 pixels: %v, want ErrTooManyPixels", err)
	}
}

func TestZeroDimensionsRefused(t *testing.T) {
	for name, data := range map[string][]byte{
		"gif 0x0":   gifHeader(0, 0),
		"gif 10x0":  gifHeader(10, 0),
		"png 0x10":  pngHeader(0, 10),
		"jpeg 0x10": jpegHeader(0, 10),
	} {
		if _, _, err := Decode(bytes.NewReader(data), testMaxBytes, testMaxPixels); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: err = %v, want ErrCorrupt", name, err)
		}
	}
}

func TestTruncatedInputFails(t *testing.T) {
	for _, s := range samples(t) {
		t.Run(s.name, func(t *testing.T) {
			// Every prefix must fail cleanly; none may panic.
			complete := len(s.data) - s.slack
			for n := range len(s.data) {
				img, _, err := Decode(bytes.NewReader(s.data[:n]), testMaxBytes, testMaxPixels)
				switch {
				case err == nil && n < complete:
					t.Fatalf("prefix of %d of %d bytes decoded", n, len(s.data))
				case err == nil:
					if img.Bounds().Size() != image.Pt(64, 48) {
						t.Fatalf("prefix of %d bytes decoded to %v", n, img.Bounds())
					}
				case !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrUnsupported):
					t.Fatalf("prefix of %d bytes: %v, want ErrCorrupt or ErrUnsupported", n, err)
				}
			}
		})
	}
}

func TestCorruptInputFails(t *testing.T) {
	for _, s := range samples(t) {
		// Flip bytes through the middle of the data: never a panic, and
		// an error (if any) of the package's kinds.
		for i := len(s.data) / 3; i < len(s.data); i += 7 {
			data := bytes.Clone(s.data)
			data[i] ^= 0xa5
			_, _, err := Decode(bytes.NewReader(data), testMaxBytes, testMaxPixels)
			if err != nil && !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrUnsupported) {
				t.Errorf("%s with byte %d flipped: %v", s.name, i, err)
			}
		}
	}
}

func TestByteLimit(t *testing.T) {
	for _, s := range samples(t) {
		n := int64(len(s.data))
		if _, _, err := Decode(bytes.NewReader(s.data), n, testMaxPixels); err != nil {
			t.Errorf("%s: limit = size: %v", s.name, err)
		}
		if _, _, err := Decode(bytes.NewReader(s.data), n-1-int64(s.slack), testMaxPixels); !errors.Is(err, ErrTooLarge) {
			t.Errorf("%s: limit = needed size-1: %v, want ErrTooLarge", s.name, err)
		}
	}
	// A WebP whose RIFF header claims more than the limit is refused
	// before any chunk is read.
	if _, _, err := Decode(bytes.NewReader(webpHeader(16, 16, 0, 1<<30)), 1<<20, testMaxPixels); !errors.Is(err, ErrTooLarge) {
		t.Errorf("webp RIFF length over the limit: %v, want ErrTooLarge", err)
	}
}

func TestReadErrorsPassThrough(t *testing.T) {
	boom := errors.New("disk on fire")
	data := encodeAs(t, "png", gradient(64, 48))
	for _, at := range []int{0, 5, 40, len(data) / 2} {
		r := io.MultiReader(bytes.NewReader(data[:at]), iotest.ErrReader(boom))
		_, _, err := Decode(r, testMaxBytes, testMaxPixels)
		if !errors.Is(err, boom) {
			t.Errorf("failing after %d bytes: %v, want the read error", at, err)
		}
		if errors.Is(err, ErrCorrupt) || errors.Is(err, ErrUnsupported) {
			t.Errorf("failing after %d bytes: read error reported as bad data: %v", at, err)
		}
	}
	// Short reads are not errors.
	img, _, err := Decode(iotest.OneByteReader(bytes.NewReader(data)), testMaxBytes, testMaxPixels)
	if err != nil || img.Bounds().Dx() != 64 {
		t.Errorf("one byte at a time: %v", err)
	}
}

func TestUnsupportedFormats(t *testing.T) {
	for name, data := range map[string][]byte{
		"empty":         nil,
		"text":          []byte("hello, world"),
		"bmp":           append([]byte("BM"), make([]byte, 64)...),
		"tiff":          append([]byte("II*\x00"), make([]byte, 64)...),
		"riff not webp": append([]byte("RIFF\x10\x00\x00\x00WAVEfmt "), make([]byte, 16)...),
		"animated webp": append(webpHeader(16, 16, 1<<1, 30), "ANIM\x06\x00\x00\x00\x00\x00\x00\x00\x00\x00"...),
		"12-bit jpeg":   {0xff, 0xd8, 0xff, 0xc0, 0, 11, 12, 0, 8, 0, 8, 1, 1, 0x11, 0},
	} {
		if _, _, err := Decode(bytes.NewReader(data), testMaxBytes, testMaxPixels); !errors.Is(err, ErrUnsupported) {
			t.Errorf("%s: err = %v, want ErrUnsupported", name, err)
		}
	}
	if _, _, err := Decode(bytes.NewReader(nil), 0, 1); err == nil {
		t.Error("zero byte limit accepted")
	}
	if _, _, err := Decode(bytes.NewReader(nil), 1, -1); err == nil {
		t.Error("negative pixel limit accepted")
	}
}

// withScans repeats a first AC scan (with the tables before it) of a
// progressive JPEG until the file has n scans.
func withScans(t *testing.T, jpg []byte, n int) []byte {
	t.Helper()
	// scanEnd is where the entropy-coded data after the SOS at i ends: the
	// first marker that is neither stuffing (0xFF 0x00) nor a restart.
	scanEnd := func(i int) int {
		j := i + 2 + int(binary.BigEndian.Uint16(jpg[i+2:]))
		for ; j+1 < len(jpg); j++ {
			if jpg[j] == 0xff && jpg[j+1] != 0 && (jpg[j+1] < 0xd0 || jpg[j+1] > 0xd7) {
				return j
			}
		}
		t.Fatal("scan does not end")
		return 0
	}
	var chunk []byte
	have, prevEnd := 0, 0
	for i := 0; i+1 < len(jpg); i++ {
		if jpg[i] != 0xff || jpg[i+1] != 0xda {
			continue
		}
		have++
		end := scanEnd(i)
		ns := int(jpg[i+4])
		ss, ah := jpg[i+5+2*ns], jpg[i+7+2*ns]>>4
		if chunk == nil && ss > 0 && ah == 0 && prevEnd > 0 {
			chunk = jpg[prevEnd:end]
		}
		prevEnd, i = end, end-1
	}
	if chunk == nil || have > n {
		t.Fatalf("cannot make %d scans of a JPEG with %d", n, have)
	}
	out := bytes.Clone(jpg[:prevEnd])
	for range n - have {
		out = append(out, chunk...)
	}
	return append(out, jpg[prevEnd:]...)
}

func TestJPEGScanLimit(t *testing.T) {
	prog := testdata(t, "progressive.jpg")
	// The decoder takes repeated scans: at the limit the picture decodes.
	img, _, err := Decode(bytes.NewReader(withScans(t, prog, maxJPEGScans)), testMaxBytes, testMaxPixels)
	if err != nil || img.Bounds().Size() != image.Pt(64, 48) {
		t.Fatalf("%d scans: %v", maxJPEGScans, err)
	}
	for _, n := range []int{maxJPEGScans + 1, 20000} {
		_, _, err := Decode(bytes.NewReader(withScans(t, prog, n)), testMaxBytes, testMaxPixels)
		if !errors.Is(err, ErrUnsupported) {
			t.Errorf("%d scans: %v, want ErrUnsupported", n, err)
		}
	}
	// The count survives markers split across reads.
	_, _, err = Decode(iotest.OneByteReader(bytes.NewReader(withScans(t, prog, maxJPEGScans+1))), testMaxBytes, testMaxPixels)
	if !errors.Is(err, ErrUnsupported) {
		t.Errorf("%d scans read a byte at a time: %v, want ErrUnsupported", maxJPEGScans+1, err)
	}
}

func TestGuardTurnsPanicsIntoErrors(t *testing.T) {
	err := guard(func() error { panic("index out of range") })
	if !errors.Is(err, ErrCorrupt) {
		t.Errorf("err = %v, want ErrCorrupt", err)
	}
	want := errors.New("plain")
	if err := guard(func() error { return want }); err != want {
		t.Errorf("err = %v, want the function's own", err)
	}
}

func TestResizeRefusesBadRequests(t *testing.T) {
	img := gradient(10, 10)
	for _, r := range []struct {
		w, h int
		m    Method
	}{{0, 10, Scale}, {10, 0, Crop}, {-1, 5, Scale}, {10, 10, "zoom"}, {10, 10, ""}} {
		if _, err := Resize(img, r.w, r.h, r.m); err == nil {
			t.Errorf("Resize(%d, %d, %q) accepted", r.w, r.h, r.m)
		}
	}
	if _, err := Resize(image.NewRGBA(image.Rect(0, 0, 0, 5)), 10, 10, Scale); err == nil {
		t.Error("empty image accepted")
	}
	for _, d := range [][5]int{{0, 10, 10, 10}, {10, -1, 10, 10}, {10, 10, 0, 10}, {10, 10, 10, 0}} {
		for _, m := range []Method{Scale, Crop} {
			if w, h := Dimensions(d[0], d[1], d[2], d[3], m); w != 0 || h != 0 {
				t.Errorf("Dimensions(%v, %s) = %dx%d, want 0x0", d[:4], m, w, h)
			}
		}
	}
	if w, h := Dimensions(10, 10, 5, 5, "zoom"); w != 0 || h != 0 {
		t.Errorf("Dimensions with an unknown method = %dx%d, want 0x0", w, h)
	}
}

func TestResizeOffsetImage(t *testing.T) {
	// Sub-images (and GIF frames) need not start at the origin.
	whole := bands(300, 100, red, green, blue)
	sub := whole.SubImage(image.Rect(100, 0, 300, 100))
	th, err := Resize(sub, 20, 20, Crop)
	if err != nil {
		t.Fatal(err)
	}
	// The centred 100x100 of green|blue straddles the two bands.
	if c := th.At(2, 10); !near(c, green, 0) {
		t.Errorf("left = %v, want green", c)
	}
	if c := th.At(17, 10); !near(c, blue, 0) {
		t.Errorf("right = %v, want blue", c)
	}
}

// exifJPEG encodes quadrants (TL red, TR green, BL blue, BR white) of 40x20
// as JPEG with an EXIF APP1 segment giving orientation o, in byte order bo.
func exifJPEG(t testing.TB, o uint16, bo binary.AppendByteOrder) []byte {
	m := image.NewRGBA(image.Rect(0, 0, 40, 20))
	for _, q := range []struct {
		r image.Rectangle
		c color.Color
	}{{image.Rect(0, 0, 20, 10), red}, {image.Rect(20, 0, 40, 10), green}, {image.Rect(0, 10, 20, 20), blue}, {image.Rect(20, 10, 40, 20), white}} {
		draw.Draw(m, q.r, image.NewUniform(q.c), image.Point{}, draw.Src)
	}
	plain := encodeAs(t, "jpeg", m)
	tiff := []byte("MM")
	if bo == binary.LittleEndian {
		tiff = []byte("II")
	}
	tiff = bo.AppendUint16(tiff, 42)
	tiff = bo.AppendUint32(tiff, 8)
	tiff = bo.AppendUint16(tiff, 2)      // entries
	tiff = bo.AppendUint16(tiff, 0x010f) // Make: ASCII, 4 bytes inline
	tiff = bo.AppendUint16(tiff, 2)
	tiff = bo.AppendUint32(tiff, 4)
	tiff = append(tiff, 'W', 'e', 'f', 0)
	tiff = bo.AppendUint16(tiff, 0x0112)
	tiff = bo.AppendUint16(tiff, 3)
	tiff = bo.AppendUint32(tiff, 1)
	tiff = bo.AppendUint16(tiff, o)
	tiff = append(tiff, 0, 0, 0, 0, 0, 0) // padding, next IFD = 0
	payload := append([]byte("Exif\x00\x00"), tiff...)
	app1 := append([]byte{0xff, 0xe1}, byte((len(payload)+2)>>8), byte(len(payload)+2))
	app1 = append(app1, payload...)
	// An XMP APP1 first: the orientation is in the EXIF one.
	xmp := append([]byte("http://ns.adobe.com/xap/1.0/\x00"), "<x/>"...)
	app1 = append(append([]byte{0xff, 0xe1}, byte((len(xmp)+2)>>8), byte(len(xmp)+2)), append(xmp, app1...)...)
	return append(append([]byte{0xff, 0xd8}, app1...), plain[2:]...)
}

func TestEXIFOrientation(t *testing.T) {
	// The corners (TL, TR, BL, BR) of the picture as shown, for each
	// orientation, by the tag's definition (2: mirrored horizontally, 6:
	// turned 90° clockwise to show, 5: mirrored horizontally and turned
	// 270° clockwise, ...).
	want := map[uint16][4]color.Color{
		1: {red, green, blue, white},
		2: {green, red, white, blue},
		3: {white, blue, green, red},
		4: {blue, white, red, green},
		5: {red, blue, green, white},
		6: {blue, red, white, green},
		7: {white, green, blue, red},
		8: {green, white, red, blue},
	}
	for o := uint16(1); o <= 8; o++ {
		for _, bo := range []binary.AppendByteOrder{binary.BigEndian, binary.LittleEndian} {
			t.Run(fmt.Sprintf("%d/%v", o, bo), func(t *testing.T) {
				img, _, err := Decode(bytes.NewReader(exifJPEG(t, o, bo)), testMaxBytes, testMaxPixels)
				if err != nil {
					t.Fatal(err)
				}
				w, h := 40, 20
				if o >= 5 {
					w, h = 20, 40
				}
				if img.Bounds() != image.Rect(0, 0, w, h) {
					t.Fatalf("bounds %v, want %dx%d", img.Bounds(), w, h)
				}
				check := func(what string, m image.Image) {
					t.Helper()
					b := m.Bounds()
					corners := []image.Point{{1, 1}, {b.Dx() - 2, 1}, {1, b.Dy() - 2}, {b.Dx() - 2, b.Dy() - 2}}
					for i, p := range corners {
						if c := m.At(p.X, p.Y); !near(c, want[o][i], 40) {
							t.Errorf("%s: corner %d %v = %v, want %v", what, i, p, c, want[o][i])
						}
					}
				}
				check("decoded", img)
				for _, r := range []struct {
					w, h int
					m    Method
				}{{10, 10, Scale}, {w, h, Scale}, {8, 8, Crop}, {w, h / 2, Crop}} {
					th, err := Resize(img, r.w, r.h, r.m)
					if err != nil {
						t.Fatal(err)
					}
					if ow, oh := Dimensions(w, h, r.w, r.h, r.m); th.Bounds() != image.Rect(0, 0, ow, oh) {
						t.Fatalf("%dx%d %s: bounds %v, want %dx%d", r.w, r.h, r.m, th.Bounds(), ow, oh)
					}
					if r.m == Scale {
						check(fmt.Sprintf("%dx%d %s", r.w, r.h, r.m), th)
					}
				}
			})
		}
	}
}

func TestOrientedResizeMatchesTurnedCopy(t *testing.T) {
	// 240x150 to 20x20 goes through shrink; its blocks divide the
	// picture evenly, so no orientation leaves out different pixels.
	for _, src := range []*image.RGBA{gradient(48, 30), gradient(240, 150)} {
		for o := identity; o <= rotate270; o++ {
			view := &orientedImage{src: src, o: o}
			turned := image.NewRGBA(view.Bounds())
			draw.Draw(turned, turned.Bounds(), view, image.Point{}, draw.Src) // through At
			for _, r := range []struct {
				w, h int
				m    Method
			}{{20, 20, Scale}, {10, 25, Crop}, {7, 7, Crop}, {100, 100, Crop}} {
				got, err := Resize(view, r.w, r.h, r.m)
				if err != nil {
					t.Fatal(err)
				}
				want, err := Resize(turned, r.w, r.h, r.m)
				if err != nil {
					t.Fatal(err)
				}
				what := fmt.Sprintf("%v orientation %d %dx%d %s", src.Bounds().Size(), o, r.w, r.h, r.m)
				if got.Bounds() != want.Bounds() {
					t.Fatalf("%s: bounds %v, want %v", what, got.Bounds(), want.Bounds())
				}
				// Scaling rows then columns of the stored picture is
				// columns then rows of the shown one: rounding may differ.
				for i := range got.Pix {
					if abs(int(got.Pix[i])-int(want.Pix[i])) > 1 {
						t.Fatalf("%s: byte %d = %d, want %d", what, i, got.Pix[i], want.Pix[i])
					}
				}
			}
		}
	}
}

func TestJPEGOrientationIgnoresGarbage(t *testing.T) {
	good := exifJPEG(t, 6, binary.BigEndian)
	if o := jpegOrientation(good); o != rotate90 {
		t.Fatalf("orientation %d, want 6", o)
	}
	// Every truncation of the header and every single corrupted byte gives
	// some orientation, without panicking.
	for n := range 120 {
		if o := jpegOrientation(good[:n]); o < identity || o > rotate270 {
			t.Fatalf("prefix %d: orientation %d", n, o)
		}
		bad := bytes.Clone(good)
		bad[n] ^= 0xff
		if o := jpegOrientation(bad); o < identity || o > rotate270 {
			t.Fatalf("byte %d flipped: orientation %d", n, o)
		}
	}
	for name, b := range map[string][]byte{
		"not jpeg":        []byte("GIF89a"),
		"bad order":       exifSegment([]byte("XX\x00\x2a\x00\x00\x00\x08")),
		"ifd out of file": exifSegment([]byte("MM\x00\x2a\x7f\xff\xff\xff")),
		"value 9":         exifSegment([]byte("MM\x00\x2a\x00\x00\x00\x08\x00\x01\x01\x12\x00\x03\x00\x00\x00\x01\x00\x09\x00\x00")),
		"wrong type":      exifSegment([]byte("MM\x00\x2a\x00\x00\x00\x08\x00\x01\x01\x12\x00\x04\x00\x00\x00\x01\x00\x00\x00\x06")),
	} {
		if o := jpegOrientation(b); o != identity {
			t.Errorf("%s: orientation %d, want 1", name, o)
		}
	}
}

func exifSegment(tiff []byte) []byte {
	payload := append([]byte("Exif\x00\x00"), tiff...)
	return append([]byte{0xff, 0xd8, 0xff, 0xe1, byte((len(payload) + 2) >> 8), byte(len(payload) + 2)}, payload...)
}

func TestEncodeOpaqueDetection(t *testing.T) {
	// A type that cannot report opacity itself is scanned.
	gray := image.NewGray16(image.Rect(0, 0, 4, 4))
	var buf bytes.Buffer
	if ct, err := Encode(&buf, struct{ image.Image }{gray}); err != nil || ct != "image/jpeg" {
		t.Errorf("opaque image: %q, %v", ct, err)
	}
	alpha := image.NewNRGBA(image.Rect(0, 0, 4, 4))
	alpha.SetNRGBA(3, 3, color.NRGBA{1, 2, 3, 0xff})
	if ct, err := Encode(&buf, struct{ image.Image }{alpha}); err != nil || ct != "image/png" {
		t.Errorf("transparent image: %q, %v", ct, err)
	}
}

func TestPick(t *testing.T) {
	// The spec's recommended set.
	sizes := []Size{
		{32, 32, Crop},
		{96, 96, Crop},
		{320, 240, Scale},
		{640, 480, Scale},
		{800, 600, Scale},
	}
	cases := []struct {
		w, h int
		m    Method
		want Size
	}{
		{32, 32, Crop, Size{32, 32, Crop}},
		{24, 24, Crop, Size{32, 32, Crop}},   // smallest that covers
		{33, 20, Crop, Size{96, 96, Crop}},   // 32x32 is too narrow
		{200, 200, Crop, Size{96, 96, Crop}}, // none covers: the largest crop
		{100, 100, Scale, Size{320, 240, Scale}},
		{320, 241, Scale, Size{640, 480, Scale}},
		{641, 100, Scale, Size{800, 600, Scale}},
		{2000, 2000, Scale, Size{800, 600, Scale}}, // the largest scale, not a crop
		{0, 0, Scale, Size{320, 240, Scale}},
	}
	for _, c := range cases {
		got, ok := Pick(sizes, c.w, c.h, c.m)
		if !ok || got != c.want {
			t.Errorf("Pick(%dx%d %s) = %v, %v; want %v", c.w, c.h, c.m, got, ok, c.want)
		}
	}
	// Without any size of the method, the other method's sizes serve.
	onlyScale := []Size{{640, 480, Scale}, {320, 240, Scale}}
	if got, ok := Pick(onlyScale, 64, 64, Crop); !ok || got != (Size{320, 240, Scale}) {
		t.Errorf("crop from scale sizes: %v, %v", got, ok)
	}
	if got, ok := Pick(onlyScale, 1000, 1000, Crop); !ok || got != (Size{640, 480, Scale}) {
		t.Errorf("large crop from scale sizes: %v, %v", got, ok)
	}
	// Order of the configuration does not matter; ties go to the first.
	shuffled := []Size{{800, 600, Scale}, {96, 96, Crop}, {320, 240, Scale}, {32, 32, Crop}, {640, 480, Scale}}
	for _, c := range cases {
		if got, _ := Pick(shuffled, c.w, c.h, c.m); got != c.want {
			t.Errorf("shuffled: Pick(%dx%d %s) = %v; want %v", c.w, c.h, c.m, got, c.want)
		}
	}
	tie := []Size{{100, 50, Scale}, {50, 100, Scale}}
	if got, _ := Pick(tie, 10, 10, Scale); got != tie[0] {
		t.Errorf("tie: %v, want the first listed", got)
	}
	if _, ok := Pick(nil, 10, 10, Scale); ok {
		t.Error("Pick on no sizes reported a size")
	}
}

func TestDownscaleDoesNotAlias(t *testing.T) {
	// A one-pixel checkerboard is uniform grey from afar. Sampling a few
	// source pixels per output pixel (ApproxBiLinear, nearest neighbour)
	// shows black and white instead.
	for _, size := range []image.Point{{1920, 1080}, {960, 540}, {1000, 700}, {4000, 3000}} {
		src := image.NewGray(image.Rect(0, 0, size.X, size.Y))
		for y := range size.Y {
			for x := range size.X {
				if (x+y)%2 == 0 {
					src.SetGray(x, y, color.Gray{0xff})
				}
			}
		}
		for _, m := range []Method{Scale, Crop} {
			th, err := Resize(src, 320, 240, m)
			if err != nil {
				t.Fatal(err)
			}
			lo, hi := 255, 0
			for i := 0; i < len(th.Pix); i += 4 {
				lo, hi = min(lo, int(th.Pix[i])), max(hi, int(th.Pix[i]))
			}
			if lo < 120 || hi > 135 {
				t.Errorf("%v %s: grey levels %d..%d, want about 128", size, m, lo, hi)
			}
		}
	}
}

func TestShrinkAverages(t *testing.T) {
	// v(x, y) = 10x + y; 3x2 blocks of an 8x5 region leave 2 columns (one
	// each side) and 1 row (at the bottom: odd remainders lose their extra
	// pixel there) out.
	src := image.NewGray(image.Rect(0, 0, 8, 5))
	for y := range 5 {
		for x := range 8 {
			src.SetGray(x, y, color.Gray{uint8(10*x + y)})
		}
	}
	got, r := shrink(src, src.Bounds(), 3, 2)
	if r != image.Rect(0, 0, 2, 2) {
		t.Fatalf("bounds %v, want 2x2", r)
	}
	// Block (bx, by) covers x in [1+3bx, 4+3bx) and y in [2by, 2by+2):
	// mean 10*(2+3bx) + (2by+0.5), rounded half up.
	for by := range 2 {
		for bx := range 2 {
			want := uint8(10*(2+3*bx) + 2*by + 1)
			if c := got.RGBAAt(bx, by); c.R != want || c.G != want || c.B != want || c.A != 0xff {
				t.Errorf("block (%d,%d) = %v, want grey %d", bx, by, c, want)
			}
		}
	}
	// Offset sources and sub-rectangles read only the rectangle.
	whole := bands(300, 100, red, green, blue)
	got, _ = shrink(whole, image.Rect(100, 0, 200, 100), 10, 10)
	for i := 0; i < len(got.Pix); i += 4 {
		if c := (color.RGBA{got.Pix[i], got.Pix[i+1], got.Pix[i+2], got.Pix[i+3]}); c != green {
			t.Fatalf("pixel %d = %v, want green", i/4, c)
		}
	}
}
