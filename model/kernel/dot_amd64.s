#include "textflag.h"

// The dot product keeps four 8-lane accumulators in Y0-Y3.
#define ZERO_ACCUMULATORS \
	VXORPS Y0, Y0, Y0 \
	VXORPS Y1, Y1, Y1 \
	VXORPS Y2, Y2, Y2 \
	VXORPS Y3, Y3, Y3

// REDUCE adds the accumulators into X0 in a fixed order: (Y0+Y1)+(Y2+Y3),
// then the high half to the low half, then two horizontal adds. The caller
// stores X0 and returns (kept in the function body for go vet's asmdecl).
#define REDUCE \
	VADDPS       Y1, Y0, Y0 \
	VADDPS       Y3, Y2, Y2 \
	VADDPS       Y2, Y0, Y0 \
	VEXTRACTF128 $1, Y0, X1 \
	VADDPS       X1, X0, X0 \
	VHADDPS      X0, X0, X0 \
	VHADDPS      X0, X0, X0 \
	VZEROUPPER

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
