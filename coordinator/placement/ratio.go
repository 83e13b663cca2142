package placement

import "math/bits"

// compareRatio compares a/b with c/d exactly and returns -1, 0 or +1.
// It requires a, c >= 0 and b, d > 0; the cross products are computed in
// 128 bits, so byte counts up to 2^63 never overflow.
func compareRatio(a, b, c, d int64) int {
	hi1, lo1 := bits.Mul64(uint64(a), uint64(d))
	hi2, lo2 := bits.Mul64(uint64(c), uint64(b))
	switch {
	case hi1 < hi2 || hi1 == hi2 && lo1 < lo2:
		return -1
	case hi1 == hi2 && lo1 == lo2:
		return 0
	}
	return 1
}
