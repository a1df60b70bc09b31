package thumbnail

import (
	"fmt"
	"image"

	"golang.org/x/image/draw"
)

// maxSide bounds requested sides before any arithmetic: with image sides
// below 2^31, products of a side and a requested side stay within int64.
// Requests beyond it only ever mean "no limit", since we never upscale.
const maxSide = 1 << 30

// Dimensions returns the size of the thumbnail Resize makes of a picture
// of srcW x srcH for a request of w x h with method m. When it equals the
// source size, a caller may serve the original instead, as the spec asks
// for content smaller than the request. It is 0, 0 for arguments Resize
// refuses: a size that is not positive or an unknown method.
func Dimensions(srcW, srcH, w, h int, m Method) (int, int) {
	if srcW <= 0 || srcH <= 0 || w <= 0 || h <= 0 || m != Crop && m != Scale {
		return 0, 0
	}
	_, ow, oh := plan(srcW, srcH, w, h, m)
	return ow, oh
}

// plan decides which part of a srcW x srcH picture (crop, origin-based)
// becomes a thumbnail of ow x oh. No output side exceeds its source side
// (no upscaling), and none is below 1. All arguments must be positive.
//
// scale: the largest size within w x h with the source's aspect ratio,
// capped at the source size.
//
// crop: the largest centred region with the requested aspect ratio w:h,
// shrunk to w x h if it is larger. A source smaller than the request thus
// gives a thumbnail of the requested shape (a square avatar stays square)
// rather than one of the requested size; the client scales it up.
func plan(srcW, srcH, w, h int, m Method) (crop image.Rectangle, ow, oh int) {
	sw, sh := int64(srcW), int64(srcH)
	rw, rh := int64(min(w, maxSide)), int64(min(h, maxSide))
	crop = image.Rect(0, 0, srcW, srcH)
	switch m {
	case Crop:
		cw, ch := sw, sh
		if sw*rh > sh*rw { // source relatively wider: keep its height
			cw = max(1, divRound(sh*rw, rh))
		} else {
			ch = max(1, divRound(sw*rh, rw))
		}
		x0, y0 := (sw-cw)/2, (sh-ch)/2
		crop = image.Rect(int(x0), int(y0), int(x0+cw), int(y0+ch))
		return crop, int(min(rw, cw)), int(min(rh, ch))
	default: // Scale
		if rw >= sw && rh >= sh {
			return crop, srcW, srcH
		}
		// Exactly one side limits; that side is below its source side.
		if sw*rh >= sh*rw {
			return crop, int(rw), int(max(1, divRound(sh*rw, sw)))
		}
		return crop, int(max(1, divRound(sw*rh, sh))), int(rh)
	}
}

// divRound is a/b rounded to nearest, for a >= 0 and b > 0.
func divRound(a, b int64) int64 { return (a + b/2) / b }

// Resize makes a thumbnail of img of at most width x height with method m
// (see plan). Requests larger than the image never upscale. img may be the
// view Decode returns for a rotated JPEG: the source is scaled as stored
// and only the thumbnail turned.
//
// Memory besides the result is proportional to the thumbnail, not the
// source: under 200 bytes per thumbnail pixel (see resample) and one row
// of the source. The result itself is at most the source's size, when the
// request is larger than the source; callers that take arbitrary request
// sizes may still want to bound them (the spec's sizes go up to 800x600).
func Resize(img image.Image, width, height int, m Method) (*image.RGBA, error) {
	if width <= 0 || height <= 0 {
		return nil, fmt.Errorf("thumbnail: invalid size %dx%d", width, height)
	}
	if m != Crop && m != Scale {
		return nil, fmt.Errorf("thumbnail: unknown method %q", m)
	}
	src, o := img, identity
	if oi, ok := img.(*orientedImage); ok {
		src, o = oi.src, oi.o
	}
	sb := src.Bounds()
	shownW, shownH := sb.Dx(), sb.Dy()
	if o.swapsAxes() {
		shownW, shownH = shownH, shownW
	}
	if shownW <= 0 || shownH <= 0 {
		return nil, fmt.Errorf("thumbnail: empty image %v", sb)
	}
	crop, ow, oh := plan(shownW, shownH, width, height, m)
	sr := o.rectToStored(crop, sb)
	tw, th := ow, oh
	if o.swapsAxes() {
		tw, th = th, tw
	}
	dst := image.NewRGBA(image.Rect(0, 0, tw, th))
	if sr.Dx() == tw && sr.Dy() == th {
		draw.Draw(dst, dst.Bounds(), src, sr.Min, draw.Src)
	} else {
		resample(dst, src, sr)
	}
	if o == identity {
		return dst, nil
	}
	return o.orient(dst), nil
}

// resample scales the sr part of src onto all of dst.
//
// Thumbnails shrink by large factors (a 4000x3000 photo to 320x240 is
// 12x). ApproxBiLinear is fast because it reads only the 4 source pixels
// nearest each output pixel: it skips most of the source, so fine detail
// aliases into moiré and a fine pattern into noise (TestDownscaleDoesNotAlias).
// x/image/draw's kernels widen with the factor and weigh every source
// pixel under them, which is right but costs float multiply-adds per source
// pixel and tap, and a temporary of 32 bytes per thumbnail column and
// source row: Catmull-Rom alone took 57 ms and 11 MiB to take a decoded
// 1920x1080 JPEG to 320x180, more than the 33 ms of decoding it.
//
// So, like libvips' shrink-then-reduce, a factor of 4 or more is mostly
// taken first by an integer box average (shrink), in which every source
// pixel counts equally, so nothing aliases; Catmull-Rom, sharper than
// BiLinear at edges, then does the last 2-4x on a picture k² times
// smaller: 17 ms and 5 MiB for the same picture.
func resample(dst *image.RGBA, src image.Image, sr image.Rectangle) {
	// k = floor(factor/2) per axis leaves a factor of [2, 4) to the kernel.
	kx := sr.Dx() / dst.Rect.Dx() / 2
	ky := sr.Dy() / dst.Rect.Dy() / 2
	if kx > 1 || ky > 1 {
		src, sr = shrink(src, sr, min(max(kx, 1), maxBlock), min(max(ky, 1), maxBlock))
	}
	draw.CatmullRom.Scale(dst, dst.Bounds(), src, sr, draw.Src, nil)
}

// maxBlock bounds shrink's block sides so that a block's channel sum
// (255 * maxBlock²) fits in a uint32. Only absurd factors (a 10000x10000
// picture to a few pixels) reach it; the kernel then does more of the work.
const maxBlock = 4096

// shrink averages kx x ky blocks of the sr part of src into one pixel each.
// The sr.Dx()%kx columns and sr.Dy()%ky rows that make no whole block are
// left out, evenly from both sides (less than kx source pixels: under half
// a thumbnail pixel, given how kx is chosen). Averages are of
// premultiplied RGBA, which is what weighs colour by coverage.
//
// It reads src one row at a time through draw.Draw, which converts the
// common decoded types (YCbCr, Gray, NRGBA, Paletted...) fast, so the only
// large allocation is the result.
func shrink(src image.Image, sr image.Rectangle, kx, ky int) (*image.RGBA, image.Rectangle) {
	ow, oh := sr.Dx()/kx, sr.Dy()/ky
	x0 := sr.Min.X + (sr.Dx()-ow*kx)/2
	y0 := sr.Min.Y + (sr.Dy()-oh*ky)/2
	out := image.NewRGBA(image.Rect(0, 0, ow, oh))
	row := image.NewRGBA(image.Rect(0, 0, ow*kx, 1))
	sums := make([]uint32, 4*ow) // see maxBlock
	n := uint32(kx * ky)
	for oy := range oh {
		clear(sums)
		for j := range ky {
			draw.Draw(row, row.Rect, src, image.Pt(x0, y0+oy*ky+j), draw.Src)
			p := row.Pix
			for ox := range ow {
				block := p[4*ox*kx : 4*(ox+1)*kx]
				var r, g, b, a uint32
				for i := 0; i+4 <= len(block); i += 4 {
					q := block[i : i+4 : i+4]
					r += uint32(q[0])
					g += uint32(q[1])
					b += uint32(q[2])
					a += uint32(q[3])
				}
				s := sums[4*ox : 4*ox+4 : 4*ox+4]
				s[0] += r
				s[1] += g
				s[2] += b
				s[3] += a
			}
		}
		dst := out.Pix[oy*out.Stride : oy*out.Stride+4*ow]
		for i, s := range sums {
			dst[i] = uint8((s + n/2) / n)
		}
	}
	return out, out.Rect
}
