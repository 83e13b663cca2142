#include "textflag.h"

// Fused one-row products with quantized weights: each block of each of
// four weight rows is dequantized in registers exactly as the dequantizers
// do, then multiplied into 16-lane accumulators with fused multiply-adds
// over the columns in order and reduced in the fixed tree of tile_amd64.s,
// so every output equals the F32 tile kernel's on the dequantized rows.
//
// The one-row kernels stream four weight rows from memory at a time, more
// than the hardware prefetchers follow well: each also prefetches its rows
// about 1 KiB ahead (measured: 10 % more tokens per second on the small
// preset's Q8_0 and Q4_K_M decode).

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
	VPBROADCASTW (R), Y26 \
	VCVTPH2PS Y26, Z26 \
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
	PREFETCHT0 1024(R9)
	PREFETCHT0 1024(R10)
	PREFETCHT0 1024(R11)
	PREFETCHT0 1024(R12)
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

// KSCALES unpacks the eight 6-bit scales and mins of the Q4_K block at
// (R) and multiplies them by its F16 super-scales, into off(DX) (scales)
// and off+32(DX) (mins): kScales in vector registers, the same products.
// With a, b, c the words of scale bytes 0-3, 4-7 and 8-11, the scales
// are a & 0x3f3f3f3f then c's low nibbles | a's top bit pairs, the mins
// b & 0x3f3f3f3f then c's high nibbles | b's top bit pairs.
#define KSCALES(R, off) \
	MOVL    4(R), AX \
	MOVL    12(R), R8 \
	MOVL    AX, R13 \
	ANDL    $0x3f3f3f3f, R13 \
	VMOVD   R13, X24 \
	MOVL    R8, R13 \
	ANDL    $0x0f0f0f0f, R13 \
	SHRL    $2, AX \
	ANDL    $0x30303030, AX \
	ORL     AX, R13 \
	VPINSRD $1, R13, X24, X24 \
	MOVL    8(R), AX \
	MOVL    AX, R13 \
	ANDL    $0x3f3f3f3f, R13 \
	VMOVD   R13, X25 \
	SHRL    $4, R8 \
	ANDL    $0x0f0f0f0f, R8 \
	SHRL    $2, AX \
	ANDL    $0x30303030, AX \
	ORL     AX, R8 \
	VPINSRD $1, R8, X25, X25 \
	VPMOVZXBD X24, Y24 \
	VPMOVZXBD X25, Y25 \
	VCVTDQ2PS Y24, Y24 \
	VCVTDQ2PS Y25, Y25 \
	MOVWLZX (R), AX \
	VMOVD   AX, X26 \
	VCVTPH2PS X26, X26 \
	VBROADCASTSS X26, Y26 \
	MOVWLZX 2(R), AX \
	VMOVD   AX, X27 \
	VCVTPH2PS X27, X27 \
	VBROADCASTSS X27, Y27 \
	VMULPS  Y26, Y24, Y24 \
	VMULPS  Y27, Y25, Y25 \
	VMOVUPS Y24, off(DX) \
	VMOVUPS Y25, off+32(DX)

// func mulQ4Kx1AVX512(lanes *[4][16]float32, x *float32, blocks *[4]*byte, scales *[4][16]float32)
// One super-block of four Q4_K rows: lanes[j] += the 16-lane products of
// x[0:256] with the values of block blocks[j]; scales is scratch for the
// unpacked sub-block scales (0-7) and mins (8-15) of each.
TEXT ·mulQ4Kx1AVX512(SB), NOSPLIT, $0-32
	MOVQ lanes+0(FP), DI
	MOVQ x+8(FP), SI
	MOVQ blocks+16(FP), AX
	MOVQ 0(AX), R9
	MOVQ 8(AX), R10
	MOVQ 16(AX), R11
	MOVQ 24(AX), R12
	MOVQ scales+24(FP), DX
	KSCALES(R9, 0)
	KSCALES(R10, 64)
	KSCALES(R11, 128)
	KSCALES(R12, 192)
	ADDQ $16, R9
	ADDQ $16, R10
	ADDQ $16, R11
	ADDQ $16, R12
	LEAQ 32(DX), BX
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
	PREFETCHT0 576(R9)
	PREFETCHT0 576(R10)
	PREFETCHT0 576(R11)
	PREFETCHT0 576(R12)
	Q4ROW(R9, 0, Z0)
	Q4ROW(R10, 64, Z1)
	Q4ROW(R11, 128, Z2)
	Q4ROW(R12, 192, Z3)
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

// Q6V00, Q6V02, Q6V44 and Q6V46 make 16 values
// v = float32((low bits) | (high bit pair) << 4 − 32) · the scale at
// soff(DX): the low bits are the low (00, 02) or high (44, 46) nibbles of
// the bytes in zl, the high pair bits 0-1, 2-3, 4-5 or 6-7 of those in zh,
// moved to bits 4-5 and merged in one ternary logic operation (v | zh&Z29).
#define Q6V00(zl, zh, soff, v) \
	VPANDD     Z28, zl, v \
	VPSLLD     $4, zh, Z27 \
	VPTERNLOGD $0xf8, Z29, Z27, v \
	Q6VEND(soff, v)

#define Q6V02(zl, zh, soff, v) \
	VPANDD     Z28, zl, v \
	VPSLLD     $2, zh, Z27 \
	VPTERNLOGD $0xf8, Z29, Z27, v \
	Q6VEND(soff, v)

#define Q6V44(zl, zh, soff, v) \
	VPSRLD     $4, zl, v \
	VPTERNLOGD $0xf8, Z29, zh, v \
	Q6VEND(soff, v)

#define Q6V46(zl, zh, soff, v) \
	VPSRLD     $4, zl, v \
	VPSRLD     $2, zh, Z27 \
	VPTERNLOGD $0xf8, Z29, Z27, v \
	Q6VEND(soff, v)

#define Q6VEND(soff, v) \
	VPSUBD      Z31, v, v \
	VCVTDQ2PS   v, v \
	VMULPS.BCST soff(DX), v, v

// Q6HALF adds one 128-value half of the Q6_K row whose low bits are at
// (RL) and high bits at (RH), scales at soff(DX) on, into acc: the eight
// 16-value chunks k = 2·quarter + group, dequantized, then multiplied in
// column order with the inputs Z8-Z15.
#define Q6HALF(RL, RH, soff, acc) \
	VPMOVZXBD (RL), Z24 \
	VPMOVZXBD 32(RL), Z25 \
	VPMOVZXBD (RH), Z26 \
	Q6V00(Z24, Z26, soff, Z16) \
	Q6V02(Z25, Z26, soff+8, Z18) \
	Q6V44(Z24, Z26, soff+16, Z20) \
	Q6V46(Z25, Z26, soff+24, Z22) \
	VPMOVZXBD 16(RL), Z24 \
	VPMOVZXBD 48(RL), Z25 \
	VPMOVZXBD 16(RH), Z26 \
	Q6V00(Z24, Z26, soff+4, Z17) \
	Q6V02(Z25, Z26, soff+12, Z19) \
	Q6V44(Z24, Z26, soff+20, Z21) \
	Q6V46(Z25, Z26, soff+28, Z23) \
	VFMADD231PS Z16, Z8, acc \
	VFMADD231PS Z17, Z9, acc \
	VFMADD231PS Z18, Z10, acc \
	VFMADD231PS Z19, Z11, acc \
	VFMADD231PS Z20, Z12, acc \
	VFMADD231PS Z21, Z13, acc \
	VFMADD231PS Z22, Z14, acc \
	VFMADD231PS Z23, Z15, acc

// Q6SCALES multiplies the sixteen int8 sub-block scales of the Q6_K block
// at (R) by its F16 super-scale, into off(DX), as mulQ6Kx1's Go did.
#define Q6SCALES(R, off) \
	VPMOVSXBD 192(R), Z24 \
	VCVTDQ2PS Z24, Z24 \
	MOVWLZX   208(R), AX \
	VMOVD     AX, X25 \
	VCVTPH2PS X25, X25 \
	VBROADCASTSS X25, Z25 \
	VMULPS    Z25, Z24, Z24 \
	VMOVUPS   Z24, off(DX)

// func mulQ6Kx1AVX512(lanes *[4][16]float32, x *float32, q *[4]*byte, ds *[4][16]float32)
// One super-block of four Q6_K rows: lanes[j] += the 16-lane products of
// x[0:256] with row j's values, from its block q[j]; ds is scratch for
// the sixteen sub-block scales of each (as multiplied by the super-scale).
TEXT ·mulQ6Kx1AVX512(SB), NOSPLIT, $0-32
	MOVQ lanes+0(FP), DI
	MOVQ x+8(FP), SI
	MOVQ q+16(FP), AX
	MOVQ 0(AX), R9
	MOVQ 8(AX), R10
	MOVQ 16(AX), R11
	MOVQ 24(AX), R12
	MOVQ ds+24(FP), DX
	Q6SCALES(R9, 0)
	Q6SCALES(R10, 64)
	Q6SCALES(R11, 128)
	Q6SCALES(R12, 192)
	PREFETCHT0 840(R9)
	PREFETCHT0 904(R9)
	PREFETCHT0 968(R9)
	PREFETCHT0 1032(R9)
	PREFETCHT0 840(R10)
	PREFETCHT0 904(R10)
	PREFETCHT0 968(R10)
	PREFETCHT0 1032(R10)
	PREFETCHT0 840(R11)
	PREFETCHT0 904(R11)
	PREFETCHT0 968(R11)
	PREFETCHT0 1032(R11)
	PREFETCHT0 840(R12)
	PREFETCHT0 904(R12)
	PREFETCHT0 968(R12)
	PREFETCHT0 1032(R12)
	MOVL $15, AX
	VMOVD AX, X28
	VPBROADCASTD X28, Z28
	MOVL $0x30, AX
	VMOVD AX, X29
	VPBROADCASTD X29, Z29
	MOVL $32, AX
	VMOVD AX, X31
	VPBROADCASTD X31, Z31
	VMOVUPS (DI), Z0
	VMOVUPS 64(DI), Z1
	VMOVUPS 128(DI), Z2
	VMOVUPS 192(DI), Z3
	LEAQ 128(R9), R13
	LEAQ 128(R10), R14
	LEAQ 128(R11), R15
	LEAQ 128(R12), BX
	MOVQ $2, CX

half:
	VMOVUPS (SI), Z8
	VMOVUPS 64(SI), Z9
	VMOVUPS 128(SI), Z10
	VMOVUPS 192(SI), Z11
	VMOVUPS 256(SI), Z12
	VMOVUPS 320(SI), Z13
	VMOVUPS 384(SI), Z14
	VMOVUPS 448(SI), Z15
	Q6HALF(R9, R13, 0, Z0)
	Q6HALF(R10, R14, 64, Z1)
	Q6HALF(R11, R15, 128, Z2)
	Q6HALF(R12, BX, 192, Z3)
	ADDQ $512, SI
	ADDQ $64, R9
	ADDQ $64, R10
	ADDQ $64, R11
	ADDQ $64, R12
	ADDQ $32, R13
	ADDQ $32, R14
	ADDQ $32, R15
	ADDQ $32, BX
	ADDQ $32, DX
	DECQ CX
	JNZ  half

	VMOVUPS Z0, (DI)
	VMOVUPS Z1, 64(DI)
	VMOVUPS Z2, 128(DI)
	VMOVUPS Z3, 192(DI)
	VZEROUPPER
	RET

// Q5HI ors bit X(shift) of each high-bit byte in zh, as 16, into zq.
#define Q5HI(zh, shift, zq) \
	VPSRLD shift, zh, Z27 \
	VPANDD Z31, Z27, Z27 \
	VPSLLD $4, Z27, Z27 \
	VPORD  Z27, zq, zq

// Q5ROW is Q4ROW for Q5_K: each value's fifth bit is bit 2c (first
// sub-block, X8) or 2c+1 (second, X9) of high-bit byte l at (RH).
#define Q5ROW(R, RH, soff, acc) \
	VPMOVZXBD (R), Z16 \
	VPMOVZXBD 16(R), Z17 \
	VPSRLD    $4, Z16, Z18 \
	VPSRLD    $4, Z17, Z19 \
	VPANDD    Z30, Z16, Z16 \
	VPANDD    Z30, Z17, Z17 \
	VPMOVZXBD (RH), Z24 \
	VPMOVZXBD 16(RH), Z25 \
	Q5HI(Z24, X8, Z16) \
	Q5HI(Z25, X8, Z17) \
	Q5HI(Z24, X9, Z18) \
	Q5HI(Z25, X9, Z19) \
	VBROADCASTSS soff(DX), Z26 \
	VBROADCASTSS soff(BX), Z28 \
	Q4PART(Z16, Z26, Z28, Z20, acc) \
	Q4PART(Z17, Z26, Z28, Z21, acc) \
	VBROADCASTSS soff+4(DX), Z26 \
	VBROADCASTSS soff+4(BX), Z28 \
	Q4PART(Z18, Z26, Z28, Z22, acc) \
	Q4PART(Z19, Z26, Z28, Z23, acc)

// func mulQ5Kx1AVX512(lanes *[4][16]float32, x *float32, blocks *[4]*byte, scales *[4][16]float32)
// mulQ4Kx1AVX512 for Q5_K: blocks[j] is row j's block (high bits at 16,
// low nibbles at 48); its scales unpack as Q4_K's do.
TEXT ·mulQ5Kx1AVX512(SB), NOSPLIT, $0-32
	MOVQ lanes+0(FP), DI
	MOVQ x+8(FP), SI
	MOVQ blocks+16(FP), AX
	MOVQ 0(AX), R9
	MOVQ 8(AX), R10
	MOVQ 16(AX), R11
	MOVQ 24(AX), R12
	MOVQ scales+24(FP), DX
	KSCALES(R9, 0)
	KSCALES(R10, 64)
	KSCALES(R11, 128)
	KSCALES(R12, 192)
	LEAQ 32(DX), BX
	MOVL $15, AX
	VMOVD AX, X30
	VPBROADCASTD X30, Z30
	MOVL $1, AX
	VMOVD AX, X31
	VPBROADCASTD X31, Z31
	XORL AX, AX
	VMOVD AX, X8
	MOVL $1, AX
	VMOVD AX, X9
	MOVL $2, AX
	VMOVD AX, X10
	VMOVUPS (DI), Z0
	VMOVUPS 64(DI), Z1
	VMOVUPS 128(DI), Z2
	VMOVUPS 192(DI), Z3
	LEAQ 48(R9), R13
	LEAQ 48(R10), R14
	LEAQ 48(R11), R15
	LEAQ 48(R12), AX
	ADDQ $16, R9
	ADDQ $16, R10
	ADDQ $16, R11
	ADDQ $16, R12
	MOVQ $4, CX

chunk:
	VMOVUPS (SI), Z20
	VMOVUPS 64(SI), Z21
	VMOVUPS 128(SI), Z22
	VMOVUPS 192(SI), Z23
	Q5ROW(R13, R9, 0, Z0)
	Q5ROW(R14, R10, 64, Z1)
	Q5ROW(R15, R11, 128, Z2)
	Q5ROW(AX, R12, 192, Z3)
	ADDQ $256, SI
	ADDQ $32, R13
	ADDQ $32, R14
	ADDQ $32, R15
	ADDQ $32, AX
	ADDQ $8, DX
	ADDQ $8, BX
	VPADDQ X10, X8, X8
	VPADDQ X10, X9, X9
	DECQ CX
	JNZ  chunk

	VMOVUPS Z0, (DI)
	VMOVUPS Z1, 64(DI)
	VMOVUPS Z2, 128(DI)
	VMOVUPS Z3, 192(DI)
	VZEROUPPER
	RET

// Q40ROW dequantizes the Q4_0 block at (R) and adds its products with
// Z20 (values 0-15, the low nibbles) and Z21 (16-31, the high) into acc.
#define Q40ROW(R, acc) \
	VPBROADCASTW (R), Y26 \
	VCVTPH2PS Y26, Z26 \
	VPMOVZXBD 2(R), Z16 \
	VPSRLD    $4, Z16, Z17 \
	VPANDD    Z30, Z16, Z16 \
	VPSUBD    Z31, Z16, Z16 \
	VPSUBD    Z31, Z17, Z17 \
	VCVTDQ2PS Z16, Z16 \
	VCVTDQ2PS Z17, Z17 \
	VMULPS    Z26, Z16, Z16 \
	VMULPS    Z26, Z17, Z17 \
	VFMADD231PS Z16, Z20, acc \
	VFMADD231PS Z17, Z21, acc

// func mulQ4_0x1AVX512(acc *[16]float32, x *float32, w *[4]*byte, nb int)
// mulQ8_0x1AVX512 for Q4_0.
TEXT ·mulQ4_0x1AVX512(SB), NOSPLIT, $0-32
	MOVQ acc+0(FP), DI
	MOVQ x+8(FP), SI
	MOVQ w+16(FP), AX
	MOVQ 0(AX), R9
	MOVQ 8(AX), R10
	MOVQ 16(AX), R11
	MOVQ 24(AX), R12
	MOVQ nb+24(FP), CX
	MOVL $15, AX
	VMOVD AX, X30
	VPBROADCASTD X30, Z30
	MOVL $8, AX
	VMOVD AX, X31
	VPBROADCASTD X31, Z31
	VPXORD Z0, Z0, Z0
	VPXORD Z1, Z1, Z1
	VPXORD Z2, Z2, Z2
	VPXORD Z3, Z3, Z3

loop:
	VMOVUPS (SI), Z20
	VMOVUPS 64(SI), Z21
	Q40ROW(R9, Z0)
	Q40ROW(R10, Z1)
	Q40ROW(R11, Z2)
	Q40ROW(R12, Z3)
	ADDQ $128, SI
	ADDQ $18, R9
	ADDQ $18, R10
	ADDQ $18, R11
	ADDQ $18, R12
	DECQ CX
	JNZ  loop

	REDUCE(Z0, Y0, 0)
	REDUCE(Z1, Y1, 4)
	REDUCE(Z2, Y2, 8)
	REDUCE(Z3, Y3, 12)
	VZEROUPPER
	RET

// Q8ROW4 dequantizes the Q8_0 block at (R) and adds its products with the
// four input rows' blocks (Z16/Z17, Z18/Z19, Z20/Z21, Z22/Z23) into a0-a3.
#define Q8ROW4(R, a0, a1, a2, a3) \
	VPBROADCASTW (R), Y26 \
	VCVTPH2PS Y26, Z26 \
	VPMOVSXBD 2(R), Z24 \
	VPMOVSXBD 18(R), Z25 \
	VCVTDQ2PS Z24, Z24 \
	VCVTDQ2PS Z25, Z25 \
	VMULPS    Z26, Z24, Z24 \
	VMULPS    Z26, Z25, Z25 \
	VFMADD231PS Z24, Z16, a0 \
	VFMADD231PS Z25, Z17, a0 \
	VFMADD231PS Z24, Z18, a1 \
	VFMADD231PS Z25, Z19, a1 \
	VFMADD231PS Z24, Z20, a2 \
	VFMADD231PS Z25, Z21, a2 \
	VFMADD231PS Z24, Z22, a3 \
	VFMADD231PS Z25, Z23, a3

// func mulQ8_0x4AVX512(acc *[16]float32, x *[4]*float32, w *[4]*byte, nb int)
// acc[4i+j] = Σ_c x_i[c]·W_j[c] for four input rows x[i] and four Q8_0
// rows w[j] of nb blocks.
TEXT ·mulQ8_0x4AVX512(SB), NOSPLIT, $0-32
	MOVQ acc+0(FP), DI
	MOVQ x+8(FP), AX
	MOVQ 0(AX), SI
	MOVQ 8(AX), R13
	MOVQ 16(AX), R14
	MOVQ 24(AX), R15
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
	VPXORD Z4, Z4, Z4
	VPXORD Z5, Z5, Z5
	VPXORD Z6, Z6, Z6
	VPXORD Z7, Z7, Z7
	VPXORD Z8, Z8, Z8
	VPXORD Z9, Z9, Z9
	VPXORD Z10, Z10, Z10
	VPXORD Z11, Z11, Z11
	VPXORD Z12, Z12, Z12
	VPXORD Z13, Z13, Z13
	VPXORD Z14, Z14, Z14
	VPXORD Z15, Z15, Z15
	XORQ AX, AX

loop:
	VMOVUPS (SI)(AX*1), Z16
	VMOVUPS 64(SI)(AX*1), Z17
	VMOVUPS (R13)(AX*1), Z18
	VMOVUPS 64(R13)(AX*1), Z19
	VMOVUPS (R14)(AX*1), Z20
	VMOVUPS 64(R14)(AX*1), Z21
	VMOVUPS (R15)(AX*1), Z22
	VMOVUPS 64(R15)(AX*1), Z23
	Q8ROW4(R9, Z0, Z4, Z8, Z12)
	Q8ROW4(R10, Z1, Z5, Z9, Z13)
	Q8ROW4(R11, Z2, Z6, Z10, Z14)
	Q8ROW4(R12, Z3, Z7, Z11, Z15)
	ADDQ $128, AX
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
	REDUCE(Z4, Y4, 16)
	REDUCE(Z5, Y5, 20)
	REDUCE(Z6, Y6, 24)
	REDUCE(Z7, Y7, 28)
	REDUCE(Z8, Y8, 32)
	REDUCE(Z9, Y9, 36)
	REDUCE(Z10, Y10, 40)
	REDUCE(Z11, Y11, 44)
	REDUCE(Z12, Y12, 48)
	REDUCE(Z13, Y13, 52)
	REDUCE(Z14, Y14, 56)
	REDUCE(Z15, Y15, 60)
	VZEROUPPER
	RET

// Q4X4TAIL finishes a Q4_K group's 16 values in Z24 (nibbles as int32)
// with the scale and min at soff(DX), soff(BX) and adds their products
// with the four input rows' groups Z16-Z19 into a0-a3.
#define Q4X4TAIL(soff, a0, a1, a2, a3) \
	VCVTDQ2PS Z24, Z24 \
	VBROADCASTSS soff(DX), Z25 \
	VMULPS    Z25, Z24, Z24 \
	VBROADCASTSS soff(BX), Z25 \
	VSUBPS    Z25, Z24, Z24 \
	VFMADD231PS Z24, Z16, a0 \
	VFMADD231PS Z24, Z17, a1 \
	VFMADD231PS Z24, Z18, a2 \
	VFMADD231PS Z24, Z19, a3

// Q4X4LO and Q4X4HI do one group of the low or high nibbles of the 16
// bytes at boff(R).
#define Q4X4LO(R, boff, soff, a0, a1, a2, a3) \
	VPMOVZXBD boff(R), Z24 \
	VPANDD    Z30, Z24, Z24 \
	Q4X4TAIL(soff, a0, a1, a2, a3)

#define Q4X4HI(R, boff, soff, a0, a1, a2, a3) \
	VPMOVZXBD boff(R), Z24 \
	VPSRLD    $4, Z24, Z24 \
	Q4X4TAIL(soff, a0, a1, a2, a3)

// Q4X4X loads the four input rows' 16 values at off.
#define Q4X4X(off) \
	VMOVUPS off(SI), Z16 \
	VMOVUPS off(R13), Z17 \
	VMOVUPS off(R14), Z18 \
	VMOVUPS off(R15), Z19

// Q4X4GROUP does one 16-column group for the four weight rows: OP is
// Q4X4LO or Q4X4HI, boff the byte offset in the chunk, s the sub-block
// scale's offset.
#define Q4X4GROUP(OP, boff, s) \
	OP(R9, boff, s, Z0, Z4, Z8, Z12) \
	OP(R10, boff, s+32, Z1, Z5, Z9, Z13) \
	OP(R11, boff, s+64, Z2, Z6, Z10, Z14) \
	OP(R12, boff, s+96, Z3, Z7, Z11, Z15)

// func mulQ4Kx4AVX512(lanes *[16][16]float32, x *[4]*float32, q *[4]*byte, dsc, dmn *[4][8]float32)
// One super-block of four input rows by four Q4_K rows: lanes[4i+j] +=
// the 16-lane products of x[i][0:256] with row j's values.
TEXT ·mulQ4Kx4AVX512(SB), NOSPLIT, $0-40
	MOVQ lanes+0(FP), DI
	MOVQ x+8(FP), AX
	MOVQ 0(AX), SI
	MOVQ 8(AX), R13
	MOVQ 16(AX), R14
	MOVQ 24(AX), R15
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
	VMOVUPS 256(DI), Z4
	VMOVUPS 320(DI), Z5
	VMOVUPS 384(DI), Z6
	VMOVUPS 448(DI), Z7
	VMOVUPS 512(DI), Z8
	VMOVUPS 576(DI), Z9
	VMOVUPS 640(DI), Z10
	VMOVUPS 704(DI), Z11
	VMOVUPS 768(DI), Z12
	VMOVUPS 832(DI), Z13
	VMOVUPS 896(DI), Z14
	VMOVUPS 960(DI), Z15
	MOVQ $4, CX

chunk:
	Q4X4X(0)
	Q4X4GROUP(Q4X4LO, 0, 0)
	Q4X4X(64)
	Q4X4GROUP(Q4X4LO, 16, 0)
	Q4X4X(128)
	Q4X4GROUP(Q4X4HI, 0, 4)
	Q4X4X(192)
	Q4X4GROUP(Q4X4HI, 16, 4)
	ADDQ $256, SI
	ADDQ $256, R13
	ADDQ $256, R14
	ADDQ $256, R15
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
	VMOVUPS Z4, 256(DI)
	VMOVUPS Z5, 320(DI)
	VMOVUPS Z6, 384(DI)
	VMOVUPS Z7, 448(DI)
	VMOVUPS Z8, 512(DI)
	VMOVUPS Z9, 576(DI)
	VMOVUPS Z10, 640(DI)
	VMOVUPS Z11, 704(DI)
	VMOVUPS Z12, 768(DI)
	VMOVUPS Z13, 832(DI)
	VMOVUPS Z14, 896(DI)
	VMOVUPS Z15, 960(DI)
	VZEROUPPER
	RET
