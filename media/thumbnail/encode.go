package thumbnail

import (
	"fmt"
	"image"
	"image/jpeg"
	"image/png"
	"io"
)

// jpegQuality is the quality of JPEG thumbnails: at 85 artefacts are hard
// to see at thumbnail sizes, and files are about half those at 95.
const jpegQuality = 85

// Encode writes img as JPEG when every pixel is opaque and as PNG when any
// is not (JPEG has no alpha), and returns the content type written. The
// choice follows the pixels, not the source format: an opaque PNG becomes
// a much smaller JPEG thumbnail, and a GIF with a transparent background
// stays transparent.
func Encode(w io.Writer, img image.Image) (contentType string, err error) {
	if opaque(img) {
		if err := jpeg.Encode(w, img, &jpeg.Options{Quality: jpegQuality}); err != nil {
			return "", fmt.Errorf("thumbnail: encoding jpeg: %w", err)
		}
		return "image/jpeg", nil
	}
	if err := png.Encode(w, img); err != nil {
		return "", fmt.Errorf("thumbnail: encoding png: %w", err)
	}
	return "image/png", nil
}

// opaque reports whether every pixel of img is fully opaque. The image
// types of the standard library answer it themselves (*image.RGBA, what
// Resize returns, scans its alpha bytes).
func opaque(img image.Image) bool {
	if o, ok := img.(interface{ Opaque() bool }); ok {
		return o.Opaque()
	}
	b := img.Bounds()
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			if _, _, _, a := img.At(x, y).RGBA(); a != 0xffff {
				return false
			}
		}
	}
	return true
}
