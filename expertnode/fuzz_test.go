package expertnode

import (
	"errors"
	"testing"

	"github.com/moegrid/moegrid/internal/grpcerr"
	"github.com/moegrid/moegrid/model"
	moegridv1 "github.com/moegrid/moegrid/proto/moegrid/v1"
)

// FuzzValidate: whatever a client sends, validation either accepts a request
// whose every payload has exactly the declared size, or rejects it with
// errInvalid; it never panics.
func FuzzValidate(f *testing.F) {
	cfg, err := model.LoadConfig(tinyDir)
	if err != nil {
		f.Fatal(err)
	}
	svc := newExpertService("fuzz", cfg, &shardStore{}, 1, 1, newMetrics(nil), grpcerr.New(errorCodes, nil))
	f.Add(uint32(0), uint32(128), int32(1), uint32(2), uint32(1), make([]byte, 512), uint32(3), uint32(0), []byte{})
	f.Add(uint32(1), uint32(128), int32(2), uint32(7), uint32(2), make([]byte, 512), uint32(7), uint32(1), make([]byte, 256))
	f.Fuzz(func(t *testing.T, layer, dim uint32, dtype int32, e1, r1 uint32, d1 []byte, e2, r2 uint32, d2 []byte) {
		req := &moegridv1.ForwardRequest{Layer: layer, Dim: dim, Dtype: moegridv1.DType(dtype), Batches: []*moegridv1.ExpertRows{
			{Expert: e1, Rows: r1, Data: d1}, {Expert: e2, Rows: r2, Data: d2},
		}}
		rows, err := svc.validate(req)
		if err != nil {
			if !errors.Is(err, errInvalid) {
				t.Fatalf("error %v does not wrap errInvalid", err)
			}
			return
		}
		if rows != int(r1)+int(r2) {
			t.Fatalf("rows %d, want %d", rows, r1+r2)
		}
		size := moegridv1.ElementSize(req.Dtype)
		for _, b := range req.Batches {
			if len(b.Data) != int(b.Rows)*int(dim)*size {
				t.Fatalf("accepted %d bytes for %d rows", len(b.Data), b.Rows)
			}
		}
	})
}
