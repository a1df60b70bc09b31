package thumbnail

import (
	"encoding/binary"
	"image"
	"image/color"
)

// orientation is an EXIF orientation (TIFF tag 0x0112): how the stored
// pixels must be turned to show the picture upright. Phones store photos
// as the sensor saw them and set this tag instead of rotating.
type orientation uint8

const (
	identity   orientation = 1 // as stored
	flipH      orientation = 2 // mirrored left to right
	rotate180  orientation = 3
	flipV      orientation = 4 // mirrored top to bottom
	transpose  orientation = 5 // mirrored about the top-left to bottom-right diagonal
	rotate90   orientation = 6 // turn 90° clockwise to show
	transverse orientation = 7 // mirrored about the other diagonal
	rotate270  orientation = 8 // turn 90° anticlockwise to show
)

// swapsAxes reports whether the shown picture is the stored one on its side.
func (o orientation) swapsAxes() bool { return o >= transpose }

// toStored maps the shown pixel (x, y) of a picture whose stored pixels
// span w x h (from the origin) to the stored pixel it shows.
func (o orientation) toStored(x, y, w, h int) (int, int) {
	switch o {
	case flipH:
		return w - 1 - x, y
	case rotate180:
		return w - 1 - x, h - 1 - y
	case flipV:
		return x, h - 1 - y
	case transpose:
		return y, x
	case rotate90:
		return y, h - 1 - x
	case transverse:
		return w - 1 - y, h - 1 - x
	case rotate270:
		return w - 1 - y, x
	}
	return x, y
}

// rectToStored maps a rectangle of the shown picture (origin-based) to the
// rectangle of stored pixels it shows, in stored's coordinates.
func (o orientation) rectToStored(r image.Rectangle, stored image.Rectangle) image.Rectangle {
	w, h := stored.Dx(), stored.Dy()
	x0, y0 := o.toStored(r.Min.X, r.Min.Y, w, h)
	x1, y1 := o.toStored(r.Max.X-1, r.Max.Y-1, w, h)
	return image.Rect(min(x0, x1), min(y0, y1), max(x0, x1)+1, max(y0, y1)+1).Add(stored.Min)
}

// orient returns the shown picture of the stored pixels in m.
func (o orientation) orient(m *image.RGBA) *image.RGBA {
	b := m.Bounds()
	w, h := b.Dx(), b.Dy()
	if o.swapsAxes() {
		w, h = h, w
	}
	out := image.NewRGBA(image.Rect(0, 0, w, h))
	for y := range h {
		row := out.Pix[y*out.Stride : y*out.Stride+4*w]
		for x := range w {
			sx, sy := o.toStored(x, y, b.Dx(), b.Dy())
			i := m.PixOffset(b.Min.X+sx, b.Min.Y+sy)
			copy(row[4*x:4*x+4], m.Pix[i:i+4])
		}
	}
	return out
}

// orientedImage shows src turned by o (never identity). It is a view: the
// pixels stay as decoded, and Resize scales src directly and turns only the
// small result, instead of turning a full-size copy first.
type orientedImage struct {
	src image.Image
	o   orientation
}

func (m *orientedImage) ColorModel() color.Model { return m.src.ColorModel() }

func (m *orientedImage) Bounds() image.Rectangle {
	b := m.src.Bounds()
	if m.o.swapsAxes() {
		return image.Rect(0, 0, b.Dy(), b.Dx())
	}
	return image.Rect(0, 0, b.Dx(), b.Dy())
}

func (m *orientedImage) At(x, y int) color.Color {
	return m.RGBA64At(x, y)
}

func (m *orientedImage) RGBA64At(x, y int) color.RGBA64 {
	if !image.Pt(x, y).In(m.Bounds()) {
		return color.RGBA64{}
	}
	b := m.src.Bounds()
	sx, sy := m.o.toStored(x, y, b.Dx(), b.Dy())
	if s, ok := m.src.(image.RGBA64Image); ok {
		return s.RGBA64At(b.Min.X+sx, b.Min.Y+sy)
	}
	r, g, bl, a := m.src.At(b.Min.X+sx, b.Min.Y+sy).RGBA()
	return color.RGBA64{uint16(r), uint16(g), uint16(bl), uint16(a)}
}

// Opaque reports whether every pixel is opaque, if the source can tell.
func (m *orientedImage) Opaque() bool {
	o, ok := m.src.(interface{ Opaque() bool })
	return ok && o.Opaque()
}

// jpegOrientation finds the EXIF orientation in the segments of a JPEG
// header (from SOI up to the first scan, or as much of it as b holds). Any
// malformation means "as stored": a bad tag must not stop a thumbnail.
func jpegOrientation(b []byte) orientation {
	if len(b) < 2 || b[0] != 0xff || b[1] != 0xd8 {
		return identity
	}
	i := 2
	for i+4 <= len(b) {
		if b[i] != 0xff {
			return identity
		}
		marker := b[i+1]
		switch {
		case marker == 0xff: // fill byte before a marker
			i++
			continue
		case marker == 0x01 || marker >= 0xd0 && marker <= 0xd8: // no length
			i += 2
			continue
		case marker == 0xda || marker == 0xd9: // SOS, EOI: no header follows
			return identity
		}
		end := i + 2 + int(binary.BigEndian.Uint16(b[i+2:]))
		if end < i+4 || end > len(b) {
			return identity
		}
		if marker == 0xe1 { // APP1: EXIF, or XMP which exifOrientation skips
			if o, ok := exifOrientation(b[i+4 : end]); ok {
				return o
			}
		}
		i = end
	}
	return identity
}

// exifOrientation reads the orientation tag from IFD0 of an APP1 payload.
func exifOrientation(p []byte) (orientation, bool) {
	const header = "Exif\x00\x00"
	if len(p) < len(header)+8 || string(p[:len(header)]) != header {
		return 0, false
	}
	tiff := p[len(header):]
	var order binary.ByteOrder
	switch string(tiff[:2]) {
	case "II":
		order = binary.LittleEndian
	case "MM":
		order = binary.BigEndian
	default:
		return 0, false
	}
	if order.Uint16(tiff[2:]) != 42 {
		return 0, false
	}
	ifd := int64(order.Uint32(tiff[4:]))
	if ifd+2 > int64(len(tiff)) {
		return 0, false
	}
	n := int64(order.Uint16(tiff[ifd:]))
	for e := ifd + 2; e+12 <= int64(len(tiff)) && n > 0; e, n = e+12, n-1 {
		const tagOrientation, typeShort = 0x0112, 3
		if order.Uint16(tiff[e:]) != tagOrientation {
			continue
		}
		if order.Uint16(tiff[e+2:]) != typeShort || order.Uint32(tiff[e+4:]) != 1 {
			return 0, false
		}
		o := order.Uint16(tiff[e+8:])
		if o < uint16(identity) || o > uint16(rotate270) {
			return 0, false
		}
		return orientation(o), true
	}
	return 0, false
}
