#include "textflag.h"
#include "dot_amd64.h"

// Attention reads one KV head's slice of every cached position: a few
// cache lines a row stride apart, which with several heads are a page or
// more apart, too far for the hardware's prefetchers. Its kernels prefetch
// the row attendAhead positions ahead.
#define attendAhead 16

// func scoresAVX2(scores, q *float32, heads, d int, keys *float32, stride, n int, scale float32)
// scores[h·n+j] = dot(q[h·d:(h+1)·d], keys[j·stride:j·stride+d]) · scale
// for h < heads, j < n, each dot product as dotAVX2 computes it (four 8-lane
// accumulators, REDUCE); d is a positive multiple of 32, n positive.
TEXT ·scoresAVX2(SB), NOSPLIT, $0-60
	MOVQ         scores+0(FP), R9
	MOVQ         q+8(FP), SI
	MOVQ         heads+16(FP), DX
	MOVQ         d+24(FP), BX
	MOVQ         keys+32(FP), DI
	MOVQ         stride+40(FP), R8
	MOVQ         n+48(FP), CX
	MOVSS        scale+56(FP), X8
	SHLQ         $2, BX  // d in bytes
	SHLQ         $2, R8  // stride in bytes
	MOVQ         CX, R13
	SHLQ         $2, R13 // a head's scores in bytes
	MOVQ         R8, R10
	IMULQ        $attendAhead, R10

position:
	XORQ AX, AX
	LEAQ (DI)(R10*1), R14 // the row attendAhead positions on

prefetch:
	PREFETCHT0 (R14)(AX*1)
	ADDQ       $64, AX
	CMPQ       AX, BX
	JB         prefetch

	MOVQ SI, R11 // q of head h
	MOVQ R9, R12 // scores[h·n+j]
	MOVQ DX, R14 // heads left

head:
	ZERO_ACCUMULATORS
	XORQ AX, AX

dot:
	VMOVUPS     0(R11)(AX*1), Y4
	VMOVUPS     32(R11)(AX*1), Y5
	VMOVUPS     64(R11)(AX*1), Y6
	VMOVUPS     96(R11)(AX*1), Y7
	VFMADD231PS 0(DI)(AX*1), Y4, Y0
	VFMADD231PS 32(DI)(AX*1), Y5, Y1
	VFMADD231PS 64(DI)(AX*1), Y6, Y2
	VFMADD231PS 96(DI)(AX*1), Y7, Y3
	ADDQ        $128, AX
	CMPQ        AX, BX
	JB          dot

	REDUCE
	MULSS X8, X0
	MOVSS X0, (R12)
	ADDQ  R13, R12
	ADDQ  BX, R11
	DECQ  R14
	JNZ   head

	ADDQ $4, R9
	ADDQ R8, DI
	DECQ CX
	JNZ  position
	RET

// func accumulate32AVX2(acc, w, values *float32, stride, n int)
// For each position j < n in order: acc[i] = fma(w[j], values[j·stride+i],
// acc[i]) for i < 32, the 32 sums held in four 8-lane registers.
TEXT ·accumulate32AVX2(SB), NOSPLIT, $0-40
	MOVQ    acc+0(FP), DI
	MOVQ    w+8(FP), SI
	MOVQ    values+16(FP), DX
	MOVQ    stride+24(FP), R11
	MOVQ    n+32(FP), CX
	SHLQ    $2, R11 // stride in bytes
	MOVQ    R11, R12
	IMULQ   $attendAhead, R12
	VMOVUPS 0(DI), Y0
	VMOVUPS 32(DI), Y1
	VMOVUPS 64(DI), Y2
	VMOVUPS 96(DI), Y3

loop:
	PREFETCHT0   0(DX)(R12*1)
	PREFETCHT0   64(DX)(R12*1)
	VBROADCASTSS (SI), Y4
	VFMADD231PS  0(DX), Y4, Y0
	VFMADD231PS  32(DX), Y4, Y1
	VFMADD231PS  64(DX), Y4, Y2
	VFMADD231PS  96(DX), Y4, Y3
	ADDQ         $4, SI
	ADDQ         R11, DX
	DECQ         CX
	JNZ          loop

	VMOVUPS Y0, 0(DI)
	VMOVUPS Y1, 32(DI)
	VMOVUPS Y2, 64(DI)
	VMOVUPS Y3, 96(DI)
	VZEROUPPER
	RET

// The constants of expm: Cody and Waite's split of ln 2, the clamp below
// which exp is taken as exp(-87), and the degree-6 Taylor coefficients of
// e^r for |r| <= ln 2 / 2.
DATA expConst<>+0(SB)/4, $0x3fb8aa3b  // log2(e)
DATA expConst<>+4(SB)/4, $0x3f318000  // ln 2, high part (0.693359375)
DATA expConst<>+8(SB)/4, $0xb95e8083  // ln 2, low part (-2.12194440e-4)
DATA expConst<>+12(SB)/4, $0xc2ae0000 // -87
DATA expConst<>+16(SB)/4, $0x3f800000 // 1
DATA expConst<>+20(SB)/4, $0x3f000000 // 1/2
DATA expConst<>+24(SB)/4, $0x3e2aaaab // 1/6
DATA expConst<>+28(SB)/4, $0x3d2aaaab // 1/24
DATA expConst<>+32(SB)/4, $0x3c088889 // 1/120
DATA expConst<>+36(SB)/4, $0x3ab60b61 // 1/720
GLOBL expConst<>(SB), RODATA|NOPTR, $40

// func expSubAVX2(x *float32, n int, mx float32) float32
// x[i] = exp(x[i] - mx) for i < n, n a positive multiple of 8, returning
// their sum: eight lane sums in order, then (high half + low half) and two
// horizontal adds. Per element: t = max(x - mx, -87), k = round(t·log2 e),
// r = (t - k·ln2hi) - k·ln2lo, e^r by Horner's rule, times 2^k.
TEXT ·expSubAVX2(SB), NOSPLIT, $0-28
	MOVQ         x+0(FP), DI
	MOVQ         n+8(FP), CX
	VBROADCASTSS mx+16(FP), Y15
	VBROADCASTSS expConst<>+0(SB), Y14
	VBROADCASTSS expConst<>+4(SB), Y13
	VBROADCASTSS expConst<>+8(SB), Y12
	VBROADCASTSS expConst<>+12(SB), Y11
	VBROADCASTSS expConst<>+16(SB), Y10
	VBROADCASTSS expConst<>+20(SB), Y9
	VBROADCASTSS expConst<>+24(SB), Y8
	VBROADCASTSS expConst<>+28(SB), Y7
	VBROADCASTSS expConst<>+32(SB), Y6
	VBROADCASTSS expConst<>+36(SB), Y5
	VXORPS       Y0, Y0, Y0 // the lane sums

exploop:
	VMOVUPS      (DI), Y1
	VSUBPS       Y15, Y1, Y1     // t = x - mx
	VMAXPS       Y11, Y1, Y1     // t = max(t, -87)
	VMULPS       Y14, Y1, Y2     // t·log2 e
	VROUNDPS     $0, Y2, Y2      // k, to nearest
	VFNMADD231PS Y13, Y2, Y1     // r = t - k·ln2hi
	VFNMADD231PS Y12, Y2, Y1     // r -= k·ln2lo
	VMOVAPS      Y5, Y3          // p = 1/720
	VFMADD213PS  Y6, Y1, Y3      // p = p·r + 1/120
	VFMADD213PS  Y7, Y1, Y3      // p = p·r + 1/24
	VFMADD213PS  Y8, Y1, Y3      // p = p·r + 1/6
	VFMADD213PS  Y9, Y1, Y3      // p = p·r + 1/2
	VFMADD213PS  Y10, Y1, Y3     // p = p·r + 1
	VFMADD213PS  Y10, Y1, Y3     // p = p·r + 1
	VCVTPS2DQ    Y2, Y2          // k as integers
	VPSLLD       $23, Y2, Y2     // k in the exponent field
	VPADDD       Y2, Y3, Y3      // p·2^k
	VMOVUPS      Y3, (DI)
	VADDPS       Y3, Y0, Y0
	ADDQ         $32, DI
	SUBQ         $8, CX
	JNZ          exploop

	VEXTRACTF128 $1, Y0, X1
	VADDPS       X1, X0, X0
	VHADDPS      X0, X0, X0
	VHADDPS      X0, X0, X0
	VZEROUPPER
	MOVSS        X0, ret+24(FP)
	RET
