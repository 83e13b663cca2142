#include "textflag.h"

// The AVX2 int8-mode products (quant_int8_amd64.go) of one weight row
// with one activation row (Rows, a run of rows) or four (Row4): each 32-value block of
// the row gives, for each activation row, eight int32 lanes, converted to
// float32, times the block's scale, added to that activation row's eight
// float32 accumulators. One weight row at a time, read front to back, is
// what streams from memory fastest: four rows read side by side, as the
// kernels once did, ran at 8 GB/s on one Zen 4 core where one row runs at
// 20 (Q8_0, 256 MiB of rows). Each prefetches its row 3 KiB ahead.
//
// Row4 finds activation row t at q + t·qs, its scales at d + t·ds and its
// block sums at sum + t·ds (qs = the row's values, ds = 4 bytes a block).

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
// activation scales at da to ds(SP).
#define Q6SCALE(R, da, ds) \
	MOVWLZX      208(R), AX \
	VMOVD        AX, X13 \
	VCVTPH2PS    X13, X13 \
	VBROADCASTSS X13, Y13 \
	VMULPS       da, Y13, Y13 \
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


// Q8W loads the Q8_0 block at (R): its values' magnitudes to Y10, the
// values (for their signs) to Y13 and its scale to X14.
#define Q8W(R) \
	PREFETCHT0   3072(R) \
	VMOVDQU      2(R), Y13 \
	VPABSB       Y13, Y10 \
	MOVWLZX      (R), BX \
	VMOVD        BX, X14 \
	VCVTPH2PS    X14, X14

// Q8ACT adds the block Q8W loaded times the 32 activations at qa, their
// scale at da, to acc. Y15 holds int16 ones.
#define Q8ACT(qa, da, acc) \
	VMOVDQU      qa, Y8 \
	VPSIGNB      Y13, Y8, Y11 \
	VPMADDUBSW   Y11, Y10, Y11 \
	VPMADDWD     Y15, Y11, Y11 \
	VCVTDQ2PS    Y11, Y11 \
	VMULSS       da, X14, X12 \
	VBROADCASTSS X12, Y12 \
	VMULPS       Y12, Y11, Y11 \
	VADDPS       Y11, acc, acc

// Q8SETUP zeroes the accumulators Y0-Y3 and sets Y15 to int16 ones.
#define Q8SETUP \
	VXORPS       Y0, Y0, Y0 \
	VXORPS       Y1, Y1, Y1 \
	VXORPS       Y2, Y2, Y2 \
	VXORPS       Y3, Y3, Y3 \
	MOVL         $0x00010001, AX \
	VMOVD        AX, X15 \
	VPBROADCASTD X15, Y15

// ROW4ARGS loads Row4's arguments: the row to R9, q to SI, d to DX, sum
// to R12 (where the format has sums), qs to R10, ds to R11, nb to CX.
#define ROW4ARGS \
	MOVQ w+8(FP), R9 \
	MOVQ q+16(FP), SI \
	MOVQ d+24(FP), DX \
	MOVQ sum+32(FP), R12 \
	MOVQ nb+40(FP), CX \
	MOVQ qs+48(FP), R10 \
	MOVQ ds+56(FP), R11

// STORE4 stores the sums of the accumulators Y0-Y3 of four activation
// rows, each in reduce8's tree, to out.
#define STORE4 \
	MOVQ    out+0(FP), DI \
	REDUCE8(Y0, X0, X8) \
	REDUCE8(Y1, X1, X8) \
	REDUCE8(Y2, X2, X8) \
	REDUCE8(Y3, X3, X8) \
	VMOVSS  X0, (DI) \
	VMOVSS  X1, 4(DI) \
	VMOVSS  X2, 8(DI) \
	VMOVSS  X3, 12(DI)

// REDUCE8 adds the eight lanes of Ya in the tree of reduce8, leaving the
// sum in the low float of Xa; Xt is scratch.
#define REDUCE8(Ya, Xa, Xt) \
	VEXTRACTF128 $1, Ya, Xt \
	VADDPS       Xt, Xa, Xa \
	VMOVHLPS     Xa, Xa, Xt \
	VADDPS       Xt, Xa, Xa \
	VMOVSHDUP    Xa, Xt \
	VADDSS       Xt, Xa, Xa

// ROWSARGS starts a Rows kernel's next row: the activation row, its scales
// and sums to SI, DX and BX, the block count to CX.
#define ROWSARGS \
	MOVQ q+24(FP), SI \
	MOVQ d+32(FP), DX \
	MOVQ sum+40(FP), BX \
	MOVQ nb+48(FP), CX

// func int8Q8_0Rows(out *float32, w *byte, rows int, q *int8, d *float32, sum *int32, nb int)
// out[i] = the product of the activation row with weight row i of the
// rows from w on, each nb blocks, one after another in memory.
TEXT ·int8Q8_0Rows(SB), NOSPLIT, $0-56
	MOVQ out+0(FP), R10
	MOVQ w+8(FP), R9
	MOVQ rows+16(FP), R11
	Q8SETUP

q80rows:
	ROWSARGS
	VXORPS Y0, Y0, Y0

q80blocks:
	Q8W(R9)
	Q8ACT((SI), (DX), Y0)
	ADDQ $32, SI
	ADDQ $4, DX
	ADDQ $34, R9
	DECQ CX
	JNZ  q80blocks

	REDUCE8(Y0, X0, X1)
	VMOVSS X0, (R10)
	ADDQ   $4, R10
	DECQ   R11
	JNZ    q80rows
	VZEROUPPER
	RET

// func int8Q8_0Row4(out *[4]float32, w *byte, q *int8, d *float32, sum *int32, nb, qs, ds int)
TEXT ·int8Q8_0Row4(SB), NOSPLIT, $0-64
	ROW4ARGS
	Q8SETUP
	LEAQ (SI)(R10*2), R13
	ADDQ R10, R13
	LEAQ (DX)(R11*2), R12
	ADDQ R11, R12

q80r4:
	Q8W(R9)
	Q8ACT((SI), (DX), Y0)
	Q8ACT((SI)(R10*1), (DX)(R11*1), Y1)
	Q8ACT((SI)(R10*2), (DX)(R11*2), Y2)
	Q8ACT((R13), (R12), Y3)
	ADDQ $32, SI
	ADDQ $32, R13
	ADDQ $4, DX
	ADDQ $4, R12
	ADDQ $34, R9
	DECQ CX
	JNZ  q80r4

	STORE4
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

// KSTORE stores each activation row's result, its accumulators' sum
// less its mins' (Y0-Y3 and Y4-Y7), to out.
#define KSTORE \
	MOVQ    out+0(FP), DI \
	REDUCE8(Y0, X0, X8) \
	REDUCE8(Y4, X4, X8) \
	VSUBSS  X4, X0, X0 \
	VMOVSS  X0, (DI) \
	REDUCE8(Y1, X1, X8) \
	REDUCE8(Y5, X5, X8) \
	VSUBSS  X5, X1, X1 \
	VMOVSS  X1, 4(DI) \
	REDUCE8(Y2, X2, X8) \
	REDUCE8(Y6, X6, X8) \
	VSUBSS  X6, X2, X2 \
	VMOVSS  X2, 8(DI) \
	REDUCE8(Y3, X3, X8) \
	REDUCE8(Y7, X7, X8) \
	VSUBSS  X7, X3, X3 \
	VMOVSS  X3, 12(DI)

// KSCALES4 unpacks the Q4_K/Q5_K super-block's scales at R9 once for each
// of four activation rows (the scales are the same, their products with
// the activation scales not): ds(SP) for row t at 32t, the int16 scales
// at 128.
#define KSCALES4 \
	MOVQ    R12, BX \
	VMOVUPS (DX), Y13 \
	KSCALES(R9, 128, 0, Y4) \
	LEAQ    (R12)(R11*1), BX \
	VMOVUPS (DX)(R11*1), Y13 \
	KSCALES(R9, 128, 32, Y5) \
	LEAQ    (R12)(R11*2), BX \
	VMOVUPS (DX)(R11*2), Y13 \
	KSCALES(R9, 128, 64, Y6) \
	ADDQ    R11, BX \
	LEAQ    (DX)(R11*2), AX \
	VMOVUPS (AX)(R11*1), Y13 \
	KSCALES(R9, 128, 96, Y7) \
	LEAQ    (SI)(R10*2), R13 \
	ADDQ    R10, R13

// K4PAIR adds the Q4_K block pair of nibbles at nib(R9), times the
// activations at a0 and a1, to acc.
#define K4PAIR(a0, a1, nib, sc, ds, acc) \
	VMOVDQU a0, Y8 \
	VMOVDQU a1, Y9 \
	K4NIBBLES(R9, nib) \
	K4MADD(sc, ds, acc)

// K5PAIR is K4PAIR for Q5_K, the fifth bits shifted into place by op0 $n0
// and op1 $n1.
#define K5PAIR(a0, a1, nib, op0, n0, op1, n1, sc, ds, acc) \
	VMOVDQU a0, Y8 \
	VMOVDQU a1, Y9 \
	K4NIBBLES(R9, nib) \
	K5HIGH(R9, 16, op0, n0, op1, n1) \
	K4MADD(sc, ds, acc)

// KROWSEND stores the Q4_K/Q5_K row's result, the accumulators' sum less
// the mins', and moves on to the next row.
#define KROWSEND(next) \
	REDUCE8(Y0, X0, X1) \
	REDUCE8(Y4, X4, X1) \
	VSUBSS X4, X0, X0 \
	VMOVSS X0, (R10) \
	ADDQ   $4, R10 \
	DECQ   R11 \
	JNZ    next

// func int8Q4KRows(out *float32, w *byte, rows int, q *int8, d *float32, sum *int32, nb int)
// out[i] = the product of the activation row with Q4_K row i from w on,
// each nb super-blocks: its accumulators less its mins. Each super-block's
// 6-bit scales and mins are unpacked as scaleMinK4 spells out, four at a
// time in 32-bit words. The frame holds d times the super-block's eight
// activation scales (0-31) and its scales as int16s (128-143, where Row4
// has them).
TEXT ·int8Q4KRows(SB), NOSPLIT, $144-56
	MOVQ out+0(FP), R10
	MOVQ w+8(FP), R9
	MOVQ rows+16(FP), R11
	KSETUP

q4krows:
	ROWSARGS
	VXORPS Y0, Y0, Y0
	VXORPS Y4, Y4, Y4

q4kblocks:
	VMOVUPS (DX), Y13
	PREFETCH3(R9)
	KSCALES(R9, 128, 0, Y4)
	K4PAIR(0(SI), 32(SI), 16, 128, 0, Y0)
	K4PAIR(64(SI), 96(SI), 48, 132, 8, Y0)
	K4PAIR(128(SI), 160(SI), 80, 136, 16, Y0)
	K4PAIR(192(SI), 224(SI), 112, 140, 24, Y0)
	ADDQ $256, SI
	ADDQ $32, DX
	ADDQ $32, BX
	ADDQ $144, R9
	DECQ CX
	JNZ  q4kblocks

	KROWSEND(q4krows)
	VZEROUPPER
	RET

// K4ROWS4 adds block pair k of the Q4_K super-block at R9 times each of
// the four activation rows.
#define K4ROWS4(k) \
	K4PAIR((64*k)(SI), (64*k+32)(SI), (16+32*k), (128+4*k), (8*k), Y0) \
	K4PAIR((64*k)(SI)(R10*1), (64*k+32)(SI)(R10*1), (16+32*k), (128+4*k), (32+8*k), Y1) \
	K4PAIR((64*k)(SI)(R10*2), (64*k+32)(SI)(R10*2), (16+32*k), (128+4*k), (64+8*k), Y2) \
	K4PAIR((64*k)(R13), (64*k+32)(R13), (16+32*k), (128+4*k), (96+8*k), Y3)

// func int8Q4KRow4(out *[4]float32, w *byte, q *int8, d *float32, sum *int32, nb, qs, ds int)
// out[t] = the product with activation row t.
TEXT ·int8Q4KRow4(SB), NOSPLIT, $144-64
	ROW4ARGS
	KSETUP

q4kr4:
	PREFETCH3(R9)
	KSCALES4
	K4ROWS4(0)
	K4ROWS4(1)
	K4ROWS4(2)
	K4ROWS4(3)
	ADDQ $256, SI
	ADDQ $32, DX
	ADDQ $32, R12
	ADDQ $144, R9
	DECQ CX
	JNZ  q4kr4

	KSTORE
	VZEROUPPER
	RET

// func int8Q5KRows(out *float32, w *byte, rows int, q *int8, d *float32, sum *int32, nb int)
// As int8Q4KRows, for Q5_K: the fifth bit of block j's values is bit j
// of the 32 bytes at 16.
TEXT ·int8Q5KRows(SB), NOSPLIT, $144-56
	MOVQ out+0(FP), R10
	MOVQ w+8(FP), R9
	MOVQ rows+16(FP), R11
	KSETUP

q5krows:
	ROWSARGS
	VXORPS Y0, Y0, Y0
	VXORPS Y4, Y4, Y4

q5kblocks:
	VMOVUPS (DX), Y13
	PREFETCH3(R9)
	KSCALES(R9, 128, 0, Y4)
	K5PAIR(0(SI), 32(SI), 48, VPSLLW, 4, VPSLLW, 3, 128, 0, Y0)
	K5PAIR(64(SI), 96(SI), 80, VPSLLW, 2, VPSLLW, 1, 132, 8, Y0)
	K5PAIR(128(SI), 160(SI), 112, VPSRLW, 0, VPSRLW, 1, 136, 16, Y0)
	K5PAIR(192(SI), 224(SI), 144, VPSRLW, 2, VPSRLW, 3, 140, 24, Y0)
	ADDQ $256, SI
	ADDQ $32, DX
	ADDQ $32, BX
	ADDQ $176, R9
	DECQ CX
	JNZ  q5kblocks

	KROWSEND(q5krows)
	VZEROUPPER
	RET

// K5ROWS4 adds block pair k of the Q5_K super-block at R9, its fifth bits
// shifted by op0 $n0 and op1 $n1, times each of the four activation rows.
#define K5ROWS4(k, op0, n0, op1, n1) \
	K5PAIR((64*k)(SI), (64*k+32)(SI), (48+32*k), op0, n0, op1, n1, (128+4*k), (8*k), Y0) \
	K5PAIR((64*k)(SI)(R10*1), (64*k+32)(SI)(R10*1), (48+32*k), op0, n0, op1, n1, (128+4*k), (32+8*k), Y1) \
	K5PAIR((64*k)(SI)(R10*2), (64*k+32)(SI)(R10*2), (48+32*k), op0, n0, op1, n1, (128+4*k), (64+8*k), Y2) \
	K5PAIR((64*k)(R13), (64*k+32)(R13), (48+32*k), op0, n0, op1, n1, (128+4*k), (96+8*k), Y3)

// func int8Q5KRow4(out *[4]float32, w *byte, q *int8, d *float32, sum *int32, nb, qs, ds int)
TEXT ·int8Q5KRow4(SB), NOSPLIT, $144-64
	ROW4ARGS
	KSETUP

q5kr4:
	PREFETCH3(R9)
	KSCALES4
	K5ROWS4(0, VPSLLW, 4, VPSLLW, 3)
	K5ROWS4(1, VPSLLW, 2, VPSLLW, 1)
	K5ROWS4(2, VPSRLW, 0, VPSRLW, 1)
	K5ROWS4(3, VPSRLW, 2, VPSRLW, 3)
	ADDQ $256, SI
	ADDQ $32, DX
	ADDQ $32, R12
	ADDQ $176, R9
	DECQ CX
	JNZ  q5kr4

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

// Q6SETUP zeroes the accumulators Y0-Y3, sets Y8 to 0x0f, Y9 to 0x30
// and Y10 to 0x20 in every byte and BX to q6kScales.
#define Q6SETUP \
	VXORPS       Y0, Y0, Y0 \
	VXORPS       Y1, Y1, Y1 \
	VXORPS       Y2, Y2, Y2 \
	VXORPS       Y3, Y3, Y3 \
	MOVL         $0x0f0f0f0f, AX \
	VMOVD        AX, X8 \
	VPBROADCASTD X8, Y8 \
	MOVL         $0x30303030, AX \
	VMOVD        AX, X9 \
	VPBROADCASTD X9, Y9 \
	MOVL         $0x20202020, AX \
	VMOVD        AX, X10 \
	VPBROADCASTD X10, Y10 \
	LEAQ         q6kScales<>(SB), BX

// Q6ACTS loads four activation blocks from a0-a3 to Y4-Y7.
#define Q6ACTS(a0, a1, a2, a3) \
	VMOVDQU a0, Y4 \
	VMOVDQU a1, Y5 \
	VMOVDQU a2, Y6 \
	VMOVDQU a3, Y7

// func int8Q6KRows(out *float32, w *byte, rows int, q *int8, d *float32, sum *int32, nb int)
// out[i] = the product of the activation row with Q6_K row i from w on,
// each nb super-blocks. The frame holds d times the eight activation
// scales of a super-block.
TEXT ·int8Q6KRows(SB), NOSPLIT, $32-56
	MOVQ out+0(FP), R10
	MOVQ w+8(FP), R9
	MOVQ rows+16(FP), R11
	Q6SETUP

q6krows:
	MOVQ q+24(FP), SI
	MOVQ d+32(FP), DX
	MOVQ nb+48(FP), CX
	VXORPS Y0, Y0, Y0

q6kblocks:
	PREFETCH4(R9)
	Q6SCALE(R9, (DX), 0)
	Q6ACTS(0(SI), 32(SI), 64(SI), 96(SI))
	Q6HALF(R9, 0, 128, 0, 0, Y0)
	Q6ACTS(128(SI), 160(SI), 192(SI), 224(SI))
	Q6HALF(R9, 64, 160, 64, 16, Y0)
	ADDQ $256, SI
	ADDQ $32, DX
	ADDQ $210, R9
	DECQ CX
	JNZ  q6kblocks

	REDUCE8(Y0, X0, X1)
	VMOVSS X0, (R10)
	ADDQ   $4, R10
	DECQ   R11
	JNZ    q6krows
	VZEROUPPER
	RET

// Q6ROWS4 adds half h of the Q6_K super-block at R9 times each of the
// four activation rows.
#define Q6ROWS4(h) \
	Q6ACTS((128*h)(SI), (128*h+32)(SI), (128*h+64)(SI), (128*h+96)(SI)) \
	Q6HALF(R9, (64*h), (128+32*h), (64*h), (16*h), Y0) \
	Q6ACTS((128*h)(SI)(R10*1), (128*h+32)(SI)(R10*1), (128*h+64)(SI)(R10*1), (128*h+96)(SI)(R10*1)) \
	Q6HALF(R9, (64*h), (128+32*h), (64*h), (32+16*h), Y1) \
	Q6ACTS((128*h)(SI)(R10*2), (128*h+32)(SI)(R10*2), (128*h+64)(SI)(R10*2), (128*h+96)(SI)(R10*2)) \
	Q6HALF(R9, (64*h), (128+32*h), (64*h), (64+16*h), Y2) \
	Q6ACTS((128*h)(R13), (128*h+32)(R13), (128*h+64)(R13), (128*h+96)(R13)) \
	Q6HALF(R9, (64*h), (128+32*h), (64*h), (96+16*h), Y3)

// func int8Q6KRow4(out *[4]float32, w *byte, q *int8, d *float32, sum *int32, nb, qs, ds int)
TEXT ·int8Q6KRow4(SB), NOSPLIT, $128-64
	ROW4ARGS
	Q6SETUP
	LEAQ (SI)(R10*2), R13
	ADDQ R10, R13
	LEAQ (DX)(R11*2), R12
	ADDQ R11, R12

q6kr4:
	PREFETCH4(R9)
	Q6SCALE(R9, (DX), 0)
	Q6SCALE(R9, (DX)(R11*1), 32)
	Q6SCALE(R9, (DX)(R11*2), 64)
	Q6SCALE(R9, (R12), 96)
	Q6ROWS4(0)
	Q6ROWS4(1)
	ADDQ $256, SI
	ADDQ $256, R13
	ADDQ $32, DX
	ADDQ $32, R12
	ADDQ $210, R9
	DECQ CX
	JNZ  q6kr4

	STORE4
	VZEROUPPER
	RET

// The AVX-512 VNNI Q8_0 kernels (where the CPU has AVX512_VNNI and VL):
// VPDPBUSD sums the four unsigned-by-signed byte products of each lane
// into int32 in one instruction, the same integers as VPMADDUBSW then
// VPMADDWD, and the embedded broadcast of VMULPS.BCST forms each block's
// scale vector from the activation scale in memory, so that a block costs
// an activation row six instructions where the AVX2 kernels take eight.

// Q8WV loads the Q8_0 block at (R): its values' magnitudes to Y10, the
// values (for their signs) to Y13 and its scale, broadcast, to Y14.
#define Q8WV(R) \
	PREFETCHT0   3072(R) \
	VMOVDQU      2(R), Y13 \
	VPABSB       Y13, Y10 \
	MOVWLZX      (R), BX \
	VMOVD        BX, X14 \
	VCVTPH2PS    X14, X14 \
	VBROADCASTSS X14, Y14

// Q8ACTV adds the block Q8WV loaded times the 32 activations at qa, their
// scale at da, to acc.
#define Q8ACTV(qa, da, acc) \
	VMOVDQU      qa, Y8 \
	VPSIGNB      Y13, Y8, Y11 \
	VPXOR        Y12, Y12, Y12 \
	VPDPBUSD     Y11, Y10, Y12 \
	VCVTDQ2PS    Y12, Y12 \
	VMULPS.BCST  da, Y14, Y9 \
	VMULPS       Y9, Y12, Y12 \
	VADDPS       Y12, acc, acc

// func int8Q8_0RowsVNNI(out *float32, w *byte, rows int, q *int8, d *float32, sum *int32, nb int)
TEXT ·int8Q8_0RowsVNNI(SB), NOSPLIT, $0-56
	MOVQ out+0(FP), R10
	MOVQ w+8(FP), R9
	MOVQ rows+16(FP), R11

q80vrows:
	ROWSARGS
	VXORPS Y0, Y0, Y0

q80vblocks:
	Q8WV(R9)
	Q8ACTV((SI), (DX), Y0)
	ADDQ $32, SI
	ADDQ $4, DX
	ADDQ $34, R9
	DECQ CX
	JNZ  q80vblocks

	REDUCE8(Y0, X0, X1)
	VMOVSS X0, (R10)
	ADDQ   $4, R10
	DECQ   R11
	JNZ    q80vrows
	VZEROUPPER
	RET

// func int8Q8_0Row4VNNI(out *[4]float32, w *byte, q *int8, d *float32, sum *int32, nb, qs, ds int)
TEXT ·int8Q8_0Row4VNNI(SB), NOSPLIT, $0-64
	ROW4ARGS
	VXORPS Y0, Y0, Y0
	VXORPS Y1, Y1, Y1
	VXORPS Y2, Y2, Y2
	VXORPS Y3, Y3, Y3
	LEAQ (SI)(R10*2), R13
	ADDQ R10, R13
	LEAQ (DX)(R11*2), R12
	ADDQ R11, R12

q80vr4:
	Q8WV(R9)
	Q8ACTV((SI), (DX), Y0)
	Q8ACTV((SI)(R10*1), (DX)(R11*1), Y1)
	Q8ACTV((SI)(R10*2), (DX)(R11*2), Y2)
	Q8ACTV((R13), (R12), Y3)
	ADDQ $32, SI
	ADDQ $32, R13
	ADDQ $4, DX
	ADDQ $4, R12
	ADDQ $34, R9
	DECQ CX
	JNZ  q80vr4

	STORE4
	VZEROUPPER
	RET
