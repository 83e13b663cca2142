package kernel

import (
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/cpu"
)

// Path names a set of kernels: the SIMD instructions they use.
type Path string

// The kernel paths, fastest first. Every path computes each output element
// in the same order of operations (see tileRows), and the two SIMD paths
// agree bit for bit; the portable path rounds products separately.
const (
	PathAVX512   Path = "avx512"
	PathAVX2     Path = "avx2"
	PathPortable Path = "portable"
)

// kernelSet is the tile kernel of each float format on one path.
type kernelSet struct {
	path Path
	f32  tiling[float32, float32]
	bf16 tiling[float32, uint16]
	f16  tiling[float32, uint16]
	// widenBF16 and widenF16 widen a row of 16-bit floats exactly.
	widenBF16, widenF16 func(dst []float32, src []uint16)
	// bf16Widen, where set, is the BF16 tile that also stores the
	// weights it widens (see mulHalf).
	bf16Widen widenTileFunc
}

var portableKernels = kernelSet{
	path:      PathPortable,
	f32:       tileGo(widenF32),
	bf16:      tileGo(widenBF16),
	f16:       tileGo(widenF16),
	widenBF16: widenRowsGo(widenBF16),
	widenF16:  widenRowsGo(widenF16),
}

// kernels is the set in use: the fastest this CPU runs, unless the
// MOEGRID_KERNEL environment variable names another (for tests and
// benchmarks of each path).
var kernels = chooseKernels()

// softwarePrefetch is whether the SIMD tiles prefetch their weights in
// software: the CPU's vendor decides (prefetchByDefault), unless
// MOEGRID_PREFETCH is on or off (for benchmarks of both).
var softwarePrefetch = choosePrefetch()

func choosePrefetch() bool {
	switch v := os.Getenv("MOEGRID_PREFETCH"); v {
	case "":
		return prefetchByDefault()
	case "on":
		return true
	case "off":
		return false
	default:
		panic(fmt.Sprintf("MOEGRID_PREFETCH: %q is neither on nor off", v))
	}
}

func chooseKernels() kernelSet {
	if p := os.Getenv("MOEGRID_KERNEL"); p != "" {
		k, err := kernelsFor(Path(p))
		if err != nil {
			panic(fmt.Sprintf("MOEGRID_KERNEL: %v", err))
		}
		return k
	}
	for _, p := range []Path{PathAVX512, PathAVX2} {
		if k, err := kernelsFor(p); err == nil {
			return k
		}
	}
	return portableKernels
}

// Supported reports whether this CPU runs the path.
func (p Path) Supported() bool {
	_, err := kernelsFor(p)
	return err == nil
}

// kernelsFor returns the kernels of path p, or an error if this CPU cannot
// run them.
func kernelsFor(p Path) (kernelSet, error) {
	switch p {
	case PathPortable:
		return portableKernels, nil
	case PathAVX512, PathAVX2:
		if k, ok := simdKernels(p, softwarePrefetch); ok {
			return k, nil
		}
		return kernelSet{}, fmt.Errorf("kernel: this CPU does not run the %s kernels", p)
	}
	return kernelSet{}, fmt.Errorf("kernel: unknown path %q (want avx512, avx2 or portable)", p)
}

// CurrentPath is the path in use.
func CurrentPath() Path { return kernels.path }

// UsePath switches every kernel to path p and returns a function that
// switches back. It is for tests and benchmarks, and must not be called
// while kernels run.
func UsePath(p Path) (restore func(), err error) {
	k, err := kernelsFor(p)
	if err != nil {
		return nil, err
	}
	old := kernels
	kernels = k
	return func() { kernels = old }, nil
}

// UsePrefetch switches the SIMD tiles of the path in use to the variant
// that prefetches its weights in software (on) or the one that leaves it
// to the hardware, and returns a function that switches back. Both give
// the same bits. It is for tests and benchmarks, and must not be called
// while kernels run.
func UsePrefetch(on bool) (restore func()) {
	oldKernels, oldPrefetch := kernels, softwarePrefetch
	softwarePrefetch = on
	if k, err := kernelsFor(kernels.path); err == nil {
		kernels = k
	}
	return func() { kernels, softwarePrefetch = oldKernels, oldPrefetch }
}

// hasAVX512 is what the AVX-512 kernels need: foundation, and the byte/word
// and vector-length extensions for the 16-bit weight loads.
var hasAVX512 = cpu.X86.HasAVX512F && cpu.X86.HasAVX512BW && cpu.X86.HasAVX512VL

// hasAVX2 is what the AVX2 kernels need, F16C for the F16 conversion
// included.
var hasAVX2 = cpu.X86.HasAVX2 && cpu.X86.HasFMA && cpu.X86.HasF16C

func unsafeSlice[W any](p *W, n int) []W { return unsafe.Slice(p, n) }
