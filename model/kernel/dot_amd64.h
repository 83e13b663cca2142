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
