#include "textflag.h"

// func accumulate32AVX2(acc, w, values *float32, stride, n int)
// For each position j < n in order: acc[i] = fma(w[j], values[j·stride+i],
// acc[i]) for i < 32, the 32 sums held in four 8-lane registers.
TEXT ·accumulate32AVX2(SB), NOSPLIT, $0-40
	MOVQ    acc+0(FP), DI
	MOVQ    w+8(FP), SI
	MOVQ    values+16(FP), DX
	MOVQ    stride+24(FP), R11
	MOVQ    n+32(FP), CX
	SHLQ    $2, R11 // stride in bytes
	VMOVUPS 0(DI), Y0
	VMOVUPS 32(DI), Y1
	VMOVUPS 64(DI), Y2
	VMOVUPS 96(DI), Y3

loop:
	VBROADCASTSS (SI), Y4
	VFMADD231PS  0(DX), Y4, Y0
	VFMADD231PS  32(DX), Y4, Y1
	VFMADD231PS  64(DX), Y4, Y2
	VFMADD231PS  96(DX), Y4, Y3
	ADDQ         $4, SI
	ADDQ         R11, DX
	DECQ         CX
	JNZ          loop

	VMOVUPS Y0, 0(DI)
	VMOVUPS Y1, 32(DI)
	VMOVUPS Y2, 64(DI)
	VMOVUPS Y3, 96(DI)
	VZEROUPPER
	RET
