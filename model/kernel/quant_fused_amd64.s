#include "textflag.h"

// Fused one-row products with quantized weights: each block of each of
// four weight rows is dequantized in registers exactly as the dequantizers
// do, then multiplied into 16-lane accumulators with fused multiply-adds
// over the columns in order and reduced in the fixed tree of tile_amd64.s,
// so every output equals the F32 tile kernel's on the dequantized rows.

// REDUCE reduces the 16 lanes of zn (lower halves yn) into off(DI), as
// tile_amd64.s's REDUCE_Z does.
#define REDUCE(zn, yn, off) \
	VEXTRACTF64X4 $1, zn, Y24 \
	VADDPS        Y24, yn, Y24 \
	VEXTRACTF32X4 $1, Y24, X25 \
	VADDPS        X25, X24, X24 \
	VMOVHLPS      X24, X24, X25 \
	VADDPS        X25, X24, X24 \
	VMOVSHDUP     X24, X25 \
	VADDSS        X25, X24, X24 \
	VMOVSS        X24, off(DI)

// Q8ROW dequantizes the Q8_0 block at (R) into za (values 0-15) and zb
// (16-31) and adds their products with Z20 and Z21 into acc.
#define Q8ROW(R, acc) \
	MOVWLZX   (R), BX \
	VMOVD     BX, X26 \
	VCVTPH2PS X26, X26 \
	VBROADCASTSS X26, Z26 \
	VPMOVSXBD 2(R), Z16 \
	VPMOVSXBD 18(R), Z17 \
	VCVTDQ2PS Z16, Z16 \
	VCVTDQ2PS Z17, Z17 \
	VMULPS    Z26, Z16, Z16 \
	VMULPS    Z26, Z17, Z17 \
	VFMADD231PS Z16, Z20, acc \
	VFMADD231PS Z17, Z21, acc

// func mulQ8_0x1AVX512(acc *[16]float32, x *float32, w *[4]*byte, nb int)
// acc[j] = Σ_c x[c]·W_j[c] for the four Q8_0 rows w[j] of nb blocks.
TEXT ·mulQ8_0x1AVX512(SB), NOSPLIT, $0-32
	MOVQ acc+0(FP), DI
	MOVQ x+8(FP), SI
	MOVQ w+16(FP), AX
	MOVQ 0(AX), R9
	MOVQ 8(AX), R10
	MOVQ 16(AX), R11
	MOVQ 24(AX), R12
	MOVQ nb+24(FP), CX
	VPXORD Z0, Z0, Z0
	VPXORD Z1, Z1, Z1
	VPXORD Z2, Z2, Z2
	VPXORD Z3, Z3, Z3

loop:
	VMOVUPS (SI), Z20
	VMOVUPS 64(SI), Z21
	Q8ROW(R9, Z0)
	Q8ROW(R10, Z1)
	Q8ROW(R11, Z2)
	Q8ROW(R12, Z3)
	ADDQ $128, SI
	ADDQ $34, R9
	ADDQ $34, R10
	ADDQ $34, R11
	ADDQ $34, R12
	DECQ CX
	JNZ  loop

	REDUCE(Z0, Y0, 0)
	REDUCE(Z1, Y1, 4)
	REDUCE(Z2, Y2, 8)
	REDUCE(Z3, Y3, 12)
	VZEROUPPER
	RET
