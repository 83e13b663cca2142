#include "textflag.h"

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
	VMOVUPS 0(DI), Y0
	VMOVUPS 32(DI), Y1
	VMOVUPS 64(DI), Y2
	VMOVUPS 96(DI), Y3

loop:
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
