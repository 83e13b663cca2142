// Command tilegen writes model/kernel/tile_amd64.s, the SIMD tile kernels.
//
// The kernels are unrolled per tile shape (1 to 4 input rows times 4 weight
// rows) and per weight format, which is many lines of assembly that differ
// only in registers and in the instruction that loads a weight vector; the
// generator holds each of those once. Run it through go generate in
// model/kernel (make generate); make verify-generate fails when the
// committed file is stale.
package main

import (
	"flag"
	"fmt"
	"log"
	"os"
	"strings"
)

func main() {
	out := flag.String("out", "tile_amd64.s", "file to write")
	flag.Parse()
	var b strings.Builder
	b.WriteString(header)
	for _, v := range variants {
		for _, f := range formats {
			avx512Tile(&b, f, v)
		}
	}
	avx512Tile(&b, formats[1], widenVariant)
	b.WriteString(reduceY)
	for _, v := range variants {
		for _, f := range formats {
			avx2Tile(&b, f, v)
		}
	}
	b.WriteString(widen)
	b.WriteString(prefetch)
	bf16DotTile(&b)
	if err := os.WriteFile(*out, []byte(b.String()), 0o644); err != nil {
		log.Fatal(err)
	}
}

// format is one weight format: how a weight vector of 16 values is loaded
// into a register.
type format struct {
	name, elem, doc string
	size            int // bytes per weight
	// avx512 loads 16 weights at column AX of row base into Z register z.
	avx512 func(base, z string) []string
	// avx2 loads 8 weights at column AX plus half·8 of row base into Y
	// register y.
	avx2 func(base string, half int, y string) []string
}

var formats = []format{
	{
		name: "F32", elem: "float32", doc: "float32 weights", size: 4,
		avx512: func(base, z string) []string { return []string{fmt.Sprintf("VMOVUPS (%s)(AX*4), %s", base, z)} },
		avx2: func(base string, half int, y string) []string {
			return []string{fmt.Sprintf("VMOVUPS %d(%s)(AX*4), %s", 32*half, base, y)}
		},
	},
	{
		name: "BF16", elem: "uint16", doc: "bfloat16 weights, widened exactly by a 16-bit shift", size: 2,
		avx512: func(base, z string) []string {
			return []string{fmt.Sprintf("VPMOVZXWD (%s)(AX*2), %s", base, z), fmt.Sprintf("VPSLLD $16, %s, %s", z, z)}
		},
		avx2: func(base string, half int, y string) []string {
			return []string{fmt.Sprintf("VPMOVZXWD %d(%s)(AX*2), %s", 16*half, base, y), fmt.Sprintf("VPSLLD $16, %s, %s", y, y)}
		},
	},
	{
		name: "F16", elem: "uint16", doc: "IEEE half weights, converted exactly", size: 2,
		avx512: func(base, z string) []string { return []string{fmt.Sprintf("VCVTPH2PS (%s)(AX*2), %s", base, z)} },
		avx2: func(base string, half int, y string) []string {
			return []string{fmt.Sprintf("VCVTPH2PS %d(%s)(AX*2), %s", 16*half, base, y)}
		},
	},
}

// variant is one way of streaming the weights: with software prefetches
// ahead of the loads, which Intel Xeons want, or with the hardware
// prefetchers alone, which AMD Zen 4 streams faster with (kernel's
// softwarePrefetch chooses).
type variant struct {
	suffix   string
	prefetch bool
	// store is whether each widened weight vector is also stored, at
	// column AX of float32 rows d0-d3, so that a batch of more than one
	// tile of input rows widens its weights once, in its first tile.
	store bool
}

var (
	variants     = []variant{{suffix: "", prefetch: true}, {suffix: "NoPrefetch"}}
	widenVariant = variant{suffix: "Widen", store: true}
)

var (
	weightRows = []string{"R9", "R10", "R11", "R12"}
	inputRows  = []string{"SI", "R13", "BX", "DX"}
	shapes     = []struct {
		rows  int
		label string
	}{{1, "one"}, {2, "two"}, {3, "three"}, {4, "four"}}
)

// line writes one instruction.
func line(b *strings.Builder, format string, args ...any) {
	fmt.Fprintf(b, "\t"+format+"\n", args...)
}

// dispatch jumps to the tile of R14 input rows; one row falls through.
func dispatch(b *strings.Builder, prefix string) {
	for _, s := range []struct {
		rows  int
		label string
	}{{4, "four"}, {3, "three"}, {2, "two"}} {
		line(b, "CMPQ R14, $%d", s.rows)
		line(b, "JEQ  %s%s", prefix, s.label)
	}
	b.WriteString("\n")
}

// avx512Tile writes the AVX-512 kernel of one format: for each tile shape,
// 4·rows Z accumulators, the four weight vectors loaded once per 16 columns
// and multiplied with each input row.
func avx512Tile(b *strings.Builder, f format, v variant) {
	args, frame := "", 48
	if v.store {
		args, frame = ", d0, d1, d2, d3 *float32", 80
	}
	fmt.Fprintf(b, "// func tile%sAVX512%s(acc *[16]float32, x *float32, xstride, nx int, w *[4]*%s, k int%s)\n", f.name, v.suffix, f.elem, args)
	fmt.Fprintf(b, "// %s%s.\n", f.doc, v.doc())
	fmt.Fprintf(b, "TEXT ·tile%sAVX512%s(SB), NOSPLIT, $0-%d\n\tARGS\n", f.name, v.suffix, frame)
	dispatch(b, "")
	for _, s := range shapes {
		fmt.Fprintf(b, "%s:\n", s.label)
		for a := range 4 * s.rows {
			line(b, "VPXORD Z%d, Z%d, Z%d", a, a, a)
		}
		fmt.Fprintf(b, "%sloop:\n", s.label)
		for j, base := range weightRows {
			for _, ins := range f.avx512(base, fmt.Sprintf("Z%d", 16+j)) {
				line(b, "%s", ins)
			}
		}
		for _, base := range weightRows {
			v.prefetchRow(b, base, f)
		}
		if v.store {
			for j := range weightRows {
				line(b, "MOVQ d%d+%d(FP), R15", j, 48+8*j)
				line(b, "VMOVUPS Z%d, (R15)(AX*4)", 16+j)
			}
		}
		for i := range s.rows {
			line(b, "LOADX_Z(%s, Z%d)", inputRows[i], 20+i)
		}
		for i := range s.rows {
			line(b, "FMA4_Z(Z%d, Z%d, Z%d, Z%d, Z%d)", 20+i, 4*i, 4*i+1, 4*i+2, 4*i+3)
		}
		line(b, "ADDQ $16, AX")
		line(b, "CMPQ AX, CX")
		line(b, "JLT  %sloop", s.label)
		for a := range 4 * s.rows {
			line(b, "REDUCE_Z(Z%d, Y%d, %d)", a, a, 4*a)
		}
		line(b, "VZEROUPPER")
		line(b, "RET")
		b.WriteString("\n")
	}
}

// avx2Tile writes the AVX2 kernel of one format: one input row at a time,
// each output's 16 lanes in two Y accumulators.
func avx2Tile(b *strings.Builder, f format, v variant) {
	fmt.Fprintf(b, "// func tile%sAVX2%s(acc *[16]float32, x *float32, xstride, nx int, w *[4]*%s, k int)\n", f.name, v.suffix, f.elem)
	fmt.Fprintf(b, "TEXT ·tile%sAVX2%s(SB), NOSPLIT, $0-48\n\tARGS\nrow:\n", f.name, v.suffix)
	for a := range 8 {
		line(b, "VXORPS Y%d, Y%d, Y%d", a, a, a)
	}
	b.WriteString("loop:\n")
	line(b, "VMOVUPS (SI)(AX*4), Y8")
	line(b, "VMOVUPS 32(SI)(AX*4), Y9")
	for j, base := range weightRows {
		for half, y := range []string{"Y10", "Y11"} {
			for _, ins := range f.avx2(base, half, y) {
				line(b, "%s", ins)
			}
		}
		line(b, "VFMADD231PS Y10, Y8, Y%d", 2*j)
		line(b, "VFMADD231PS Y11, Y9, Y%d", 2*j+1)
		v.prefetchRow(b, base, f)
	}
	line(b, "ADDQ $16, AX")
	line(b, "CMPQ AX, CX")
	line(b, "JLT  loop")
	for j := range 4 {
		line(b, "REDUCE_Y(Y%d, Y%d, %d)", 2*j, 2*j+1, 4*j)
	}
	b.WriteString(nextRow)
}

// prefetchRow writes the prefetch of the weights of row base, if the
// variant has one.
func (v variant) prefetchRow(b *strings.Builder, base string, f format) {
	if v.prefetch {
		line(b, "PREFETCH(%s, %d)", base, f.size)
	}
}

func (v variant) doc() string {
	switch {
	case v.store:
		return "; each widened weight vector also stored at column AX of dj, without software prefetch"
	case v.prefetch:
		return ""
	}
	return "; no software prefetch"
}

// bf16DotTile writes the BF16 compute mode's kernel: VDPBF16PS over blocks
// of 32 columns, which the Go assembler does not know, so each is spelled
// out in bytes.
func bf16DotTile(b *strings.Builder) {
	b.WriteString(bf16DotHeader)
	dispatch(b, "d")
	for _, s := range shapes {
		label := "d" + s.label
		fmt.Fprintf(b, "%s:\n", label)
		for a := range 4 * s.rows {
			line(b, "VPXORD Z%d, Z%d, Z%d", a, a, a)
		}
		fmt.Fprintf(b, "%sloop:\n", label)
		for j, base := range weightRows {
			line(b, "VMOVUPS (%s)(AX*2), Z%d", base, 16+j)
		}
		for i := range s.rows {
			line(b, "VMOVUPS (%s)(AX*2), Z%d", inputRows[i], 20+i)
		}
		for i := range s.rows {
			for j := range 4 {
				b.WriteString(vdpbf16ps(4*i+j, 20+i, 16+j))
			}
		}
		line(b, "ADDQ $32, AX")
		line(b, "CMPQ AX, CX")
		line(b, "JLT  %sloop", label)
		for a := range 4 * s.rows {
			line(b, "REDUCE_Z(Z%d, Y%d, %d)", a, a, 4*a)
		}
		line(b, "VZEROUPPER")
		line(b, "RET")
		b.WriteString("\n")
	}
}

// vdpbf16ps encodes VDPBF16PS zdst += pairs of zsrc1 · zsrc2, register form:
// EVEX.512.F3.0F38.W0 52 /r.
func vdpbf16ps(dst, src1, src2 int) string {
	bit := func(v, i int) int { return (v >> i) & 1 }
	p0 := (1-bit(dst, 3))<<7 | (1-bit(src2, 4))<<6 | (1-bit(src2, 3))<<5 | (1-bit(dst, 4))<<4 | 0b10
	p1 := (^src1&0xF)<<3 | 1<<2 | 0b10
	p2 := 0b10<<5 | (1-bit(src1, 4))<<3
	modrm := 0xC0 | (dst&7)<<3 | src2&7
	var bs []string
	for _, v := range []int{0x62, p0, p1, p2, 0x52, modrm} {
		bs = append(bs, fmt.Sprintf("BYTE $0x%02x", v))
	}
	return fmt.Sprintf("\t%s // VDPBF16PS Z%d, Z%d, Z%d\n", strings.Join(bs, "; "), src2, src1, dst)
}

const header = `// Code generated by model/kernel/internal/tilegen; DO NOT EDIT.

#include "textflag.h"

// Tile kernels: acc[i*4+j] = Σ_{c<k} x_i[c]·w_j[c] for i < nx ≤ 4 input rows
// (x_i = x + i·xstride floats) and j < 4 weight rows (w_j = w[j]), k a
// positive multiple of 16. Every output has a 16-lane accumulator (one Z
// register, or two Y registers on AVX2: lanes 0-7 and 8-15) updated with
// fused multiply-adds over the columns in order, then reduced in a fixed
// tree: lane i + lane i+8, then i + i+4, then i + i+2, then 0 + 1. The tree
// and the lanes are the same for every tile shape and on both paths, which
// is what makes the results batch-invariant and equal across AVX-512 and
// AVX2. float.go's tileGo documents the same order.
//
// func tileXXX(acc *[16]float32, x *float32, xstride, nx int, w *[4]*T, k int)

// Argument loading shared by every kernel: DI acc, SI x_0, R13 x_1, BX x_2,
// DX x_3, R8 the x row stride in bytes, R9-R12 the weight rows, CX k, AX
// the column index (from 0), R14 nx.
#define ARGS \
	MOVQ acc+0(FP), DI \
	MOVQ x+8(FP), SI \
	MOVQ xstride+16(FP), R8 \
	SHLQ $2, R8 \
	MOVQ nx+24(FP), R14 \
	MOVQ w+32(FP), AX \
	MOVQ 0(AX), R9 \
	MOVQ 8(AX), R10 \
	MOVQ 16(AX), R11 \
	MOVQ 24(AX), R12 \
	MOVQ k+40(FP), CX \
	LEAQ (SI)(R8*1), R13 \
	LEAQ (R13)(R8*1), BX \
	LEAQ (BX)(R8*1), DX \
	XORQ AX, AX

// REDUCE_Z reduces the 16 lanes of Z register zn (whose lower halves are
// yn, xn) into the float32 at off(DI), with Z24-Z25 as scratch.
#define REDUCE_Z(zn, yn, off) \
	VEXTRACTF64X4 $1, zn, Y24 \
	VADDPS        Y24, yn, Y24 \
	VEXTRACTF32X4 $1, Y24, X25 \
	VADDPS        X25, X24, X24 \
	VMOVHLPS      X24, X24, X25 \
	VADDPS        X25, X24, X24 \
	VMOVSHDUP     X24, X25 \
	VADDSS        X25, X24, X24 \
	VMOVSS        X24, off(DI)

// FMA4_Z adds the products of x register xz with the four weight registers
// Z16-Z19 into the accumulators a0-a3.
#define FMA4_Z(xz, a0, a1, a2, a3) \
	VFMADD231PS Z16, xz, a0 \
	VFMADD231PS Z17, xz, a1 \
	VFMADD231PS Z18, xz, a2 \
	VFMADD231PS Z19, xz, a3

#define LOADX_Z(base, xz) VMOVUPS (base)(AX*4), xz

// PREFETCH asks for the weights 2 KiB ahead of column AX of row base
// (elements of size bytes). A decode step streams each weight once, four
// rows a tile, and the hardware prefetchers alone leave the core waiting
// on memory: ahead by 2 KiB, F32 and BF16 stream 10-25 % faster (Intel
// Xeon, 2 threads); past a row's end it fetches the next tile's row. On
// AMD Zen 4 the same prefetches make them 20 % slower, so each kernel also
// comes without them (the NoPrefetch kernels).
#define PREFETCH(base, size) PREFETCHT0 2048(base)(AX*size)

`

const reduceY = `// REDUCE_Y reduces the 16 lanes held in Y registers lo (lanes 0-7) and hi
// (8-15) into the float32 at off(DI), with Y14-Y15 as scratch.
#define REDUCE_Y(lo, hi, off) \
	VADDPS       hi, lo, Y14 \
	VEXTRACTF128 $1, Y14, X15 \
	VADDPS       X15, X14, X14 \
	VMOVHLPS     X14, X14, X15 \
	VADDPS       X15, X14, X14 \
	VMOVSHDUP    X14, X15 \
	VADDSS       X15, X14, X14 \
	VMOVSS       X14, off(DI)

`

const nextRow = `	// Next x row: the accumulators' outputs move on by 4 floats.
	DECQ R14
	JZ   done
	ADDQ R8, SI
	ADDQ $16, DI
	XORQ AX, AX
	JMP  row
done:
	VZEROUPPER
	RET

`

const bf16DotHeader = `// The fast BF16 compute mode: inputs already rounded to bfloat16, and the
// AVX-512 BF16 dot product, which adds the products of each pair of
// adjacent columns into one float32 lane per fused step. Each output has
// one 16-lane accumulator over blocks of 32 columns, reduced in the same
// tree as above. The Go assembler does not know VDPBF16PS, so it is
// spelled out in bytes (EVEX.512.F3.0F38.W0 52 /r, register form); the
// comment on each line gives the instruction.
//
// func tileBF16DotAVX512(acc *[16]float32, x *uint16, xstride, nx int, w *[4]*uint16, k int)
TEXT ·tileBF16DotAVX512(SB), NOSPLIT, $0-48
	MOVQ acc+0(FP), DI
	MOVQ x+8(FP), SI
	MOVQ xstride+16(FP), R8
	SHLQ $1, R8
	MOVQ nx+24(FP), R14
	MOVQ w+32(FP), AX
	MOVQ 0(AX), R9
	MOVQ 8(AX), R10
	MOVQ 16(AX), R11
	MOVQ 24(AX), R12
	MOVQ k+40(FP), CX
	LEAQ (SI)(R8*1), R13
	LEAQ (R13)(R8*1), BX
	LEAQ (BX)(R8*1), DX
	XORQ AX, AX
`

const widen = `// Row widening: dst[i] = float32(src[i]) exactly for i < n, n a positive
// multiple of 16.

// func widenBF16AVX512(dst *float32, src *uint16, n int)
TEXT ·widenBF16AVX512(SB), NOSPLIT, $0-24
	MOVQ dst+0(FP), DI
	MOVQ src+8(FP), SI
	MOVQ n+16(FP), CX
	XORQ AX, AX
wbf16z:
	VPMOVZXWD (SI)(AX*2), Z0
	VPSLLD    $16, Z0, Z0
	VMOVUPS   Z0, (DI)(AX*4)
	ADDQ      $16, AX
	CMPQ      AX, CX
	JLT       wbf16z
	VZEROUPPER
	RET

// func widenF16AVX512(dst *float32, src *uint16, n int)
TEXT ·widenF16AVX512(SB), NOSPLIT, $0-24
	MOVQ dst+0(FP), DI
	MOVQ src+8(FP), SI
	MOVQ n+16(FP), CX
	XORQ AX, AX
wf16z:
	VCVTPH2PS (SI)(AX*2), Z0
	VMOVUPS   Z0, (DI)(AX*4)
	ADDQ      $16, AX
	CMPQ      AX, CX
	JLT       wf16z
	VZEROUPPER
	RET

// func widenBF16AVX2(dst *float32, src *uint16, n int)
TEXT ·widenBF16AVX2(SB), NOSPLIT, $0-24
	MOVQ dst+0(FP), DI
	MOVQ src+8(FP), SI
	MOVQ n+16(FP), CX
	XORQ AX, AX
wbf16y:
	VPMOVZXWD (SI)(AX*2), Y0
	VPMOVZXWD 16(SI)(AX*2), Y1
	VPSLLD    $16, Y0, Y0
	VPSLLD    $16, Y1, Y1
	VMOVUPS   Y0, (DI)(AX*4)
	VMOVUPS   Y1, 32(DI)(AX*4)
	ADDQ      $16, AX
	CMPQ      AX, CX
	JLT       wbf16y
	VZEROUPPER
	RET

// func widenF16AVX2(dst *float32, src *uint16, n int)
TEXT ·widenF16AVX2(SB), NOSPLIT, $0-24
	MOVQ dst+0(FP), DI
	MOVQ src+8(FP), SI
	MOVQ n+16(FP), CX
	XORQ AX, AX
wf16y:
	VCVTPH2PS (SI)(AX*2), Y0
	VCVTPH2PS 16(SI)(AX*2), Y1
	VMOVUPS   Y0, (DI)(AX*4)
	VMOVUPS   Y1, 32(DI)(AX*4)
	ADDQ      $16, AX
	CMPQ      AX, CX
	JLT       wf16y
	VZEROUPPER
	RET

`

const prefetch = `// func prefetchT0(p *byte, n int)
// Asks for the n bytes at p (n a positive multiple of 64) to be brought into
// the caches, a line at a time, without waiting for them.
TEXT ·prefetchT0(SB), NOSPLIT, $0-16
	MOVQ p+0(FP), SI
	MOVQ n+8(FP), CX
	ADDQ SI, CX
pfloop:
	PREFETCHT0 (SI)
	ADDQ       $64, SI
	CMPQ       SI, CX
	JLT        pfloop
	RET

`
