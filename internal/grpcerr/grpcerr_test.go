package grpcerr

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

var (
	errBad  = errors.New("test: bad request")
	errBusy = errors.New("test: busy")
	errDep  = errors.New("test: dependency down")
)

func TestStatus(t *testing.T) {
	table := Table{{errBad, codes.InvalidArgument}, {errBusy, codes.ResourceExhausted}}
	tests := []struct {
		name     string
		err      error
		code     codes.Code
		msgHas   string
		msgLacks string
		logged   bool
	}{
		{name: "nil", err: nil, code: codes.OK},
		{name: "mapped", err: errBad, code: codes.InvalidArgument, msgHas: "bad request"},
		{name: "mapped wrapped", err: fmt.Errorf("layer 3: %w", errBusy), code: codes.ResourceExhausted, msgHas: "layer 3"},
		{name: "canceled", err: fmt.Errorf("waiting: %w", context.Canceled), code: codes.Canceled},
		{name: "deadline", err: context.DeadlineExceeded, code: codes.DeadlineExceeded},
		{name: "status passes", err: status.Error(codes.Unavailable, "no replica"), code: codes.Unavailable, msgHas: "no replica"},
		{name: "classified", err: fmt.Errorf("get: %w", errDep), code: codes.Unavailable, msgHas: "dependency down"},
		{name: "unknown status is internal", err: status.Error(codes.Unknown, "secret detail"), code: codes.Internal, msgLacks: "secret", logged: true},
		{name: "unmapped", err: errors.New("open /etc/secret: denied"), code: codes.Internal, msgLacks: "secret", logged: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var logs bytes.Buffer
			b := New(table, slog.New(slog.NewTextHandler(&logs, nil)))
			b.Classify = func(err error) (codes.Code, bool) {
				if errors.Is(err, errDep) {
					return codes.Unavailable, true
				}
				return codes.OK, false
			}
			got := b.Status("/test.Svc/Call", tt.err)
			st := status.Convert(got)
			if st.Code() != tt.code {
				t.Fatalf("code = %v, want %v (%v)", st.Code(), tt.code, got)
			}
			if tt.err == nil && got != nil {
				t.Fatalf("nil error became %v", got)
			}
			if tt.msgHas != "" && !strings.Contains(st.Message(), tt.msgHas) {
				t.Errorf("message %q lacks %q", st.Message(), tt.msgHas)
			}
			if tt.msgLacks != "" && strings.Contains(st.Message(), tt.msgLacks) {
				t.Errorf("message %q leaks %q", st.Message(), tt.msgLacks)
			}
			logged := strings.Contains(logs.String(), "/test.Svc/Call")
			if logged != tt.logged {
				t.Errorf("logged with method = %v, want %v; log: %s", logged, tt.logged, logs.String())
			}
		})
	}
}

func TestNilLogger(t *testing.T) {
	if code := status.Code(New(nil, nil).Status("/m", errors.New("x"))); code != codes.Internal {
		t.Fatalf("code = %v, want Internal", code)
	}
}
