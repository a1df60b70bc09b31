package thumbnail

// Pick chooses, among precomputed thumbnail sizes, the one to serve for a
// request of w x h with method m: the smallest (by area) of method m that
// is at least w x h, else the largest of method m. Without any size of
// method m it applies the same rule to all sizes, since a thumbnail made
// with the other method beats none. ok is false only when sizes is empty.
// Ties go to the size listed first.
func Pick(sizes []Size, w, h int, m Method) (Size, bool) {
	if s, ok := pick(sizes, w, h, func(s Size) bool { return s.Method == m }); ok {
		return s, true
	}
	return pick(sizes, w, h, func(Size) bool { return true })
}

func pick(sizes []Size, w, h int, use func(Size) bool) (Size, bool) {
	var covering, largest *Size
	for i := range sizes {
		s := &sizes[i]
		if !use(*s) {
			continue
		}
		if s.Width >= w && s.Height >= h && (covering == nil || area(*s) < area(*covering)) {
			covering = s
		}
		if largest == nil || area(*s) > area(*largest) {
			largest = s
		}
	}
	switch {
	case covering != nil:
		return *covering, true
	case largest != nil:
		return *largest, true
	}
	return Size{}, false
}

func area(s Size) int64 { return int64(s.Width) * int64(s.Height) }
