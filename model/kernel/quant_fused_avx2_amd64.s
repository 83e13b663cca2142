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
