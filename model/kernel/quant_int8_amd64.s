#include "textflag.h"

// The AVX2 int8-mode products (quant_int8_amd64.go) of one weight row
// with one activation row (Rows, a run of rows) or four (Row4): each
// weight block of the row gives, for each activation row, eight int32
// lanes, converted to float32, times the block's scale, added to that
// activation row's eight float32 accumulators. One weight row at a time, read front to back, is
// what streams from memory fastest: four rows read side by side, as the
// kernels once did, ran at 8 GB/s on one Zen 4 core where one row runs at
// 20 (Q8_0, 256 MiB of rows). Each prefetches its row 3 KiB ahead.
//
// Row4 finds activation row t at q + t·qs, its scales at d + t·ds bytes
// and its block sums at sum + t·ss bytes.

// PREFETCH3 and PREFETCH4 prefetch the cache lines of row R 3 KiB ahead
// that a Q4_K/Q5_K and a Q6_K super-block step over.
#define PREFETCH3(R) \
	PREFETCHT0 3072(R) \
	PREFETCHT0 3136(R) \
	PREFETCHT0 3200(R)

#define PREFETCH4(R) \
	PREFETCH3(R) \
	PREFETCHT0 3264(R)


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

// KUNPACK unpacks the Q4_K/Q5_K super-block at (R), as scaleMinK4 spells
// out, four at a time in 32-bit words: its eight 6-bit scales as int16s
// to 304(SP), its mins as int32s to Y9, d and dmin as floats to 288(SP)
// and 292(SP). AX, DI, R8 and R13 are scratch.
#define KUNPACK(R) \
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
	VMOVDQU      X11, 304(SP) \
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
	VPMOVZXBD    X12, Y9 \
	VMOVD        (R), X12 \
	VCVTPH2PS    X12, X12 \
	VMOVQ        X12, 288(SP)

// KSPREAD broadcasts the eight int16 scales KUNPACK left at 304(SP) to a
// vector each at 32j(SP), for Row4's four activation rows.
#define KSPREAD \
	VPBROADCASTW 304(SP), Y15 \
	VMOVDQU      Y15, 0(SP) \
	VPBROADCASTW 306(SP), Y15 \
	VMOVDQU      Y15, 32(SP) \
	VPBROADCASTW 308(SP), Y15 \
	VMOVDQU      Y15, 64(SP) \
	VPBROADCASTW 310(SP), Y15 \
	VMOVDQU      Y15, 96(SP) \
	VPBROADCASTW 312(SP), Y15 \
	VMOVDQU      Y15, 128(SP) \
	VPBROADCASTW 314(SP), Y15 \
	VMOVDQU      Y15, 160(SP) \
	VPBROADCASTW 316(SP), Y15 \
	VMOVDQU      Y15, 192(SP) \
	VPBROADCASTW 318(SP), Y15 \
	VMOVDQU      Y15, 224(SP)

// KBCAST broadcasts the int16 scales of block pair k, for Rows, to Y1
// and Y2 (which only Row4 uses for accumulators).
#define KBCAST(k) \
	VPBROADCASTW (304+4*k)(SP), Y1 \
	VPBROADCASTW (306+4*k)(SP), Y2

// K4NIBBLES splits the 32 bytes at off(R) into their low nibbles (lo:
// one 32-value block) and high nibbles (hi: the next), loading with MOV
// and masking with AND (VMOVDQU and VPAND, or their EVEX forms VMOVDQU32
// and VPANDD for Y16-Y31). Y10 holds 0x0f.
#define K4NIBBLES(R, off, MOV, AND, lo, hi) \
	MOV          off(R), lo \
	VPSRLW       $4, lo, hi \
	AND          Y10, lo, lo \
	AND          Y10, hi, hi

// K5HIGH adds the fifth bits of a Q5_K block pair from the 32 bytes at
// off(R): moved to bit 4 (Y14 holds 0x10) by op0 $n0 for lo and by op1
// $n1 for hi, joined by OR (VPOR, or VPORD for Y16-Y31). Y8 and Y15 are
// scratch.
#define K5HIGH(R, off, op0, n0, op1, n1, OR, lo, hi) \
	VMOVDQU      off(R), Y8 \
	op0          $n0, Y8, Y15 \
	VPAND        Y14, Y15, Y15 \
	OR           Y15, lo, lo \
	op1          $n1, Y8, Y15 \
	VPAND        Y14, Y15, Y15 \
	OR           Y15, hi, hi

// KMADD multiplies the unsigned blocks in Y11 and Y12 by the activation
// blocks at a0 and a1 and by the int16 scale vectors s0 and s1, and adds
// them to the int32 lanes of Y13.
#define KMADD(a0, a1, s0, s1) \
	VPMADDUBSW a0, Y11, Y11 \
	VPMADDUBSW a1, Y12, Y12 \
	VPMADDWD   s0, Y11, Y11 \
	VPMADDWD   s1, Y12, Y12 \
	VPADDD     Y11, Y13, Y13 \
	VPADDD     Y12, Y13, Y13

// KMADDV is KMADD with AVX512_VNNI: VPDPWSSD multiplies and adds the
// int16 pairs into the int32 lanes in one instruction, the same integers.
#define KMADDV(a0, a1, s0, s1) \
	VPMADDUBSW a0, Y11, Y11 \
	VPMADDUBSW a1, Y12, Y12 \
	VPDPWSSD   s0, Y11, Y13 \
	VPDPWSSD   s1, Y12, Y13

// K4PAIR adds Q4_K block pair k of the super-block at R9, times the
// activations of the super-block at (a) and the scales s0 and s1, to Y13.
#define K4PAIR(M, a, k, s0, s1) \
	K4NIBBLES(R9, (16+32*k), VMOVDQU, VPAND, Y11, Y12) \
	M((64*k)(a), (64*k+32)(a), s0, s1)

// K5PAIR is K4PAIR for Q5_K, the fifth bits shifted into place by op0
// $n0 and op1 $n1.
#define K5PAIR(M, a, k, op0, n0, op1, n1, s0, s1) \
	K4NIBBLES(R9, (48+32*k), VMOVDQU, VPAND, Y11, Y12) \
	K5HIGH(R9, 16, op0, n0, op1, n1, VPOR, Y11, Y12) \
	M((64*k)(a), (64*k+32)(a), s0, s1)

// K4ROW adds the Q4_K super-block at R9 times the activations at (a) to
// Y13, zeroed first, its scales spread in the frame.
#define K4ROW(M, a) \
	VPXOR   Y13, Y13, Y13 \
	K4PAIR(M, a, 0, 0(SP), 32(SP)) \
	K4PAIR(M, a, 1, 64(SP), 96(SP)) \
	K4PAIR(M, a, 2, 128(SP), 160(SP)) \
	K4PAIR(M, a, 3, 192(SP), 224(SP))

// K5ROW is K4ROW for Q5_K.
#define K5ROW(M, a) \
	VPXOR   Y13, Y13, Y13 \
	K5PAIR(M, a, 0, VPSLLW, 4, VPSLLW, 3, 0(SP), 32(SP)) \
	K5PAIR(M, a, 1, VPSLLW, 2, VPSLLW, 1, 64(SP), 96(SP)) \
	K5PAIR(M, a, 2, VPSRLW, 0, VPSRLW, 1, 128(SP), 160(SP)) \
	K5PAIR(M, a, 3, VPSRLW, 2, VPSRLW, 3, 192(SP), 224(SP))

// KNONE is KFOURS's UNPACK for kernels that unpack per activation row.
#define KNONE(R)

// K4UNPACK splits the nibbles of the Q4_K super-block at R into its eight
// 32-value blocks, once for Row4's four activation rows, to Y16-Y23:
// registers only the EVEX encoding reaches, so for the VNNI twin alone.
#define K4UNPACK(R) \
	K4SPLIT(R, 16, Y16, Y17) \
	K4SPLIT(R, 48, Y18, Y19) \
	K4SPLIT(R, 80, Y20, Y21) \
	K4SPLIT(R, 112, Y22, Y23)

// K4SPLIT is K4NIBBLES into the EVEX registers lo and hi.
#define K4SPLIT(R, off, lo, hi) \
	K4NIBBLES(R, off, VMOVDQU32, VPANDD, lo, hi)

// K5UNPACK is K4UNPACK for Q5_K, the fifth bits in place as K5PAIR puts
// them.
#define K5UNPACK(R) \
	K5SPLIT(R, 48, VPSLLW, 4, VPSLLW, 3, Y16, Y17) \
	K5SPLIT(R, 80, VPSLLW, 2, VPSLLW, 1, Y18, Y19) \
	K5SPLIT(R, 112, VPSRLW, 0, VPSRLW, 1, Y20, Y21) \
	K5SPLIT(R, 144, VPSRLW, 2, VPSRLW, 3, Y22, Y23)

// K5SPLIT is K4SPLIT and K5HIGH into the EVEX registers lo and hi.
#define K5SPLIT(R, off, op0, n0, op1, n1, lo, hi) \
	K4SPLIT(R, off, lo, hi) \
	K5HIGH(R, 16, op0, n0, op1, n1, VPORD, lo, hi)

// K4ROWU is K4ROW and K5ROW with VPDPWSSD over the blocks K4UNPACK or
// K5UNPACK left: the same integers, without unpacking the weights again
// for every activation row.
#define K4ROWU(M, a) \
	VPXOR Y13, Y13, Y13 \
	K4PAIRU(a, 0, Y16, Y17) \
	K4PAIRU(a, 1, Y18, Y19) \
	K4PAIRU(a, 2, Y20, Y21) \
	K4PAIRU(a, 3, Y22, Y23)

#define K4PAIRU(a, k, b0, b1) \
	VPMADDUBSW (64*k)(a), b0, Y11 \
	VPMADDUBSW (64*k+32)(a), b1, Y12 \
	VPDPWSSD   (64*k)(SP), Y11, Y13 \
	VPDPWSSD   (64*k+32)(SP), Y12, Y13

// KFINISH adds the super-block's lanes in Y13 times d·dx to acc, and its
// mins (Y9) times the activation block sums at sa times dmin·dx to mins,
// dx the float at da. Y8 and Y15 are scratch.
#define KFINISH(da, sa, acc, mins) \
	VPMULLD      sa, Y9, Y8 \
	VCVTDQ2PS    Y8, Y8 \
	VMOVSS       292(SP), X15 \
	VMULSS       da, X15, X15 \
	VBROADCASTSS X15, Y15 \
	VMULPS       Y15, Y8, Y8 \
	VADDPS       Y8, mins, mins \
	VMOVSS       288(SP), X15 \
	VMULSS       da, X15, X15 \
	VBROADCASTSS X15, Y15 \
	VCVTDQ2PS    Y13, Y13 \
	VMULPS       Y15, Y13, Y13 \
	VADDPS       Y13, acc, acc

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

// KROW4 takes a Row4 kernel from one activation row to the next: AX to
// its values, DI to its scale and R8 to its block sums.
#define KROW4 \
	ADDQ R10, AX \
	ADDQ R11, DI \
	ADDQ R14, R8

// KROW4ARGS loads a K kernel's Row4 arguments: ROW4ARGS and ss to R14.
#define KROW4ARGS \
	ROW4ARGS \
	MOVQ ss+64(FP), R14

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

// Q6D stores the Q6_K super-block at (R)'s d as a float to 256(SP).
#define Q6D(R) \
	MOVWLZX      208(R), AX \
	VMOVD        AX, X13 \
	VCVTPH2PS    X13, X13 \
	VMOVSS       X13, 256(SP)

// Q6SC spreads the two sub-block scales of a 32-value block, from the
// scales in X15 by the q6kScales control at shuf(BX), to the int16s of Y.
#define Q6SC(shuf, X, Y) \
	VPSHUFB      shuf(BX), X15, X \
	VPMOVSXBW    X, Y

// Q6MADD offsets the 6-bit block in Y11 to signed (Y10 holds 32),
// multiplies it by the activations in act (the sign moved onto them, as
// VPMADDUBSW needs) and by its int16 scales s, and adds it to iacc.
#define Q6MADD(act, s, iacc) \
	Q6SIGNED(act) \
	VPMADDWD     s, Y11, Y11 \
	VPADDD       Y11, iacc, iacc

// Q6MADDV is Q6MADD with AVX512_VNNI's VPDPWSSD.
#define Q6MADDV(act, s, iacc) \
	Q6SIGNED(act) \
	VPDPWSSD     s, Y11, iacc

// Q6SIGNED offsets the 6-bit block in Y11 to signed and leaves in Y11
// its int16 pair products with the activations in act.
#define Q6SIGNED(act) \
	VPSUBB       Y10, Y11, Y11 \
	VPSIGNB      Y11, act, Y13 \
	VPABSB       Y11, Y11 \
	VPMADDUBSW   Y13, Y11, Y11

// Q6HALF adds four 32-value blocks of the Q6_K super-block at (R) to
// iacc: low bits from the 64 bytes at ql(R), high bits from the 32 at
// qh(R) (Y8 holds 0x0f, Y9 0x30), activations in Y4-Y7, scales s0-s3.
#define Q6HALF(M, R, ql, qh, s0, s1, s2, s3, iacc) \
	VMOVDQU      qh(R), Y12 \
	VPAND        ql(R), Y8, Y11 \
	VPSLLW       $4, Y12, Y13 \
	VPAND        Y9, Y13, Y13 \
	VPOR         Y13, Y11, Y11 \
	M(Y4, s0, iacc) \
	VPAND        (ql+32)(R), Y8, Y11 \
	VPSLLW       $2, Y12, Y13 \
	VPAND        Y9, Y13, Y13 \
	VPOR         Y13, Y11, Y11 \
	M(Y5, s1, iacc) \
	VMOVDQU      ql(R), Y11 \
	VPSRLW       $4, Y11, Y11 \
	VPAND        Y8, Y11, Y11 \
	VPAND        Y9, Y12, Y13 \
	VPOR         Y13, Y11, Y11 \
	M(Y6, s2, iacc) \
	VMOVDQU      (ql+32)(R), Y11 \
	VPSRLW       $4, Y11, Y11 \
	VPAND        Y8, Y11, Y11 \
	VPSRLW       $2, Y12, Y13 \
	VPAND        Y9, Y13, Y13 \
	VPOR         Y13, Y11, Y11 \
	M(Y7, s3, iacc)

// Q6ACTS loads four activation blocks from a0-a3 to Y4-Y7.
#define Q6ACTS(a0, a1, a2, a3) \
	VMOVDQU a0, Y4 \
	VMOVDQU a1, Y5 \
	VMOVDQU a2, Y6 \
	VMOVDQU a3, Y7

// Q6FINISH adds the super-block's lanes in iacc times d·dx to acc, dx
// the float at da.
#define Q6FINISH(da, iacc, acc) \
	VMOVSS       256(SP), X13 \
	VMULSS       da, X13, X13 \
	VBROADCASTSS X13, Y13 \
	VCVTDQ2PS    iacc, iacc \
	VMULPS       Y13, iacc, iacc \
	VADDPS       iacc, acc, acc

// Q6SPREAD spreads the scales of the Q6_K super-block at (R), for Row4's
// four activation rows, to a vector a 32-value block at 32b(SP).
#define Q6SPREAD(R) \
	VMOVDQU 192(R), X15 \
	Q6SC(0, X14, Y14) \
	VMOVDQU Y14, 0(SP) \
	Q6SC(16, X14, Y14) \
	VMOVDQU Y14, 32(SP) \
	Q6SC(32, X14, Y14) \
	VMOVDQU Y14, 64(SP) \
	Q6SC(48, X14, Y14) \
	VMOVDQU Y14, 96(SP) \
	Q6SC(64, X14, Y14) \
	VMOVDQU Y14, 128(SP) \
	Q6SC(80, X14, Y14) \
	VMOVDQU Y14, 160(SP) \
	Q6SC(96, X14, Y14) \
	VMOVDQU Y14, 192(SP) \
	Q6SC(112, X14, Y14) \
	VMOVDQU Y14, 224(SP)

// Q6ROW adds the Q6_K super-block at R9 times the activations at (a),
// the scale at da, to acc.
#define Q6ROW(M, a, da, acc) \
	VPXOR  Y14, Y14, Y14 \
	Q6ACTS(0(a), 32(a), 64(a), 96(a)) \
	Q6HALF(M, R9, 0, 128, 0(SP), 32(SP), 64(SP), 96(SP), Y14) \
	Q6ACTS(128(a), 160(a), 192(a), 224(a)) \
	Q6HALF(M, R9, 64, 160, 128(SP), 160(SP), 192(SP), 224(SP), Y14) \
	Q6FINISH(da, Y14, acc)

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

// K4SB and K5SB add a Q4_K or Q5_K super-block at R9 times the
// activations at (SI) to Y13, zeroed first, broadcasting its scales as
// they go: the inner step of KRUNS.
#define K4SB(M) \
	VPXOR   Y13, Y13, Y13 \
	KBCAST(0) \
	K4PAIR(M, SI, 0, Y1, Y2) \
	KBCAST(1) \
	K4PAIR(M, SI, 1, Y1, Y2) \
	KBCAST(2) \
	K4PAIR(M, SI, 2, Y1, Y2) \
	KBCAST(3) \
	K4PAIR(M, SI, 3, Y1, Y2)

#define K5SB(M) \
	VPXOR   Y13, Y13, Y13 \
	KBCAST(0) \
	K5PAIR(M, SI, 0, VPSLLW, 4, VPSLLW, 3, Y1, Y2) \
	KBCAST(1) \
	K5PAIR(M, SI, 1, VPSLLW, 2, VPSLLW, 1, Y1, Y2) \
	KBCAST(2) \
	K5PAIR(M, SI, 2, VPSRLW, 0, VPSRLW, 1, Y1, Y2) \
	KBCAST(3) \
	K5PAIR(M, SI, 3, VPSRLW, 2, VPSRLW, 3, Y1, Y2)

// KRUNS is the body of the Q4_K and Q5_K Rows kernels and their VNNI
// twins: M the madd macro, SB the super-block step (K4SB or K5SB), bytes
// the super-block's size.
#define KRUNS(M, SB, bytes) \
	MOVQ out+0(FP), R10 \
	MOVQ w+8(FP), R9 \
	MOVQ rows+16(FP), R11 \
	KSETUP \
krows: \
	ROWSARGS \
	VXORPS Y0, Y0, Y0 \
	VXORPS Y4, Y4, Y4 \
kblocks: \
	PREFETCH3(R9) \
	KUNPACK(R9) \
	SB(M) \
	KFINISH((DX), (BX), Y0, Y4) \
	ADDQ $256, SI \
	ADDQ $4, DX \
	ADDQ $32, BX \
	ADDQ $bytes, R9 \
	DECQ CX \
	JNZ  kblocks \
	KROWSEND(krows) \
	VZEROUPPER \
	RET

// KFOURS is the body of the Q4_K and Q5_K Row4 kernels and their VNNI
// twins: M the madd macro, UNPACK what is done once a super-block before
// its four activation rows (KNONE, K4UNPACK or K5UNPACK), ROW the
// super-block of one activation row (K4ROW, K5ROW or K4ROWU), bytes the
// super-block's size.
#define KFOURS(M, UNPACK, ROW, bytes) \
	KROW4ARGS \
	KSETUP \
kr4: \
	PREFETCH3(R9) \
	KUNPACK(R9) \
	KSPREAD \
	UNPACK(R9) \
	MOVQ SI, AX \
	MOVQ DX, DI \
	MOVQ R12, R8 \
	ROW(M, AX) \
	KFINISH((DI), (R8), Y0, Y4) \
	KROW4 \
	ROW(M, AX) \
	KFINISH((DI), (R8), Y1, Y5) \
	KROW4 \
	ROW(M, AX) \
	KFINISH((DI), (R8), Y2, Y6) \
	KROW4 \
	ROW(M, AX) \
	KFINISH((DI), (R8), Y3, Y7) \
	ADDQ $256, SI \
	ADDQ $4, DX \
	ADDQ $32, R12 \
	ADDQ $bytes, R9 \
	DECQ CX \
	JNZ  kr4 \
	KSTORE \
	VZEROUPPER \
	RET

// Q6KROWS is the body of int8Q6KRows and its VNNI twin, M the madd macro.
#define Q6KROWS(M) \
	MOVQ out+0(FP), R10 \
	MOVQ w+8(FP), R9 \
	MOVQ rows+16(FP), R11 \
	Q6SETUP \
q6krows: \
	MOVQ q+24(FP), SI \
	MOVQ d+32(FP), DX \
	MOVQ nb+48(FP), CX \
	VXORPS Y0, Y0, Y0 \
q6kblocks: \
	PREFETCH4(R9) \
	Q6D(R9) \
	VPXOR   Y1, Y1, Y1 \
	VMOVDQU 192(R9), X15 \
	Q6SC(0, X2, Y2) \
	Q6SC(16, X3, Y3) \
	Q6SC(32, X14, Y14) \
	Q6SC(48, X15, Y15) \
	Q6ACTS(0(SI), 32(SI), 64(SI), 96(SI)) \
	Q6HALF(M, R9, 0, 128, Y2, Y3, Y14, Y15, Y1) \
	VMOVDQU 192(R9), X15 \
	Q6SC(64, X2, Y2) \
	Q6SC(80, X3, Y3) \
	Q6SC(96, X14, Y14) \
	Q6SC(112, X15, Y15) \
	Q6ACTS(128(SI), 160(SI), 192(SI), 224(SI)) \
	Q6HALF(M, R9, 64, 160, Y2, Y3, Y14, Y15, Y1) \
	Q6FINISH((DX), Y1, Y0) \
	ADDQ $256, SI \
	ADDQ $4, DX \
	ADDQ $210, R9 \
	DECQ CX \
	JNZ  q6kblocks \
	REDUCE8(Y0, X0, X1) \
	VMOVSS X0, (R10) \
	ADDQ   $4, R10 \
	DECQ   R11 \
	JNZ    q6krows \
	VZEROUPPER \
	RET

// Q6KROW4 is the body of int8Q6KRow4 and its VNNI twin, M the madd macro.
#define Q6KROW4(M) \
	ROW4ARGS \
	Q6SETUP \
q6kr4: \
	PREFETCH4(R9) \
	Q6D(R9) \
	Q6SPREAD(R9) \
	MOVQ SI, AX \
	MOVQ DX, DI \
	Q6ROW(M, AX, (DI), Y0) \
	ADDQ R10, AX \
	ADDQ R11, DI \
	Q6ROW(M, AX, (DI), Y1) \
	ADDQ R10, AX \
	ADDQ R11, DI \
	Q6ROW(M, AX, (DI), Y2) \
	ADDQ R10, AX \
	ADDQ R11, DI \
	Q6ROW(M, AX, (DI), Y3) \
	ADDQ $256, SI \
	ADDQ $4, DX \
	ADDQ $210, R9 \
	DECQ CX \
	JNZ  q6kr4 \
	STORE4 \
	VZEROUPPER \
	RET

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

// func int8Q8_0Row4(out *[4]float32, w *byte, q *int8, d *float32, sum *int32, nb, qs, ds, ss int)
TEXT ·int8Q8_0Row4(SB), NOSPLIT, $0-72
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
// The K formats' kernels keep one int32 accumulator (Y13, Y14 for Q6_K's
// Row4) over a super-block's eight 32-value blocks and turn it into
// float32 once, times d·dx, where the activations have one scale a
// super-block. Row4 takes the four activation rows one after another
// through each super-block, the weights' scales spread once for all four
// into the frame.

// func int8Q4KRows(out *float32, w *byte, rows int, q *int8, d *float32, sum *int32, nb int)
// out[i] = the product of the activation row with Q4_K row i from w on,
// each nb super-blocks: its accumulators less its mins. The frame holds
// KUNPACK's scales (304-319) and d and dmin (288-295); Row4 spreads the
// scales to 0-255.
TEXT ·int8Q4KRows(SB), NOSPLIT, $320-56
	KRUNS(KMADD, K4SB, 144)

// int8Q4KRowsVNNI is int8Q4KRows with VPDPWSSD.
TEXT ·int8Q4KRowsVNNI(SB), NOSPLIT, $320-56
	KRUNS(KMADDV, K4SB, 144)

// func int8Q4KRow4(out *[4]float32, w *byte, q *int8, d *float32, sum *int32, nb, qs, ds, ss int)
// out[t] = the product with activation row t.
TEXT ·int8Q4KRow4(SB), NOSPLIT, $320-72
	KFOURS(KMADD, KNONE, K4ROW, 144)

// int8Q4KRow4VNNI is int8Q4KRow4 with VPDPWSSD.
TEXT ·int8Q4KRow4VNNI(SB), NOSPLIT, $320-72
	KFOURS(KMADDV, K4UNPACK, K4ROWU, 144)

// func int8Q5KRows(out *float32, w *byte, rows int, q *int8, d *float32, sum *int32, nb int)
// As int8Q4KRows, for Q5_K: the fifth bit of block j's values is bit j
// of the 32 bytes at 16.
TEXT ·int8Q5KRows(SB), NOSPLIT, $320-56
	KRUNS(KMADD, K5SB, 176)

// int8Q5KRowsVNNI is int8Q5KRows with VPDPWSSD.
TEXT ·int8Q5KRowsVNNI(SB), NOSPLIT, $320-56
	KRUNS(KMADDV, K5SB, 176)

// func int8Q5KRow4(out *[4]float32, w *byte, q *int8, d *float32, sum *int32, nb, qs, ds, ss int)
TEXT ·int8Q5KRow4(SB), NOSPLIT, $320-72
	KFOURS(KMADD, KNONE, K5ROW, 176)

// int8Q5KRow4VNNI is int8Q5KRow4 with VPDPWSSD.
TEXT ·int8Q5KRow4VNNI(SB), NOSPLIT, $320-72
	KFOURS(KMADDV, K5UNPACK, K4ROWU, 176)

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

// func int8Q6KRows(out *float32, w *byte, rows int, q *int8, d *float32, sum *int32, nb int)
// out[i] = the product of the activation row with Q6_K row i from w on,
// each nb super-blocks, the lanes summed in Y1; each half's scales spread
// to Y2, Y3, Y14 and Y15. The frame holds the super-block's d.
TEXT ·int8Q6KRows(SB), NOSPLIT, $264-56
	Q6KROWS(Q6MADD)

// int8Q6KRowsVNNI is int8Q6KRows with VPDPWSSD.
TEXT ·int8Q6KRowsVNNI(SB), NOSPLIT, $264-56
	Q6KROWS(Q6MADDV)

// func int8Q6KRow4(out *[4]float32, w *byte, q *int8, d *float32, sum *int32, nb, qs, ds, ss int)
TEXT ·int8Q6KRow4(SB), NOSPLIT, $264-72
	Q6KROW4(Q6MADD)

// int8Q6KRow4VNNI is int8Q6KRow4 with VPDPWSSD.
TEXT ·int8Q6KRow4VNNI(SB), NOSPLIT, $264-72
	Q6KROW4(Q6MADDV)

// The AVX-512 VNNI Q8_0 kernels (where the CPU has AVX512_VNNI and VL):
// VPDPBUSD sums the four unsigned-by-signed byte products of each lane
// into int32 in one instruction, the same integers as VPMADDUBSW then
// VPMADDWD, and the embedded broadcast of VMULPS.BCST forms each block's
// scale vector from the activation scale in memory, so that a block costs
// an activation row six instructions where the AVX2 kernels take eight.

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

// func int8Q8_0Row4VNNI(out *[4]float32, w *byte, q *int8, d *float32, sum *int32, nb, qs, ds, ss int)
TEXT ·int8Q8_0Row4VNNI(SB), NOSPLIT, $0-72
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
