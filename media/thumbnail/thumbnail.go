// Package thumbnail decodes untrusted images and makes thumbnails of them
// for the media repository, in pure Go.
//
// Accepted formats are JPEG, PNG, GIF (its first frame) and WebP (lossy,
// lossless, with or without alpha; an animated WebP is refused by the
// decoder). The format is recognised by its magic bytes, not by the
// image package's global format registry, so what we accept does not change
// when another package in the binary registers a decoder.
//
// Every input is hostile. Decode bounds the bytes it reads (maxBytes) and
// reads the image header before decoding, refusing images whose declared
// width*height exceeds maxPixels before the decoder allocates pixel memory.
// The decoders we use size their allocations from that same header (jpeg
// refuses a second SOF, gif refuses frames larger than the logical screen,
// webp checks the VP8/VP8L frame against its VP8X canvas), so peak memory is
// a small constant times maxPixels (about 20 bytes per pixel in the worst
// case, a progressive CMYK JPEG: pixels plus DCT coefficients) plus at most
// maxBytes of buffered input. Decoding time is bounded by the same caps
// (a JPEG's scans are counted: see maxJPEGScans).
package thumbnail

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"image"
	"image/gif"
	"image/jpeg"
	"image/png"
	"io"

	"golang.org/x/image/webp"
)

// Method is a thumbnailing method of GET /_matrix/client/v1/media/thumbnail.
type Method string

const (
	// Crop fills the requested box exactly (as far as the source allows
	// without upscaling): scale, then cut away what overflows, centred.
	Crop Method = "crop"
	// Scale fits the whole image inside the requested box, keeping its
	// aspect ratio.
	Scale Method = "scale"
)

// Size is one thumbnail size: a precomputed one from the configuration, or
// a request.
type Size struct {
	Width, Height int
	Method        Method
}

// Errors Decode returns, wrapped with detail; test them with errors.Is.
// Anything else Decode returns is an error reading from the caller's reader.
var (
	// ErrUnsupported: not an image format we decode, or a feature of one
	// that the decoder lacks (12-bit or arithmetic-coded JPEG, animated WebP).
	ErrUnsupported = errors.New("thumbnail: unsupported image format")
	// ErrTooManyPixels: the header declares more than maxPixels pixels.
	ErrTooManyPixels = errors.New("thumbnail: image has too many pixels")
	// ErrTooLarge: the input is longer than maxBytes.
	ErrTooLarge = errors.New("thumbnail: image file too large")
	// ErrCorrupt: truncated or malformed data, or non-positive dimensions.
	ErrCorrupt = errors.New("thumbnail: corrupt image")
)

// codec is one decodable format. The functions are the format package's
// own, called directly rather than through image.Decode's registry.
type codec struct {
	name   string
	config func(io.Reader) (image.Config, error)
	decode func(io.Reader) (image.Image, error)
}

// sniffLen is how many leading bytes sniff needs (RIFF....WEBP).
const sniffLen = 12

// sniff recognises a format by its magic bytes; nil if none matches.
func sniff(b []byte) *codec {
	switch {
	case len(b) >= 3 && b[0] == 0xff && b[1] == 0xd8 && b[2] == 0xff:
		return &codec{"jpeg", jpeg.DecodeConfig, jpeg.Decode}
	case bytes.HasPrefix(b, []byte("\x89PNG\r\n\x1a\n")):
		return &codec{"png", png.DecodeConfig, png.Decode}
	case bytes.HasPrefix(b, []byte("GIF87a")) || bytes.HasPrefix(b, []byte("GIF89a")):
		// gif.Decode stops after the first frame; DecodeAll would read
		// (and allocate) every frame.
		return &codec{"gif", gif.DecodeConfig, gif.Decode}
	case len(b) >= sniffLen && string(b[0:4]) == "RIFF" && string(b[8:12]) == "WEBP":
		return &codec{"webp", webp.DecodeConfig, webp.Decode}
	}
	return nil
}

// Decode reads one image from r and decodes it, refusing it without
// decoding the pixels when its header declares zero or negative dimensions
// (ErrCorrupt) or more than maxPixels pixels (ErrTooManyPixels). At most
// maxBytes are read from r (more: ErrTooLarge). format is "jpeg", "png",
// "gif" or "webp"; an animated WebP or a JPEG of more than maxJPEGScans
// scans is ErrUnsupported.
//
// r is read once, as a stream: the bytes the header parser consumes are
// kept and replayed to the decoder, so r need not be seekable. Those bytes
// are usually a few KiB (the parser reads up to the frame header; a JPEG's
// metadata segments come before it) and never more than maxBytes.
//
// A JPEG's EXIF orientation is applied: the image returned has the
// dimensions and pixels as the picture is meant to be seen. For a rotated
// JPEG that image is a view over the decoded one; Resize recognises it and
// rotates only the thumbnail.
//
// A decoder panic (a bug in it, reachable by crafted input) is recovered
// and reported as ErrCorrupt: the decoders keep no state between calls, so
// nothing is left inconsistent.
func Decode(r io.Reader, maxBytes, maxPixels int64) (img image.Image, format string, err error) {
	if maxBytes <= 0 || maxPixels <= 0 {
		return nil, "", fmt.Errorf("thumbnail: limits must be positive (maxBytes %d, maxPixels %d)", maxBytes, maxPixels)
	}
	in := &boundedReader{r: r, left: maxBytes, max: maxBytes}
	rec := &recorder{r: in}

	var magic [sniffLen]byte
	n, err := io.ReadFull(rec, magic[:])
	if err != nil && err != io.ErrUnexpectedEOF && err != io.EOF {
		return nil, "", in.classify(err, "reading header")
	}
	c := sniff(magic[:n])
	if c == nil {
		return nil, "", fmt.Errorf("%w: unrecognised leading bytes %q", ErrUnsupported, magic[:n])
	}
	if c.name == "webp" {
		// The RIFF length is the file size less 8. x/image's vp8 decoder
		// allocates its partitions from declared chunk lengths (up to
		// ~128 MiB) before reading them; riff refuses chunks longer than
		// the RIFF length, so bounding that length by maxBytes bounds
		// those allocations too.
		if riffLen := int64(binary.LittleEndian.Uint32(magic[4:8])); riffLen+8 > maxBytes {
			return nil, "", fmt.Errorf("%w: RIFF declares %d bytes, limit %d", ErrTooLarge, riffLen+8, maxBytes)
		}
	}

	var cfg image.Config
	err = guard(func() error {
		var err error
		cfg, err = c.config(io.MultiReader(bytes.NewReader(magic[:n]), rec))
		return err
	})
	if err != nil {
		return nil, c.name, in.classify(err, "reading "+c.name+" header")
	}
	if cfg.Width <= 0 || cfg.Height <= 0 {
		return nil, c.name, fmt.Errorf("%w: %s declares %dx%d pixels", ErrCorrupt, c.name, cfg.Width, cfg.Height)
	}
	// Widths and heights are ints below 2^31 in every decoder we use, so
	// the product cannot overflow int64.
	if px := int64(cfg.Width) * int64(cfg.Height); px > maxPixels {
		return nil, c.name, fmt.Errorf("%w: %s is %dx%d, limit %d pixels", ErrTooManyPixels, c.name, cfg.Width, cfg.Height, maxPixels)
	}

	head := rec.buf
	if c.name == "webp" && webpAnimated(head) {
		// x/image/webp decodes no animation; it would fail only after
		// skipping every frame.
		return nil, c.name, fmt.Errorf("%w: animated webp", ErrUnsupported)
	}
	var body io.Reader = io.MultiReader(bytes.NewReader(head), in)
	var scans *scanLimiter
	if c.name == "jpeg" {
		scans = &scanLimiter{r: body}
		body = scans
	}
	err = guard(func() error {
		var err error
		img, err = c.decode(body)
		return err
	})
	if scans != nil && scans.exceeded {
		return nil, c.name, fmt.Errorf("%w: jpeg with more than %d scans", ErrUnsupported, maxJPEGScans)
	}
	if err != nil {
		return nil, c.name, in.classify(err, "decoding "+c.name)
	}
	// The decoders allocate from the header checked above; this check is
	// only a backstop should one of them ever disagree with its header.
	b := img.Bounds()
	if b.Empty() || int64(b.Dx())*int64(b.Dy()) > maxPixels {
		return nil, c.name, fmt.Errorf("%w: decoded %s bounds %v disagree with its header %dx%d", ErrCorrupt, c.name, b, cfg.Width, cfg.Height)
	}
	if c.name == "jpeg" {
		if o := jpegOrientation(head); o != identity {
			img = &orientedImage{src: img, o: o}
		}
	}
	return img, c.name, nil
}

// webpAnimated reports whether a WebP file starts with a VP8X chunk whose
// animation flag is set (RIFF header 12 bytes, chunk header 8, flags).
func webpAnimated(b []byte) bool {
	const animationBit = 1 << 1
	return len(b) > 20 && string(b[12:16]) == "VP8X" && b[20]&animationBit != 0
}

// maxJPEGScans bounds the scans (SOS markers) of a JPEG. Each scan of a
// progressive JPEG walks every block of the image again, even when its
// data says "nothing here" in a few bytes, so scans multiply decoding time:
// 20000 copies of a 16-byte scan made a 360 KB 2048x2048 file take 37 s to
// decode. Encoders write 1 to 3 scans (baseline) or about 10 (progressive);
// a scan per coefficient and component, the most that makes sense, is 190.
// 100 keeps the worst case within about 10x a normal progressive decode.
const maxJPEGScans = 100

// errTooManyScans stops the JPEG decoder's reads; Decode reports the cause
// from scanLimiter.exceeded, whatever the decoder makes of this error.
var errTooManyScans = errors.New("thumbnail: too many jpeg scans")

// scanLimiter fails a JPEG byte stream at its (maxJPEGScans+1)th SOS
// marker. Inside entropy-coded data a 0xFF byte is always followed by 0x00
// (stuffing) or a marker, so counting 0xFF 0xDA pairs counts scans; pairs
// inside metadata segments (an EXIF preview is a whole JPEG) count too,
// which only makes the limit a little stricter.
type scanLimiter struct {
	r        io.Reader
	afterFF  bool // the last byte read was 0xFF (across Read calls)
	scans    int
	exceeded bool
}

func (s *scanLimiter) Read(p []byte) (int, error) {
	if s.exceeded {
		return 0, errTooManyScans
	}
	n, err := s.r.Read(p)
	for i, c := range p[:n] {
		if s.afterFF && c == 0xda {
			if s.scans++; s.scans > maxJPEGScans {
				s.exceeded = true
				return i, errTooManyScans
			}
		}
		s.afterFF = c == 0xff // fill bytes (0xFF 0xFF 0xDA) keep it set
	}
	return n, err
}

// guard runs f, turning a panic into ErrCorrupt.
func guard(f func() error) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("%w: decoder panicked: %v", ErrCorrupt, p)
		}
	}()
	return f()
}

// recorder keeps a copy of every byte read through it while r is set.
type recorder struct {
	r   io.Reader
	buf []byte
}

func (rec *recorder) Read(p []byte) (int, error) {
	n, err := rec.r.Read(p)
	rec.buf = append(rec.buf, p[:n]...)
	return n, err
}

// boundedReader passes at most max bytes through from r. It remembers why
// reading stopped, because decoders do not all wrap reader errors with %w
// (gif formats them with %v), so the cause cannot be recovered from the
// error a decoder returns.
type boundedReader struct {
	r        io.Reader
	left     int64
	max      int64
	tooLarge bool  // a byte beyond max exists
	readErr  error // the first error from r other than io.EOF
}

func (b *boundedReader) Read(p []byte) (int, error) {
	if b.left <= 0 {
		// Read one byte more to tell "exactly max bytes" from "more".
		var one [1]byte
		n, err := io.ReadAtLeast(b.r, one[:], 1)
		switch {
		case n > 0:
			b.tooLarge = true
			return 0, ErrTooLarge
		case err == io.EOF:
			return 0, io.EOF
		default:
			b.noteErr(err)
			return 0, err
		}
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.r.Read(p)
	b.left -= int64(n)
	b.noteErr(err)
	return n, err
}

func (b *boundedReader) noteErr(err error) {
	if err != nil && err != io.EOF && b.readErr == nil {
		b.readErr = err
	}
}

// classify turns the error of a decoding step into one of the package's
// errors, or the caller's read error.
func (b *boundedReader) classify(err error, step string) error {
	var jpegUnsupported jpeg.UnsupportedError
	var pngUnsupported png.UnsupportedError
	switch {
	case b.tooLarge:
		return fmt.Errorf("%w: more than %d bytes", ErrTooLarge, b.max)
	case b.readErr != nil:
		return fmt.Errorf("thumbnail: %s: %w", step, b.readErr)
	case errors.Is(err, ErrCorrupt): // a recovered panic
		return err
	case errors.As(err, &jpegUnsupported), errors.As(err, &pngUnsupported):
		return fmt.Errorf("%w: %s: %w", ErrUnsupported, step, err)
	default:
		return fmt.Errorf("%w: %s: %w", ErrCorrupt, step, err)
	}
}
