package safetensors

import (
	"errors"
	"math"
	"math/rand/v2"
	"testing"
)

func TestParseDType(t *testing.T) {
	tests := []struct {
		in   string
		want DType
		size int
	}{
		{"F32", F32, 4},
		{"F16", F16, 2},
		{"BF16", BF16, 2},
		{"F64", F64, 8},
		{"I64", I64, 8},
		{"I32", I32, 4},
		{"I16", I16, 2},
		{"I8", I8, 1},
		{"U8", U8, 1},
		{"U16", U16, 2},
		{"U32", U32, 4},
		{"U64", U64, 8},
		{"BOOL", BOOL, 1},
		{"F8_E4M3", F8E4M3, 1},
		{"F8_E5M2", F8E5M2, 1},
		{"F8_E8M0", F8E8M0, 1},
		{"C64", C64, 8},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			d, err := ParseDType(tt.in)
			if err != nil || d != tt.want || d.Size() != tt.size || !d.Valid() {
				t.Errorf("ParseDType(%q) = %q (size %d), %v; want %q (size %d)", tt.in, d, d.Size(), err, tt.want, tt.size)
			}
		})
	}
	for _, bad := range []string{"", "f32", "F4", "F6_E2M3", "FLOAT", "F32 "} {
		t.Run("bad/"+bad, func(t *testing.T) {
			if d, err := ParseDType(bad); !errors.Is(err, ErrDType) {
				t.Errorf("ParseDType(%q) = %q, %v; want ErrDType", bad, d, err)
			}
			if DType(bad).Size() != 0 || DType(bad).Valid() {
				t.Errorf("DType(%q) has size %d", bad, DType(bad).Size())
			}
		})
	}
}

// f16Reference decodes half-precision bits in float64 arithmetic.
func f16Reference(h uint16) float64 {
	sign := 1.0
	if h&0x8000 != 0 {
		sign = -1
	}
	e := int(h>>10) & 0x1f
	m := float64(h & 0x3ff)
	switch e {
	case 0:
		return sign * math.Ldexp(m, -24)
	case 0x1f:
		if m != 0 {
			return math.NaN()
		}
		return sign * math.Inf(1)
	}
	return sign * math.Ldexp(1+m/1024, e-15)
}

func TestF16ToFloat32Exhaustive(t *testing.T) {
	for i := range 1 << 16 {
		h := uint16(i)
		got := F16ToFloat32(h)
		want := f16Reference(h)
		if math.IsNaN(want) {
			// NaN keeps its sign and payload.
			wantBits := uint32(h&0x8000)<<16 | 0x7f800000 | uint32(h&0x3ff)<<13
			if math.Float32bits(got) != wantBits {
				t.Fatalf("F16ToFloat32(%#04x) = %#08x, want %#08x", h, math.Float32bits(got), wantBits)
			}
			continue
		}
		if math.Float32bits(got) != math.Float32bits(float32(want)) {
			t.Fatalf("F16ToFloat32(%#04x) = %g (%#08x), want %g", h, got, math.Float32bits(got), want)
		}
		// Every half is a float32, so converting back is exact.
		if back := Float32ToF16(got); back != h {
			t.Fatalf("Float32ToF16(F16ToFloat32(%#04x)) = %#04x", h, back)
		}
	}
}

func TestBF16RoundTripExhaustive(t *testing.T) {
	for i := range 1 << 16 {
		h := uint16(i)
		f := BF16ToFloat32(h)
		if math.Float32bits(f) != uint32(h)<<16 {
			t.Fatalf("BF16ToFloat32(%#04x) = %#08x", h, math.Float32bits(f))
		}
		back := Float32ToBF16(f)
		if f != f { // NaN: must stay NaN
			if b := BF16ToFloat32(back); b == b || back&0x8000 != h&0x8000 {
				t.Fatalf("Float32ToBF16(NaN %#08x) = %#04x", math.Float32bits(f), back)
			}
			continue
		}
		if back != h {
			t.Fatalf("Float32ToBF16(BF16ToFloat32(%#04x)) = %#04x", h, back)
		}
	}
}

func TestHalfSpecialValues(t *testing.T) {
	inf := float32(math.Inf(1))
	tests := []struct {
		name string
		f16  uint16
		bf16 uint16
		f    float32
	}{
		{"zero", 0x0000, 0x0000, 0},
		{"negative zero", 0x8000, 0x8000, float32(math.Copysign(0, -1))},
		{"one", 0x3c00, 0x3f80, 1},
		{"minus two", 0xc000, 0xc000, -2},
		{"f16 max", 0x7bff, 0x4780, 65504},
		{"f16 smallest normal", 0x0400, 0x3880, 0x1p-14},
		{"f16 smallest subnormal", 0x0001, 0x3380, 0x1p-24},
		{"f16 largest subnormal", 0x03ff, 0x3880, 0x3ffp-24},
		{"inf", 0x7c00, 0x7f80, inf},
		{"minus inf", 0xfc00, 0xff80, -inf},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := F16ToFloat32(tt.f16); math.Float32bits(got) != math.Float32bits(tt.f) {
				t.Errorf("F16ToFloat32(%#04x) = %g, want %g", tt.f16, got, tt.f)
			}
			if got := Float32ToF16(tt.f); got != tt.f16 {
				t.Errorf("Float32ToF16(%g) = %#04x, want %#04x", tt.f, got, tt.f16)
			}
			// BF16 cannot hold every value exactly; the table lists
			// the nearest.
			if got := Float32ToBF16(tt.f); got != tt.bf16 {
				t.Errorf("Float32ToBF16(%g) = %#04x, want %#04x", tt.f, got, tt.bf16)
			}
		})
	}
	for _, nan := range []uint32{0x7fc00000, 0xffc00000, 0x7f800001, 0x7fbfffff} {
		f := math.Float32frombits(nan)
		if h := Float32ToF16(f); F16ToFloat32(h) == F16ToFloat32(h) || h&0x8000 != uint16(nan>>16)&0x8000 {
			t.Errorf("Float32ToF16(NaN %#08x) = %#04x, not a NaN of that sign", nan, h)
		}
		if h := Float32ToBF16(f); BF16ToFloat32(h) == BF16ToFloat32(h) {
			t.Errorf("Float32ToBF16(NaN %#08x) = %#04x, not a NaN", nan, h)
		}
	}
	// Rounding at the edges: ties go to even, overflow goes to Inf,
	// underflow to zero.
	edges := []struct {
		f    float32
		want uint16
	}{
		{65519, 0x7bff},        // below the midpoint to 2¹⁶
		{65520, 0x7c00},        // midpoint: ties to even, which is Inf
		{0x1p-25, 0x0000},      // half the smallest subnormal: ties to 0
		{0x1.000002p-25, 0x01}, // just above: rounds up
		{0x1p-26, 0x0000},
		{1 + 0x1p-11, 0x3c00},   // tie between 1 and 1+2⁻¹⁰: even
		{1 + 3*0x1p-11, 0x3c02}, // tie between odd and even: even
		{0x1.ffcp-15, 0x0400},   // largest subnormal + half ulp → smallest normal
		{float32(math.MaxFloat32), 0x7c00},
	}
	for _, e := range edges {
		if got := Float32ToF16(e.f); got != e.want {
			t.Errorf("Float32ToF16(%g) = %#04x, want %#04x", e.f, got, e.want)
		}
	}
	if got := Float32ToBF16(math.MaxFloat32); got != 0x7f80 {
		t.Errorf("Float32ToBF16(MaxFloat32) = %#04x, want Inf", got)
	}
}

// roundReference rounds x, a finite non-negative value, to the nearest of the
// codes 0..maxCode (decoded by decode, increasing), ties to the even code;
// infCode, decoding to infValue for rounding purposes, lies above maxCode.
func roundReference(x float64, decode func(uint16) float64, maxCode uint16, infValue float64) uint16 {
	lo, hi := 0, int(maxCode)+1 // find the last code <= x
	for hi-lo > 1 {
		mid := (lo + hi) / 2
		if decode(uint16(mid)) <= x {
			lo = mid
		} else {
			hi = mid
		}
	}
	c := uint16(lo)
	a := decode(c)
	b := infValue
	if c < maxCode {
		b = decode(c + 1)
	}
	switch da, db := x-a, b-x; {
	case da < db:
		return c
	case db < da:
		return c + 1
	case c&1 == 0:
		return c
	default:
		return c + 1
	}
}

func TestFloat32ToHalfRounding(t *testing.T) {
	f16 := func(h uint16) float64 { return float64(F16ToFloat32(h)) }
	bf16 := func(h uint16) float64 { return float64(BF16ToFloat32(h)) }
	check := func(f float32) {
		t.Helper()
		if f != f || math.IsInf(float64(f), 0) {
			return
		}
		x := math.Abs(float64(f))
		sign := uint16(math.Float32bits(f)>>16) & 0x8000
		if want := sign | roundReference(x, f16, 0x7bff, 0x1p16); Float32ToF16(f) != want {
			t.Fatalf("Float32ToF16(%g = %#08x) = %#04x, want %#04x", f, math.Float32bits(f), Float32ToF16(f), want)
		}
		if want := sign | roundReference(x, bf16, 0x7f7f, 0x1p128); Float32ToBF16(f) != want {
			t.Fatalf("Float32ToBF16(%g = %#08x) = %#04x, want %#04x", f, math.Float32bits(f), Float32ToBF16(f), want)
		}
	}
	// Midpoints between neighbouring halves and their neighbours.
	for h := uint16(0); h < 0x7bff; h++ {
		mid := float32((f16(h) + f16(h+1)) / 2)
		for _, f := range []float32{mid, math.Nextafter32(mid, 0), math.Nextafter32(mid, 1e9)} {
			check(f)
			check(-f)
		}
	}
	for h := uint16(0); h < 0x7f7f; h++ {
		mid := float32((bf16(h) + bf16(h+1)) / 2)
		check(mid)
		check(math.Nextafter32(mid, 0))
	}
	r := rand.New(rand.NewPCG(1, 2))
	for range 200_000 {
		check(math.Float32frombits(r.Uint32()))
	}
}
