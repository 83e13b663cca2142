#include "textflag.h"

// The AVX2 int8-mode products (quant_int8_amd64.go): each 32-value block
// of a weight row gives eight int32 lanes, converted to float32, times the
// block's scale, added to the row's eight float32 accumulators.

// Q8ROW adds the Q8_0 block at (R) times the activations in Y8, with
// their scale in X9, to acc. Y15 holds int16 ones.
#define Q8ROW(R, acc) \
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
