#include "textflag.h"

// The AVX2 int8-mode products (quant_int8_amd64.go): each 32-value block
// of a weight row gives eight int32 lanes, converted to float32, times the
// block's scale, added to the row's eight float32 accumulators. As the
// fused kernels of quant_fused_amd64.s do, each prefetches its four rows
// 3 KiB ahead: decode waits on those loads otherwise (measured on Q8_0:
// 7.4 GB/s at 1 KiB, 8.2 at 2 KiB, 8.9 at 3 KiB, 8.5 at 4 KiB).

// Q8ROW adds the Q8_0 block at (R) times the activations in Y8, with
// their scale in X9, to acc. Y15 holds int16 ones.
#define Q8ROW(R, acc) \
	PREFETCHT0   3072(R) \
	VMOVDQU      2(R), Y10 \
	VPSIGNB      Y10, Y8, Y11 \
	VPABSB       Y10, Y10 \
	VPMADDUBSW   Y11, Y10, Y10 \
	VPMADDWD     Y15, Y10, Y10 \
	VCVTDQ2PS    Y10, Y10 \
	MOVWLZX      (R), BX \
	VMOVD        BX, X12 \
	VCVTPH2PS    X12, X12 \
	VMULSS       X9, X12, X12 \
	VBROADCASTSS X12, Y12 \
	VMULPS       Y12, Y10, Y10 \
	VADDPS       Y10, acc, acc

// PREFETCH3 and PREFETCH4 prefetch the cache lines of row R 3 KiB ahead
// that a Q4_K/Q5_K and a Q6_K super-block step over.
#define PREFETCH3(R) \
	PREFETCHT0 3072(R) \
	PREFETCHT0 3136(R) \
	PREFETCHT0 3200(R)

#define PREFETCH4(R) \
	PREFETCH3(R) \
	PREFETCHT0 3264(R)

// KSCALES unpacks the eight 6-bit scales and mins of the Q4_K/Q5_K
// super-block at (R), as scaleMinK4 spells out, four at a time in 32-bit
// words: the scales as int16s to sc(SP); d times the activation scales
// in Y13 to ds(SP) (eight floats); and dmin times the mins times the
// activation block sums at (BX) added to mins.
#define KSCALES(R, sc, ds, mins) \
	MOVL         4(R), AX \
	MOVL         8(R), R8 \
	MOVL         12(R), R13 \
	MOVL         AX, DI \
	ANDL         $0x3f3f3f3f, DI \
	VMOVD        DI, X11 \
	SHRL         $6, AX \
	ANDL         $0x03030303, AX \
	SHLL         $4, AX \
	MOVL         R13, DI \
	ANDL         $0x0f0f0f0f, DI \
	ORL          DI, AX \
	VPINSRD      $1, AX, X11, X11 \
	VPMOVZXBW    X11, X11 \
	VMOVDQU      X11, sc(SP) \
	MOVL         R8, DI \
	ANDL         $0x3f3f3f3f, DI \
	VMOVD        DI, X12 \
	SHRL         $4, R13 \
	ANDL         $0x0f0f0f0f, R13 \
	SHRL         $6, R8 \
	ANDL         $0x03030303, R8 \
	SHLL         $4, R8 \
	ORL          R13, R8 \
	VPINSRD      $1, R8, X12, X12 \
	VPMOVZXBD    X12, Y12 \
	VPMULLD      (BX), Y12, Y12 \
	VCVTDQ2PS    Y12, Y12 \
	VMOVD        (R), X11 \
	VCVTPH2PS    X11, X11 \
	VBROADCASTSS X11, Y15 \
	VMULPS       Y13, Y15, Y15 \
	VMOVUPS      Y15, ds(SP) \
	VMOVSHDUP    X11, X11 \
	VBROADCASTSS X11, Y11 \
	VMULPS       Y13, Y11, Y11 \
	VMULPS       Y11, Y12, Y12 \
	VADDPS       Y12, mins, mins

// K4NIBBLES splits the 32 bytes at off(R) into their low nibbles (Y11:
// one 32-value block) and high nibbles (Y12: the next). Y10 holds 0x0f.
#define K4NIBBLES(R, off) \
	VMOVDQU      off(R), Y11 \
	VPSRLW       $4, Y11, Y12 \
	VPAND        Y10, Y11, Y11 \
	VPAND        Y10, Y12, Y12

// K5HIGH adds the fifth bits of a Q5_K block pair from the 32 bytes at
// off(R): moved to bit 4 (Y14 holds 0x10) by op0 $n0 for Y11 and by
// op1 $n1 for Y12.
#define K5HIGH(R, off, op0, n0, op1, n1) \
	VMOVDQU      off(R), Y13 \
	op0          $n0, Y13, Y15 \
	VPAND        Y14, Y15, Y15 \
	VPOR         Y15, Y11, Y11 \
	op1          $n1, Y13, Y15 \
	VPAND        Y14, Y15, Y15 \
	VPOR         Y15, Y12, Y12

// K4MADD multiplies the unsigned blocks in Y11 and Y12 by the activation
// blocks in Y8 and Y9, by their int16 scales at sc(SP) and (sc+2)(SP),
// and adds them, times the floats at ds(SP) and (ds+4)(SP), to acc.
#define K4MADD(sc, ds, acc) \
	VPMADDUBSW   Y8, Y11, Y11 \
	VPMADDUBSW   Y9, Y12, Y12 \
	VPBROADCASTW sc(SP), Y15 \
	VPMADDWD     Y15, Y11, Y11 \
	VPBROADCASTW (sc+2)(SP), Y15 \
	VPMADDWD     Y15, Y12, Y12 \
	VCVTDQ2PS    Y11, Y11 \
	VCVTDQ2PS    Y12, Y12 \
	VBROADCASTSS ds(SP), Y15 \
	VMULPS       Y15, Y11, Y11 \
	VADDPS       Y11, acc, acc \
	VBROADCASTSS (ds+4)(SP), Y15 \
	VMULPS       Y15, Y12, Y12 \
	VADDPS       Y12, acc, acc

// Q6SCALE stores the Q6_K super-block at (R)'s d times the eight
// activation scales at (DX) to ds(SP).
#define Q6SCALE(R, ds) \
	MOVWLZX      208(R), AX \
	VMOVD        AX, X13 \
	VCVTPH2PS    X13, X13 \
	VBROADCASTSS X13, Y13 \
	VMULPS       (DX), Y13, Y13 \
	VMOVUPS      Y13, ds(SP)

// Q6MADD offsets the 6-bit block in Y11 to signed (Y10 holds 32),
// multiplies it by the activations in act (the sign moved onto them, as
// VPMADDUBSW needs) and by its two sub-block scales (spread by the
// q6kScales control at shuf(BX) from the scales in X15), and adds it,
// times the float at ds(SP), to acc.
#define Q6MADD(act, shuf, ds, acc) \
	VPSUBB       Y10, Y11, Y11 \
	VPSIGNB      Y11, act, Y13 \
	VPABSB       Y11, Y11 \
	VPMADDUBSW   Y13, Y11, Y11 \
	VPSHUFB      shuf(BX), X15, X14 \
	VPMOVSXBW    X14, Y14 \
	VPMADDWD     Y14, Y11, Y11 \
	VCVTDQ2PS    Y11, Y11 \
	VBROADCASTSS ds(SP), Y13 \
	VMULPS       Y13, Y11, Y11 \
	VADDPS       Y11, acc, acc

// Q6HALF adds four 32-value blocks of the Q6_K super-block at (R) to acc:
// low bits from the 64 bytes at ql(R), high bits from the 32 at qh(R)
// (Y8 holds 0x0f, Y9 0x30), activations in Y4-Y7, scale controls from
// shuf(BX) and floats from ds(SP) on.
#define Q6HALF(R, ql, qh, shuf, ds, acc) \
	VMOVDQU      192(R), X15 \
	VMOVDQU      qh(R), Y12 \
	VPAND        ql(R), Y8, Y11 \
	VPSLLW       $4, Y12, Y13 \
	VPAND        Y9, Y13, Y13 \
	VPOR         Y13, Y11, Y11 \
	Q6MADD(Y4, shuf, ds, acc) \
	VPAND        (ql+32)(R), Y8, Y11 \
	VPSLLW       $2, Y12, Y13 \
	VPAND        Y9, Y13, Y13 \
	VPOR         Y13, Y11, Y11 \
	Q6MADD(Y5, (shuf+16), (ds+4), acc) \
	VMOVDQU      ql(R), Y11 \
	VPSRLW       $4, Y11, Y11 \
	VPAND        Y8, Y11, Y11 \
	VPAND        Y9, Y12, Y13 \
	VPOR         Y13, Y11, Y11 \
	Q6MADD(Y6, (shuf+32), (ds+8), acc) \
	VMOVDQU      (ql+32)(R), Y11 \
	VPSRLW       $4, Y11, Y11 \
	VPAND        Y8, Y11, Y11 \
	VPSRLW       $2, Y12, Y13 \
	VPAND        Y9, Y13, Y13 \
	VPOR         Y13, Y11, Y11 \
	Q6MADD(Y7, (shuf+48), (ds+12), acc)

// func int8Q8_0AVX2(lanes *[4][8]float32, w *[4]*byte, q *int8, d *float32, nb int)
TEXT ·int8Q8_0AVX2(SB), NOSPLIT, $0-40
	MOVQ lanes+0(FP), DI
	MOVQ w+8(FP), AX
	MOVQ 0(AX), R9
	MOVQ 8(AX), R10
	MOVQ 16(AX), R11
	MOVQ 24(AX), R12
	MOVQ q+16(FP), SI
	MOVQ d+24(FP), DX
	MOVQ nb+32(FP), CX
	VXORPS Y0, Y0, Y0
	VXORPS Y1, Y1, Y1
	VXORPS Y2, Y2, Y2
	VXORPS Y3, Y3, Y3
	MOVL         $0x00010001, AX
	VMOVD        AX, X15
	VPBROADCASTD X15, Y15

loop:
	VMOVDQU (SI), Y8
	VMOVSS  (DX), X9
	Q8ROW(R9, Y0)
	Q8ROW(R10, Y1)
	Q8ROW(R11, Y2)
	Q8ROW(R12, Y3)
	ADDQ $32, SI
	ADDQ $4, DX
	ADDQ $34, R9
	ADDQ $34, R10
	ADDQ $34, R11
	ADDQ $34, R12
	DECQ CX
	JNZ  loop

	VMOVUPS Y0, (DI)
	VMOVUPS Y1, 32(DI)
	VMOVUPS Y2, 64(DI)
	VMOVUPS Y3, 96(DI)
	VZEROUPPER
	RET

// KSETUP zeroes the Q4_K/Q5_K kernels' accumulators (Y0-Y3) and mins
// (Y4-Y7) and sets Y10 to 0x0f and Y14 to 0x10 in every byte.
#define KSETUP \
	VXORPS Y0, Y0, Y0 \
	VXORPS Y1, Y1, Y1 \
	VXORPS Y2, Y2, Y2 \
	VXORPS Y3, Y3, Y3 \
	VXORPS Y4, Y4, Y4 \
	VXORPS Y5, Y5, Y5 \
	VXORPS Y6, Y6, Y6 \
	VXORPS Y7, Y7, Y7 \
	MOVL         $0x0f0f0f0f, AX \
	VMOVD        AX, X10 \
	VPBROADCASTD X10, Y10 \
	MOVL         $0x10101010, AX \
	VMOVD        AX, X14 \
	VPBROADCASTD X14, Y14

// KSTORE stores each row's accumulators and mins to lanes.
#define KSTORE \
	MOVQ lanes+0(FP), DI \
	VMOVUPS Y0, 0(DI) \
	VMOVUPS Y4, 32(DI) \
	VMOVUPS Y1, 64(DI) \
	VMOVUPS Y5, 96(DI) \
	VMOVUPS Y2, 128(DI) \
	VMOVUPS Y6, 160(DI) \
	VMOVUPS Y3, 192(DI) \
	VMOVUPS Y7, 224(DI)

// func int8Q4KAVX2(lanes *[4][16]float32, w *[4]*byte, q *int8, d *float32, sum *int32, nb int)
// lanes[j][0:8] and lanes[j][8:16] = row j's accumulators and mins over
// the nb super-blocks of the Q4_K rows at w[j]. Each super-block's 6-bit
// scales and mins are unpacked as scaleMinK4 spells out, four at a time
// in 32-bit words. The frame holds each row's d times the super-block's
// eight activation scales (0-127) and its scales as int16s (128-191).
TEXT ·int8Q4KAVX2(SB), NOSPLIT, $192-48
	MOVQ w+8(FP), AX
	MOVQ 0(AX), R9
	MOVQ 8(AX), R10
	MOVQ 16(AX), R11
	MOVQ 24(AX), R12
	MOVQ q+16(FP), SI
	MOVQ d+24(FP), DX
	MOVQ sum+32(FP), BX
	MOVQ nb+40(FP), CX
	KSETUP

q4kloop:
	VMOVUPS (DX), Y13
	PREFETCH3(R9)
	PREFETCH3(R10)
	PREFETCH3(R11)
	PREFETCH3(R12)
	KSCALES(R9, 128, 0, Y4)
	KSCALES(R10, 144, 32, Y5)
	KSCALES(R11, 160, 64, Y6)
	KSCALES(R12, 176, 96, Y7)
	VMOVDQU 0(SI), Y8
	VMOVDQU 32(SI), Y9
	K4NIBBLES(R9, 16)
	K4MADD(128, 0, Y0)
	K4NIBBLES(R10, 16)
	K4MADD(144, 32, Y1)
	K4NIBBLES(R11, 16)
	K4MADD(160, 64, Y2)
	K4NIBBLES(R12, 16)
	K4MADD(176, 96, Y3)
	VMOVDQU 64(SI), Y8
	VMOVDQU 96(SI), Y9
	K4NIBBLES(R9, 48)
	K4MADD(132, 8, Y0)
	K4NIBBLES(R10, 48)
	K4MADD(148, 40, Y1)
	K4NIBBLES(R11, 48)
	K4MADD(164, 72, Y2)
	K4NIBBLES(R12, 48)
	K4MADD(180, 104, Y3)
	VMOVDQU 128(SI), Y8
	VMOVDQU 160(SI), Y9
	K4NIBBLES(R9, 80)
	K4MADD(136, 16, Y0)
	K4NIBBLES(R10, 80)
	K4MADD(152, 48, Y1)
	K4NIBBLES(R11, 80)
	K4MADD(168, 80, Y2)
	K4NIBBLES(R12, 80)
	K4MADD(184, 112, Y3)
	VMOVDQU 192(SI), Y8
	VMOVDQU 224(SI), Y9
	K4NIBBLES(R9, 112)
	K4MADD(140, 24, Y0)
	K4NIBBLES(R10, 112)
	K4MADD(156, 56, Y1)
	K4NIBBLES(R11, 112)
	K4MADD(172, 88, Y2)
	K4NIBBLES(R12, 112)
	K4MADD(188, 120, Y3)
	ADDQ $256, SI
	ADDQ $32, DX
	ADDQ $32, BX
	ADDQ $144, R9
	ADDQ $144, R10
	ADDQ $144, R11
	ADDQ $144, R12
	DECQ CX
	JNZ  q4kloop

	KSTORE
	VZEROUPPER
	RET

// func int8Q5KAVX2(lanes *[4][16]float32, w *[4]*byte, q *int8, d *float32, sum *int32, nb int)
// lanes[j][0:8] and lanes[j][8:16] = row j's accumulators and mins over
// the nb super-blocks of the Q5_K rows at w[j]. Each super-block's 6-bit
// scales and mins are unpacked as scaleMinK4 spells out, four at a time
// in 32-bit words. The frame holds each row's d times the super-block's
// eight activation scales (0-127) and its scales as int16s (128-191).
TEXT ·int8Q5KAVX2(SB), NOSPLIT, $192-48
	MOVQ w+8(FP), AX
	MOVQ 0(AX), R9
	MOVQ 8(AX), R10
	MOVQ 16(AX), R11
	MOVQ 24(AX), R12
	MOVQ q+16(FP), SI
	MOVQ d+24(FP), DX
	MOVQ sum+32(FP), BX
	MOVQ nb+40(FP), CX
	KSETUP

q5kloop:
	VMOVUPS (DX), Y13
	PREFETCH3(R9)
	PREFETCH3(R10)
	PREFETCH3(R11)
	PREFETCH3(R12)
	KSCALES(R9, 128, 0, Y4)
	KSCALES(R10, 144, 32, Y5)
	KSCALES(R11, 160, 64, Y6)
	KSCALES(R12, 176, 96, Y7)
	VMOVDQU 0(SI), Y8
	VMOVDQU 32(SI), Y9
	K4NIBBLES(R9, 48)
	K5HIGH(R9, 16, VPSLLW, 4, VPSLLW, 3)
	K4MADD(128, 0, Y0)
	K4NIBBLES(R10, 48)
	K5HIGH(R10, 16, VPSLLW, 4, VPSLLW, 3)
	K4MADD(144, 32, Y1)
	K4NIBBLES(R11, 48)
	K5HIGH(R11, 16, VPSLLW, 4, VPSLLW, 3)
	K4MADD(160, 64, Y2)
	K4NIBBLES(R12, 48)
	K5HIGH(R12, 16, VPSLLW, 4, VPSLLW, 3)
	K4MADD(176, 96, Y3)
	VMOVDQU 64(SI), Y8
	VMOVDQU 96(SI), Y9
	K4NIBBLES(R9, 80)
	K5HIGH(R9, 16, VPSLLW, 2, VPSLLW, 1)
	K4MADD(132, 8, Y0)
	K4NIBBLES(R10, 80)
	K5HIGH(R10, 16, VPSLLW, 2, VPSLLW, 1)
	K4MADD(148, 40, Y1)
	K4NIBBLES(R11, 80)
	K5HIGH(R11, 16, VPSLLW, 2, VPSLLW, 1)
	K4MADD(164, 72, Y2)
	K4NIBBLES(R12, 80)
	K5HIGH(R12, 16, VPSLLW, 2, VPSLLW, 1)
	K4MADD(180, 104, Y3)
	VMOVDQU 128(SI), Y8
	VMOVDQU 160(SI), Y9
	K4NIBBLES(R9, 112)
	VMOVDQU      16(R9), Y13
	VPAND        Y14, Y13, Y15
	VPOR         Y15, Y11, Y11
	VPSRLW       $1, Y13, Y15
	VPAND        Y14, Y15, Y15
	VPOR         Y15, Y12, Y12
	K4MADD(136, 16, Y0)
	K4NIBBLES(R10, 112)
	VMOVDQU      16(R10), Y13
	VPAND        Y14, Y13, Y15
	VPOR         Y15, Y11, Y11
	VPSRLW       $1, Y13, Y15
	VPAND        Y14, Y15, Y15
	VPOR         Y15, Y12, Y12
	K4MADD(152, 48, Y1)
	K4NIBBLES(R11, 112)
	VMOVDQU      16(R11), Y13
	VPAND        Y14, Y13, Y15
	VPOR         Y15, Y11, Y11
	VPSRLW       $1, Y13, Y15
	VPAND        Y14, Y15, Y15
	VPOR         Y15, Y12, Y12
	K4MADD(168, 80, Y2)
	K4NIBBLES(R12, 112)
	VMOVDQU      16(R12), Y13
	VPAND        Y14, Y13, Y15
	VPOR         Y15, Y11, Y11
	VPSRLW       $1, Y13, Y15
	VPAND        Y14, Y15, Y15
	VPOR         Y15, Y12, Y12
	K4MADD(184, 112, Y3)
	VMOVDQU 192(SI), Y8
	VMOVDQU 224(SI), Y9
	K4NIBBLES(R9, 144)
	K5HIGH(R9, 16, VPSRLW, 2, VPSRLW, 3)
	K4MADD(140, 24, Y0)
	K4NIBBLES(R10, 144)
	K5HIGH(R10, 16, VPSRLW, 2, VPSRLW, 3)
	K4MADD(156, 56, Y1)
	K4NIBBLES(R11, 144)
	K5HIGH(R11, 16, VPSRLW, 2, VPSRLW, 3)
	K4MADD(172, 88, Y2)
	K4NIBBLES(R12, 144)
	K5HIGH(R12, 16, VPSRLW, 2, VPSRLW, 3)
	K4MADD(188, 120, Y3)
	ADDQ $256, SI
	ADDQ $32, DX
	ADDQ $32, BX
	ADDQ $176, R9
	ADDQ $176, R10
	ADDQ $176, R11
	ADDQ $176, R12
	DECQ CX
	JNZ  q5kloop

	KSTORE
	VZEROUPPER
	RET

// q6kScales holds, for 32-value block b of a Q6_K super-block, the
// VPSHUFB control that spreads its sub-block scales 2b and 2b+1 over
// eight bytes each.
DATA q6kScales<>+0(SB)/8, $0x0000000000000000
DATA q6kScales<>+8(SB)/8, $0x0101010101010101
DATA q6kScales<>+16(SB)/8, $0x0202020202020202
DATA q6kScales<>+24(SB)/8, $0x0303030303030303
DATA q6kScales<>+32(SB)/8, $0x0404040404040404
DATA q6kScales<>+40(SB)/8, $0x0505050505050505
DATA q6kScales<>+48(SB)/8, $0x0606060606060606
DATA q6kScales<>+56(SB)/8, $0x0707070707070707
DATA q6kScales<>+64(SB)/8, $0x0808080808080808
DATA q6kScales<>+72(SB)/8, $0x0909090909090909
DATA q6kScales<>+80(SB)/8, $0x0a0a0a0a0a0a0a0a
DATA q6kScales<>+88(SB)/8, $0x0b0b0b0b0b0b0b0b
DATA q6kScales<>+96(SB)/8, $0x0c0c0c0c0c0c0c0c
DATA q6kScales<>+104(SB)/8, $0x0d0d0d0d0d0d0d0d
DATA q6kScales<>+112(SB)/8, $0x0e0e0e0e0e0e0e0e
DATA q6kScales<>+120(SB)/8, $0x0f0f0f0f0f0f0f0f
GLOBL q6kScales<>(SB), RODATA|NOPTR, $128

// func int8Q6KAVX2(lanes *[4][8]float32, w *[4]*byte, q *int8, d *float32, nb int)
// lanes[j] = row j's accumulators over the nb super-blocks of the Q6_K
// rows at w[j]. The frame holds each row's d times the eight activation
// scales of a super-block.
TEXT ·int8Q6KAVX2(SB), NOSPLIT, $128-40
	MOVQ w+8(FP), AX
	MOVQ 0(AX), R9
	MOVQ 8(AX), R10
	MOVQ 16(AX), R11
	MOVQ 24(AX), R12
	MOVQ q+16(FP), SI
	MOVQ d+24(FP), DX
	MOVQ nb+32(FP), CX
	VXORPS Y0, Y0, Y0
	VXORPS Y1, Y1, Y1
	VXORPS Y2, Y2, Y2
	VXORPS Y3, Y3, Y3
	MOVL         $0x0f0f0f0f, AX
	VMOVD        AX, X8
	VPBROADCASTD X8, Y8
	MOVL         $0x30303030, AX
	VMOVD        AX, X9
	VPBROADCASTD X9, Y9
	MOVL         $0x20202020, AX
	VMOVD        AX, X10
	VPBROADCASTD X10, Y10
	LEAQ         q6kScales<>(SB), BX

q6kloop:
	PREFETCH4(R9)
	PREFETCH4(R10)
	PREFETCH4(R11)
	PREFETCH4(R12)
	Q6SCALE(R9, 0)
	Q6SCALE(R10, 32)
	Q6SCALE(R11, 64)
	Q6SCALE(R12, 96)
	VMOVDQU 0(SI), Y4
	VMOVDQU 32(SI), Y5
	VMOVDQU 64(SI), Y6
	VMOVDQU 96(SI), Y7
	Q6HALF(R9, 0, 128, 0, 0, Y0)
	Q6HALF(R10, 0, 128, 0, 32, Y1)
	Q6HALF(R11, 0, 128, 0, 64, Y2)
	Q6HALF(R12, 0, 128, 0, 96, Y3)
	VMOVDQU 128(SI), Y4
	VMOVDQU 160(SI), Y5
	VMOVDQU 192(SI), Y6
	VMOVDQU 224(SI), Y7
	Q6HALF(R9, 64, 160, 64, 16, Y0)
	Q6HALF(R10, 64, 160, 64, 48, Y1)
	Q6HALF(R11, 64, 160, 64, 80, Y2)
	Q6HALF(R12, 64, 160, 64, 112, Y3)
	ADDQ $256, SI
	ADDQ $32, DX
	ADDQ $210, R9
	ADDQ $210, R10
	ADDQ $210, R11
	ADDQ $210, R12
	DECQ CX
	JNZ  q6kloop

	MOVQ    lanes+0(FP), DI
	VMOVUPS Y0, (DI)
	VMOVUPS Y1, 32(DI)
	VMOVUPS Y2, 64(DI)
	VMOVUPS Y3, 96(DI)
	VZEROUPPER
	RET
