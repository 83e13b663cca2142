#include "textflag.h"

// The AVX2 dequantizers compute exactly what the portable ones in
// quant_q*.go do: integer unpacking, an exact conversion to float32, then
// one multiply (and for Q4_K and Q5_K one subtract), each rounded on its
// own, never fused.

// func dequantQ8_0AVX2(dst *float32, blocks *byte, nb int)
// dst[32b+i] = float32(int8(blocks[34b+2+i])) · d_b for b < nb, i < 32,
// d_b the F16 scale at blocks[34b:], widened exactly by VCVTPH2PS.
TEXT ·dequantQ8_0AVX2(SB), NOSPLIT, $0-24
	MOVQ dst+0(FP), DI
	MOVQ blocks+8(FP), SI
	MOVQ nb+16(FP), CX
	TESTQ CX, CX
	JZ   q8done

q8loop:
	MOVWLZX (SI), AX
	VMOVD AX, X0
	VCVTPH2PS X0, X0
	VBROADCASTSS X0, Y0
	VPMOVSXBD 2(SI), Y1
	VPMOVSXBD 10(SI), Y2
	VPMOVSXBD 18(SI), Y3
	VPMOVSXBD 26(SI), Y4
	VCVTDQ2PS Y1, Y1
	VCVTDQ2PS Y2, Y2
	VCVTDQ2PS Y3, Y3
	VCVTDQ2PS Y4, Y4
	VMULPS Y0, Y1, Y1
	VMULPS Y0, Y2, Y2
	VMULPS Y0, Y3, Y3
	VMULPS Y0, Y4, Y4
	VMOVUPS Y1, (DI)
	VMOVUPS Y2, 32(DI)
	VMOVUPS Y3, 64(DI)
	VMOVUPS Y4, 96(DI)
	ADDQ $34, SI
	ADDQ $128, DI
	DECQ CX
	JNZ  q8loop

q8done:
	VZEROUPPER
	RET

// func dequantQ4_0AVX2(dst *float32, blocks *byte, nb int)
// dst[32b+i] = float32(lo(q[i])-8)·d_b, dst[32b+16+i] = float32(hi(q[i])-8)·d_b
// for the 16 bytes q at blocks[18b+2:] and the F16 scale d_b at blocks[18b:].
TEXT ·dequantQ4_0AVX2(SB), NOSPLIT, $0-24
	MOVQ dst+0(FP), DI
	MOVQ blocks+8(FP), SI
	MOVQ nb+16(FP), CX
	TESTQ CX, CX
	JZ   q40done
	MOVL $15, AX
	VMOVD AX, X7
	VPBROADCASTD X7, Y7 // nibble mask
	MOVL $8, AX
	VMOVD AX, X8
	VPBROADCASTD X8, Y8 // the offset

q40loop:
	MOVWLZX (SI), AX
	VMOVD AX, X0
	VCVTPH2PS X0, X0
	VBROADCASTSS X0, Y0
	VPMOVZXBD 2(SI), Y1
	VPMOVZXBD 10(SI), Y2
	VPAND Y7, Y1, Y3
	VPAND Y7, Y2, Y4
	VPSRLD $4, Y1, Y5
	VPSRLD $4, Y2, Y6
	VPSUBD Y8, Y3, Y3
	VPSUBD Y8, Y4, Y4
	VPSUBD Y8, Y5, Y5
	VPSUBD Y8, Y6, Y6
	VCVTDQ2PS Y3, Y3
	VCVTDQ2PS Y4, Y4
	VCVTDQ2PS Y5, Y5
	VCVTDQ2PS Y6, Y6
	VMULPS Y0, Y3, Y3
	VMULPS Y0, Y4, Y4
	VMULPS Y0, Y5, Y5
	VMULPS Y0, Y6, Y6
	VMOVUPS Y3, (DI)
	VMOVUPS Y4, 32(DI)
	VMOVUPS Y5, 64(DI)
	VMOVUPS Y6, 96(DI)
	ADDQ $18, SI
	ADDQ $128, DI
	DECQ CX
	JNZ  q40loop

q40done:
	VZEROUPPER
	RET

// func dequantQ4KAVX2(dst *float32, qs *byte, dsc, dmn *[8]float32)
// One Q4_K super-block's 256 values from its 128 bytes qs: for c < 4 and
// l < 32, dst[64c+l] = float32(lo(qs[32c+l]))·dsc[2c] − dmn[2c] and
// dst[64c+32+l] = float32(hi(qs[32c+l]))·dsc[2c+1] − dmn[2c+1].
TEXT ·dequantQ4KAVX2(SB), NOSPLIT, $0-32
	MOVQ dst+0(FP), DI
	MOVQ qs+8(FP), SI
	MOVQ dsc+16(FP), DX
	MOVQ dmn+24(FP), BX
	MOVL $15, AX
	VMOVD AX, X7
	VPBROADCASTD X7, Y7
	MOVQ $4, CX

q4kchunk:
	VBROADCASTSS (DX), Y10  // scale of the low nibbles
	VBROADCASTSS 4(DX), Y11 // of the high nibbles
	VBROADCASTSS (BX), Y12
	VBROADCASTSS 4(BX), Y13
	MOVQ $4, R8
	MOVQ DI, R9

q4kgroup:
	VPMOVZXBD (SI), Y1
	VPAND Y7, Y1, Y2
	VPSRLD $4, Y1, Y3
	VCVTDQ2PS Y2, Y2
	VCVTDQ2PS Y3, Y3
	VMULPS Y10, Y2, Y2
	VMULPS Y11, Y3, Y3
	VSUBPS Y12, Y2, Y2
	VSUBPS Y13, Y3, Y3
	VMOVUPS Y2, (R9)
	VMOVUPS Y3, 128(R9)
	ADDQ $8, SI
	ADDQ $32, R9
	DECQ R8
	JNZ  q4kgroup

	ADDQ $256, DI
	ADDQ $8, DX
	ADDQ $8, BX
	DECQ CX
	JNZ  q4kchunk
	VZEROUPPER
	RET

// func dequantQ5KAVX2(dst *float32, qh, qs *byte, dsc, dmn *[8]float32)
// Q4_K's loop with each value's fifth bit, bit 2c (low nibbles) or 2c+1
// (high nibbles) of qh[l], adding 16.
TEXT ·dequantQ5KAVX2(SB), NOSPLIT, $0-40
	MOVQ dst+0(FP), DI
	MOVQ qh+8(FP), R10
	MOVQ qs+16(FP), SI
	MOVQ dsc+24(FP), DX
	MOVQ dmn+32(FP), BX
	MOVL $15, AX
	VMOVD AX, X7
	VPBROADCASTD X7, Y7 // nibble mask
	MOVL $16, AX
	VMOVD AX, X6
	VPBROADCASTD X6, Y6 // the fifth bit's value
	MOVL $1, AX
	VMOVD AX, X14
	VPBROADCASTD X14, Y14 // this chunk's low-nibble bit, 1<<2c
	MOVL $2, AX
	VMOVD AX, X15
	VPBROADCASTD X15, Y15 // its high-nibble bit, 2<<2c
	MOVQ $4, CX

q5kchunk:
	VBROADCASTSS (DX), Y10
	VBROADCASTSS 4(DX), Y11
	VBROADCASTSS (BX), Y12
	VBROADCASTSS 4(BX), Y13
	MOVQ $4, R8
	MOVQ DI, R9
	MOVQ R10, R11

q5kgroup:
	VPMOVZXBD (SI), Y1
	VPMOVZXBD (R11), Y4
	VPAND Y7, Y1, Y2
	VPSRLD $4, Y1, Y3
	VPAND Y14, Y4, Y5
	VPCMPEQD Y14, Y5, Y5
	VPAND Y6, Y5, Y5
	VPOR Y5, Y2, Y2
	VPAND Y15, Y4, Y5
	VPCMPEQD Y15, Y5, Y5
	VPAND Y6, Y5, Y5
	VPOR Y5, Y3, Y3
	VCVTDQ2PS Y2, Y2
	VCVTDQ2PS Y3, Y3
	VMULPS Y10, Y2, Y2
	VMULPS Y11, Y3, Y3
	VSUBPS Y12, Y2, Y2
	VSUBPS Y13, Y3, Y3
	VMOVUPS Y2, (R9)
	VMOVUPS Y3, 128(R9)
	ADDQ $8, SI
	ADDQ $8, R11
	ADDQ $32, R9
	DECQ R8
	JNZ  q5kgroup

	VPSLLD $2, Y14, Y14
	VPSLLD $2, Y15, Y15
	ADDQ $256, DI
	ADDQ $8, DX
	ADDQ $8, BX
	DECQ CX
	JNZ  q5kchunk
	VZEROUPPER
	RET

// func dequantQ6KAVX2(dst *float32, b *byte, ds *[16]float32)
// One Q6_K super-block from its bytes b (ql at 0, qh at 128): for each
// half h < 2 and l < 32, with L = ql[64h:], H = qh[32h:], s = ds[8h+l/16:],
// dst[128h+l]    = s[0]·float32(lo(L[l])    | (H[l]&3)<<4    − 32),
// dst[128h+32+l] = s[2]·float32(lo(L[l+32]) | (H[l]>>2&3)<<4 − 32),
// dst[128h+64+l] = s[4]·float32(hi(L[l])    | (H[l]>>4&3)<<4 − 32),
// dst[128h+96+l] = s[6]·float32(hi(L[l+32]) | (H[l]>>6&3)<<4 − 32).
TEXT ·dequantQ6KAVX2(SB), NOSPLIT, $0-24
	MOVQ dst+0(FP), DI
	MOVQ b+8(FP), SI
	MOVQ ds+16(FP), DX
	LEAQ 128(SI), R10 // qh
	MOVL $15, AX
	VMOVD AX, X7
	VPBROADCASTD X7, Y7
	MOVL $3, AX
	VMOVD AX, X6
	VPBROADCASTD X6, Y6
	MOVL $32, AX
	VMOVD AX, X5
	VPBROADCASTD X5, Y5
	MOVQ $2, CX

q6khalf:
	MOVQ $4, R8
	MOVQ DI, R9
	MOVQ SI, R11
	MOVQ R10, R12
	MOVQ DX, R13

q6kgroup:
	// The scales of 16 values: groups 0, 1 use ds[0], 2, 3 ds[1].
	VBROADCASTSS (R13), Y10
	VBROADCASTSS 8(R13), Y11
	VBROADCASTSS 16(R13), Y12
	VBROADCASTSS 24(R13), Y13
	VPMOVZXBD (R11), Y1   // L[l]
	VPMOVZXBD 32(R11), Y2 // L[l+32]
	VPMOVZXBD (R12), Y3   // H[l]

	VPAND Y7, Y1, Y0
	VPAND Y6, Y3, Y4
	VPSLLD $4, Y4, Y4
	VPOR Y4, Y0, Y0
	VPSUBD Y5, Y0, Y0
	VCVTDQ2PS Y0, Y0
	VMULPS Y0, Y10, Y0
	VMOVUPS Y0, (R9)

	VPAND Y7, Y2, Y0
	VPSRLD $2, Y3, Y4
	VPAND Y6, Y4, Y4
	VPSLLD $4, Y4, Y4
	VPOR Y4, Y0, Y0
	VPSUBD Y5, Y0, Y0
	VCVTDQ2PS Y0, Y0
	VMULPS Y0, Y11, Y0
	VMOVUPS Y0, 128(R9)

	VPSRLD $4, Y1, Y0
	VPSRLD $4, Y3, Y4
	VPAND Y6, Y4, Y4
	VPSLLD $4, Y4, Y4
	VPOR Y4, Y0, Y0
	VPSUBD Y5, Y0, Y0
	VCVTDQ2PS Y0, Y0
	VMULPS Y0, Y12, Y0
	VMOVUPS Y0, 256(R9)

	VPSRLD $4, Y2, Y0
	VPSRLD $6, Y3, Y4
	VPAND Y6, Y4, Y4
	VPSLLD $4, Y4, Y4
	VPOR Y4, Y0, Y0
	VPSUBD Y5, Y0, Y0
	VCVTDQ2PS Y0, Y0
	VMULPS Y0, Y13, Y0
	VMOVUPS Y0, 384(R9)

	ADDQ $8, R11
	ADDQ $8, R12
	ADDQ $32, R9
	// Groups 0 and 1 share a scale, as do 2 and 3.
	CMPQ R8, $3
	JNE  q6knext
	ADDQ $4, R13

q6knext:
	DECQ R8
	JNZ  q6kgroup

	ADDQ $512, DI
	ADDQ $64, SI
	ADDQ $32, R10
	ADDQ $32, DX
	DECQ CX
	JNZ  q6khalf
	VZEROUPPER
	RET
