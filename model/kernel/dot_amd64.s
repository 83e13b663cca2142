#include "textflag.h"

#include "dot_amd64.h"

// func dotAVX2(a, b *float32, n int) float32
// n is a positive multiple of 32. Four 8-lane accumulators, fused
// multiply-add, then a fixed reduction: (acc0+acc1)+(acc2+acc3), high half
// plus low half, then two horizontal adds.
TEXT ·dotAVX2(SB), NOSPLIT, $0-28
	MOVQ a+0(FP), SI
	MOVQ b+8(FP), DI
	MOVQ n+16(FP), CX
	ZERO_ACCUMULATORS

dotloop:
	VMOVUPS 0(SI), Y4
	VMOVUPS 32(SI), Y5
	VMOVUPS 64(SI), Y6
	VMOVUPS 96(SI), Y7
	VFMADD231PS 0(DI), Y4, Y0
	VFMADD231PS 32(DI), Y5, Y1
	VFMADD231PS 64(DI), Y6, Y2
	VFMADD231PS 96(DI), Y7, Y3
	ADDQ $128, SI
	ADDQ $128, DI
	SUBQ $32, CX
	JNZ  dotloop

	REDUCE
	MOVSS X0, ret+24(FP)
	RET
