#include "textflag.h"

// func weightedSumsAVX2(out, w *float32, n, heads, d int, values *float32, stride int)
// For each position j in order, for each head h, out[h] += w[h·n+j] ·
// values[j], 8 lanes at a time with a fused multiply-add.
TEXT ·weightedSumsAVX2(SB), NOSPLIT, $0-56
	MOVQ out+0(FP), DI
	MOVQ w+8(FP), SI
	MOVQ n+16(FP), R12
	MOVQ heads+24(FP), R9
	MOVQ d+32(FP), R10
	MOVQ values+40(FP), DX
	MOVQ stride+48(FP), R11
	SHLQ $2, R10 // d in bytes
	SHLQ $2, R11 // stride in bytes
	MOVQ R12, BX
	SHLQ $2, BX  // n in bytes: from one head's weights to the next

posloop:
	MOVQ SI, AX  // &w[h·n+j]
	MOVQ DI, R13 // &out[h·d]
	MOVQ R9, CX

headloop:
	VBROADCASTSS (AX), Y0
	XORQ         R8, R8

colloop:
	VMOVUPS     (R13)(R8*1), Y1
	VFMADD231PS (DX)(R8*1), Y0, Y1
	VMOVUPS     Y1, (R13)(R8*1)
	ADDQ        $32, R8
	CMPQ        R8, R10
	JLT         colloop

	ADDQ BX, AX
	ADDQ R10, R13
	DECQ CX
	JNZ  headloop

	ADDQ $4, SI
	ADDQ R11, DX
	DECQ R12
	JNZ  posloop

	VZEROUPPER
	RET
