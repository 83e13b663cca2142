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

// Q4PART dequantizes 16 values v of one Q4_K sub-block half (zq: bytes
// zero-extended, already masked or shifted to their nibble) with scale zs
// and min zm, and adds their products with zx into acc.
#define Q4PART(zq, zs, zm, zx, acc) \
	VCVTDQ2PS zq, zq \
	VMULPS    zs, zq, zq \
	VSUBPS    zm, zq, zq \
	VFMADD231PS zq, zx, acc

// Q4ROW adds one 64-value chunk of the Q4_K row whose 32 bytes are at (R),
// scales at soff(DX) and mins at soff(BX), into acc.
#define Q4ROW(R, soff, acc) \
	VBROADCASTSS soff(DX), Z26 \
	VBROADCASTSS soff+4(DX), Z27 \
	VBROADCASTSS soff(BX), Z28 \
	VBROADCASTSS soff+4(BX), Z29 \
	VPMOVZXBD (R), Z16 \
	VPMOVZXBD 16(R), Z17 \
	VPSRLD    $4, Z16, Z18 \
	VPSRLD    $4, Z17, Z19 \
	VPANDD    Z30, Z16, Z16 \
	VPANDD    Z30, Z17, Z17 \
	Q4PART(Z16, Z26, Z28, Z20, acc) \
	Q4PART(Z17, Z26, Z28, Z21, acc) \
	Q4PART(Z18, Z27, Z29, Z22, acc) \
	Q4PART(Z19, Z27, Z29, Z23, acc)

// func mulQ4Kx1AVX512(lanes *[4][16]float32, x *float32, q *[4]*byte, dsc, dmn *[4][8]float32)
// One super-block of four Q4_K rows: lanes[j] += the 16-lane products of
// x[0:256] with row j's values, from its 128 bytes q[j] and its sub-block
// scales dsc[j] and mins dmn[j] (as multiplied by the super-scales).
TEXT ·mulQ4Kx1AVX512(SB), NOSPLIT, $0-40
	MOVQ lanes+0(FP), DI
	MOVQ x+8(FP), SI
	MOVQ q+16(FP), AX
	MOVQ 0(AX), R9
	MOVQ 8(AX), R10
	MOVQ 16(AX), R11
	MOVQ 24(AX), R12
	MOVQ dsc+24(FP), DX
	MOVQ dmn+32(FP), BX
	MOVL $15, AX
	VMOVD AX, X30
	VPBROADCASTD X30, Z30
	VMOVUPS (DI), Z0
	VMOVUPS 64(DI), Z1
	VMOVUPS 128(DI), Z2
	VMOVUPS 192(DI), Z3
	MOVQ $4, CX

chunk:
	VMOVUPS (SI), Z20
	VMOVUPS 64(SI), Z21
	VMOVUPS 128(SI), Z22
	VMOVUPS 192(SI), Z23
	Q4ROW(R9, 0, Z0)
	Q4ROW(R10, 32, Z1)
	Q4ROW(R11, 64, Z2)
	Q4ROW(R12, 96, Z3)
	ADDQ $256, SI
	ADDQ $32, R9
	ADDQ $32, R10
	ADDQ $32, R11
	ADDQ $32, R12
	ADDQ $8, DX
	ADDQ $8, BX
	DECQ CX
	JNZ  chunk

	VMOVUPS Z0, (DI)
	VMOVUPS Z1, 64(DI)
	VMOVUPS Z2, 128(DI)
	VMOVUPS Z3, 192(DI)
	VZEROUPPER
	RET
