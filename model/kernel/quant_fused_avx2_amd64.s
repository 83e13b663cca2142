#include "textflag.h"

// The AVX2 fused one-row products: those of quant_fused_amd64.s with each
// 16-lane accumulator in two Y registers (lanes 0-7 and 8-15), as the AVX2
// tile kernels hold them; the caller reduces the stored lanes.

// Q8Y dequantizes 8 values of the Q8_0 block at (R) from offset off with
// the scale in Y13, and adds their products with x into acc.
#define Q8Y(R, off, x, acc) \
	VPMOVSXBD off(R), Y12 \
	VCVTDQ2PS Y12, Y12 \
	VMULPS    Y13, Y12, Y12 \
	VFMADD231PS Y12, x, acc

// Q8YROW adds the Q8_0 block at (R) times Y8-Y11 into lo and hi.
#define Q8YROW(R, lo, hi) \
	MOVWLZX   (R), AX \
	VMOVD     AX, X13 \
	VCVTPH2PS X13, X13 \
	VBROADCASTSS X13, Y13 \
	Q8Y(R, 2, Y8, lo) \
	Q8Y(R, 10, Y9, hi) \
	Q8Y(R, 18, Y10, lo) \
	Q8Y(R, 26, Y11, hi)

// func mulQ8_0x1AVX2(lanes *[4][16]float32, x *float32, w *[4]*byte, nb int)
// lanes[j] = the 16-lane products of x with the Q8_0 row w[j] of nb blocks.
TEXT ·mulQ8_0x1AVX2(SB), NOSPLIT, $0-32
	MOVQ lanes+0(FP), DI
	MOVQ x+8(FP), SI
	MOVQ w+16(FP), AX
	MOVQ 0(AX), R9
	MOVQ 8(AX), R10
	MOVQ 16(AX), R11
	MOVQ 24(AX), R12
	MOVQ nb+24(FP), CX
	VXORPS Y0, Y0, Y0
	VXORPS Y1, Y1, Y1
	VXORPS Y2, Y2, Y2
	VXORPS Y3, Y3, Y3
	VXORPS Y4, Y4, Y4
	VXORPS Y5, Y5, Y5
	VXORPS Y6, Y6, Y6
	VXORPS Y7, Y7, Y7

loop:
	VMOVUPS (SI), Y8
	VMOVUPS 32(SI), Y9
	VMOVUPS 64(SI), Y10
	VMOVUPS 96(SI), Y11
	Q8YROW(R9, Y0, Y1)
	Q8YROW(R10, Y2, Y3)
	Q8YROW(R11, Y4, Y5)
	Q8YROW(R12, Y6, Y7)
	ADDQ $128, SI
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
	VMOVUPS Y4, 128(DI)
	VMOVUPS Y5, 160(DI)
	VMOVUPS Y6, 192(DI)
	VMOVUPS Y7, 224(DI)
	VZEROUPPER
	RET

// Q4YLO and Q4YHI dequantize the low or high nibbles of the 8 bytes at
// boff(R) with the scale Y13 and min Y14 and add their products with x
// into acc.
#define Q4YLO(R, boff, x, acc) \
	VPMOVZXBD boff(R), Y12 \
	VPAND     Y15, Y12, Y12 \
	VCVTDQ2PS Y12, Y12 \
	VMULPS    Y13, Y12, Y12 \
	VSUBPS    Y14, Y12, Y12 \
	VFMADD231PS Y12, x, acc

#define Q4YHI(R, boff, x, acc) \
	VPMOVZXBD boff(R), Y12 \
	VPSRLD    $4, Y12, Y12 \
	VCVTDQ2PS Y12, Y12 \
	VMULPS    Y13, Y12, Y12 \
	VSUBPS    Y14, Y12, Y12 \
	VFMADD231PS Y12, x, acc

// Q4YROW adds 32 values of the Q4_K chunk at (R), nibbles OP, scale and
// min at soff, times Y8-Y11 into lo and hi.
#define Q4YROW(OP, R, soff, lo, hi) \
	VBROADCASTSS soff(DX), Y13 \
	VBROADCASTSS soff(BX), Y14 \
	OP(R, 0, Y8, lo) \
	OP(R, 8, Y9, hi) \
	OP(R, 16, Y10, lo) \
	OP(R, 24, Y11, hi)

// func mulQ4Kx1AVX2(lanes *[4][16]float32, x *float32, q *[4]*byte, dsc, dmn *[4][8]float32)
// mulQ4Kx1AVX512 on AVX2.
TEXT ·mulQ4Kx1AVX2(SB), NOSPLIT, $0-40
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
	VMOVD AX, X15
	VPBROADCASTD X15, Y15
	VMOVUPS (DI), Y0
	VMOVUPS 32(DI), Y1
	VMOVUPS 64(DI), Y2
	VMOVUPS 96(DI), Y3
	VMOVUPS 128(DI), Y4
	VMOVUPS 160(DI), Y5
	VMOVUPS 192(DI), Y6
	VMOVUPS 224(DI), Y7
	MOVQ $4, CX

chunk:
	VMOVUPS (SI), Y8
	VMOVUPS 32(SI), Y9
	VMOVUPS 64(SI), Y10
	VMOVUPS 96(SI), Y11
	Q4YROW(Q4YLO, R9, 0, Y0, Y1)
	Q4YROW(Q4YLO, R10, 32, Y2, Y3)
	Q4YROW(Q4YLO, R11, 64, Y4, Y5)
	Q4YROW(Q4YLO, R12, 96, Y6, Y7)
	VMOVUPS 128(SI), Y8
	VMOVUPS 160(SI), Y9
	VMOVUPS 192(SI), Y10
	VMOVUPS 224(SI), Y11
	Q4YROW(Q4YHI, R9, 4, Y0, Y1)
	Q4YROW(Q4YHI, R10, 36, Y2, Y3)
	Q4YROW(Q4YHI, R11, 68, Y4, Y5)
	Q4YROW(Q4YHI, R12, 100, Y6, Y7)
	ADDQ $256, SI
	ADDQ $32, R9
	ADDQ $32, R10
	ADDQ $32, R11
	ADDQ $32, R12
	ADDQ $8, DX
	ADDQ $8, BX
	DECQ CX
	JNZ  chunk

	VMOVUPS Y0, (DI)
	VMOVUPS Y1, 32(DI)
	VMOVUPS Y2, 64(DI)
	VMOVUPS Y3, 96(DI)
	VMOVUPS Y4, 128(DI)
	VMOVUPS Y5, 160(DI)
	VMOVUPS Y6, 192(DI)
	VMOVUPS Y7, 224(DI)
	VZEROUPPER
	RET
