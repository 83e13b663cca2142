package router

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/moegrid/moegrid/internal/apikey"
	moegridv1 "github.com/moegrid/moegrid/proto/moegrid/v1"
)

// keyedRouter is a test router behind API keys.
type keyedRouter struct {
	*testRouter
	keys  map[string]string // by id
	file  string
	guard *apikey.Guard
	reg   *prometheus.Registry
	log   *lockedBuffer
}

// newKeyedRouter returns a router whose key file holds entries (hashes
// filled in). The buckets' clock stands still, so they never refill.
func newKeyedRouter(t *testing.T, o routerOptions, entries ...apikey.Entry) *keyedRouter {
	t.Helper()
	kr := &keyedRouter{keys: map[string]string{}, file: filepath.Join(t.TempDir(), "keys.json"), reg: prometheus.NewRegistry(), log: &lockedBuffer{}}
	var f apikey.File
	for _, e := range entries {
		key, made, err := apikey.NewKey(e.ID)
		if err != nil {
			t.Fatal(err)
		}
		e.SHA256 = made.SHA256
		kr.keys[e.ID] = key
		f.Keys = append(f.Keys, e)
	}
	if err := apikey.WriteFile(kr.file, f); err != nil {
		t.Fatal(err)
	}
	still := time.Unix(1e9, 0)
	g, err := apikey.New(apikey.Config{File: kr.file, Poll: 10 * time.Millisecond, Now: func() time.Time { return still }}, nil, kr.reg)
	if err != nil {
		t.Fatal(err)
	}
	kr.guard = g
	o.keys = g
	o.log = slog.New(slog.NewJSONHandler(kr.log, nil))
	kr.testRouter = newTestRouter(t, o)
	return kr
}

func (kr *keyedRouter) openai(t *testing.T, key string) openai.Client {
	t.Helper()
	transport := &http.Transport{}
	t.Cleanup(transport.CloseIdleConnections)
	return openai.NewClient(
		option.WithBaseURL(kr.httpURL+"/v1/"),
		option.WithAPIKey(key),
		option.WithMaxRetries(0),
		option.WithHTTPClient(&http.Client{Transport: transport}),
	)
}

// counter returns a series of the key metrics.
func (kr *keyedRouter) counter(t *testing.T, name string, labels ...string) float64 {
	t.Helper()
	families, err := kr.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
	series:
		for _, m := range f.GetMetric() {
			for i, l := range m.GetLabel() {
				if l.GetValue() != labels[2*i+1] || l.GetName() != labels[2*i] {
					continue series
				}
			}
			return m.GetCounter().GetValue()
		}
	}
	return 0
}

// grpcGenerate runs req with key as the bearer token and returns the
// usage, or the error and the call's trailer.
func grpcGenerate(ctx context.Context, c moegridv1.GenerationClient, key string, req *moegridv1.GenerateRequest) (*moegridv1.Usage, metadata.MD, error) {
	if key != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+key)
	}
	var trailer metadata.MD
	stream, err := c.Generate(ctx, req, grpc.Trailer(&trailer))
	if err != nil {
		return nil, trailer, err
	}
	var u *moegridv1.Usage
	for {
		msg, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return u, trailer, nil
		}
		if err != nil {
			return nil, trailer, err
		}
		if msg.Usage != nil {
			u = msg.Usage
		}
	}
}

// wantRefusal fails unless err is the OpenAI client's error with status,
// the router's error code and, for 429, Retry-After retry.
func wantRefusal(t *testing.T, err error, httpStatus int, code string, retry int) {
	t.Helper()
	var e *openai.Error
	if !errors.As(err, &e) {
		t.Fatalf("error %v (%T), want an API error", err, err)
	}
	if e.StatusCode != httpStatus || e.Code != code || e.Message == "" {
		t.Errorf("error %d code %q %q; want %d %q with a message", e.StatusCode, e.Code, e.Message, httpStatus, code)
	}
	h := e.Response.Header
	if got := h.Get("WWW-Authenticate"); (httpStatus == http.StatusUnauthorized) != strings.HasPrefix(got, "Bearer") {
		t.Errorf("WWW-Authenticate %q on a %d", got, httpStatus)
	}
	if got, want := h.Get("Retry-After"), retryHeader(retry); got != want {
		t.Errorf("Retry-After %q, want %q", got, want)
	}
}

// wantGRPCRefusal is wantRefusal for the gRPC API.
func wantGRPCRefusal(t *testing.T, err error, trailer metadata.MD, code codes.Code, retry int) {
	t.Helper()
	if status.Code(err) != code || status.Convert(err).Message() == "" {
		t.Errorf("error %v, want %v with a message", err, code)
	}
	got := strings.Join(trailer.Get("retry-after"), ",")
	if want := retryHeader(retry); got != want {
		t.Errorf("retry-after trailer %q, want %q", got, want)
	}
}

func retryHeader(secs int) string {
	if secs == 0 {
		return ""
	}
	return strconv.Itoa(secs)
}

func TestAPIKeysRefuse(t *testing.T) {
	ctx := testContext(t)
	kr := newKeyedRouter(t, routerOptions{},
		apikey.Entry{ID: "ok"},
		apikey.Entry{ID: "off", Disabled: true},
		apikey.Entry{ID: "chat", Allow: []string{apikey.APIChat, apikey.APIModels}},
		apikey.Entry{ID: "tpm", TokensPerMinute: 3},
	)
	wrong := strings.TrimSuffix(kr.keys["ok"], kr.keys["ok"][len(kr.keys["ok"])-8:]) + "00000000"
	completion := openai.CompletionNewParams{Model: "tiny", Prompt: openai.CompletionNewParamsPromptUnion{OfString: openai.String("hello world")}, MaxTokens: openai.Int(4)}
	chat := openai.ChatCompletionNewParams{Model: "tiny", Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hi")}, MaxTokens: openai.Int(4)}
	genReq := &moegridv1.GenerateRequest{Prompt: &moegridv1.GenerateRequest_Text{Text: "hello world"}, MaxTokens: 4}

	for _, tc := range []struct {
		name       string
		key        string
		httpStatus int // of a completion
		httpCode   string
		grpcCode   codes.Code // of a Generate
	}{
		{"no key", "", http.StatusUnauthorized, "invalid_api_key", codes.Unauthenticated},
		{"not a key", "sk-123", http.StatusUnauthorized, "invalid_api_key", codes.Unauthenticated},
		{"wrong secret", wrong, http.StatusUnauthorized, "invalid_api_key", codes.Unauthenticated},
		{"disabled", kr.keys["off"], http.StatusForbidden, "permission_denied", codes.PermissionDenied},
		{"API not allowed", kr.keys["chat"], http.StatusForbidden, "permission_denied", codes.PermissionDenied},
		{"valid", kr.keys["ok"], http.StatusOK, "", codes.OK},
	} {
		t.Run(tc.name, func(t *testing.T) {
			client := kr.openai(t, tc.key)
			_, err := client.Completions.New(ctx, completion)
			if tc.httpStatus == http.StatusOK {
				if err != nil {
					t.Fatalf("completion: %v", err)
				}
			} else {
				wantRefusal(t, err, tc.httpStatus, tc.httpCode, 0)
			}
			_, trailer, err := grpcGenerate(ctx, kr.client, tc.key, genReq)
			if tc.grpcCode == codes.OK {
				if err != nil {
					t.Fatalf("Generate: %v", err)
				}
				return
			}
			wantGRPCRefusal(t, err, trailer, tc.grpcCode, 0)
		})
	}

	t.Run("allowed API", func(t *testing.T) {
		client := kr.openai(t, kr.keys["chat"])
		if _, err := client.Chat.Completions.New(ctx, chat); err != nil {
			t.Fatalf("chat: %v", err)
		}
		if _, err := client.Models.List(ctx); err != nil {
			t.Fatalf("models: %v", err)
		}
	})

	t.Run("tokens per minute", func(t *testing.T) {
		client := kr.openai(t, kr.keys["tpm"])
		c, err := client.Completions.New(ctx, completion)
		if err != nil {
			t.Fatalf("first completion (a full bucket admits): %v", err)
		}
		used := int(c.Usage.PromptTokens + c.Usage.CompletionTokens)
		if got := kr.counter(t, "moegrid_apikey_tokens_total", "key", "tpm"); got != float64(used) {
			t.Errorf("tokens charged %v, want the usage %d", got, used)
		}
		// 3 tokens a minute: one per 20s; the bucket is 3-used and must
		// get back to one token.
		retry := (1 - (3 - used)) * 20
		if retry < 1 {
			t.Fatalf("the completion used %d tokens: too few to empty the bucket", used)
		}
		_, err = client.Completions.New(ctx, completion)
		wantRefusal(t, err, http.StatusTooManyRequests, "rate_limit_exceeded", retry)
		_, trailer, err := grpcGenerate(ctx, kr.client, kr.keys["tpm"], genReq)
		wantGRPCRefusal(t, err, trailer, codes.ResourceExhausted, retry)
	})

	if got := kr.counter(t, "moegrid_apikey_requests_total", "key", "off", "outcome", "permission_denied"); got != 2 {
		t.Errorf("permission_denied of key off %v, want 2", got)
	}
	if got := kr.counter(t, "moegrid_apikey_requests_total", "key", "", "outcome", "unauthenticated"); got != 6 {
		t.Errorf("unauthenticated %v, want 6", got)
	}
	logs := kr.log.String()
	if !strings.Contains(logs, `"key_id":"ok"`) {
		t.Errorf("no completion log line names key_id ok:\n%s", logs)
	}
	for id, key := range kr.keys {
		if strings.Contains(logs, key) {
			t.Errorf("the logs hold key %s", id)
		}
	}
}

func TestAPIKeysInFlight(t *testing.T) {
	ctx := testContext(t)
	kr := newKeyedRouter(t, routerOptions{noRun: true}, apikey.Entry{ID: "one", MaxInFlight: 1})
	client := kr.openai(t, kr.keys["one"])
	completion := openai.CompletionNewParams{Model: "tiny", Prompt: openai.CompletionNewParamsPromptUnion{OfString: openai.String("hello")}, MaxTokens: openai.Int(2)}

	// The first request waits in the queue of a scheduler not yet running.
	first := make(chan error, 1)
	go func() {
		_, err := client.Completions.New(ctx, completion)
		first <- err
	}()
	for kr.counter(t, "moegrid_apikey_requests_total", "key", "one", "outcome", "admitted") < 1 {
		select {
		case err := <-first:
			t.Fatalf("the first request ended early: %v", err)
		case <-ctx.Done():
			t.Fatal("the first request was never admitted")
		case <-time.After(5 * time.Millisecond):
		}
	}
	_, err := client.Completions.New(ctx, completion)
	wantRefusal(t, err, http.StatusTooManyRequests, "rate_limit_exceeded", 1)
	_, trailer, err := grpcGenerate(ctx, kr.client, kr.keys["one"], &moegridv1.GenerateRequest{Prompt: &moegridv1.GenerateRequest_Text{Text: "hello"}, MaxTokens: 2})
	wantGRPCRefusal(t, err, trailer, codes.ResourceExhausted, 1)

	kr.start()
	if err := <-first; err != nil {
		t.Fatalf("first request: %v", err)
	}
	if _, err := client.Completions.New(ctx, completion); err != nil {
		t.Fatalf("after the first ended: %v", err)
	}
}

func TestAPIKeysReload(t *testing.T) {
	ctx := testContext(t)
	kr := newKeyedRouter(t, routerOptions{}, apikey.Entry{ID: "old"})
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); kr.guard.Run(runCtx) }()
	t.Cleanup(func() { cancel(); <-done })

	newKey, added, err := apikey.NewKey("new")
	if err != nil {
		t.Fatal(err)
	}
	f, err := apikey.ReadFile(kr.file)
	if err != nil {
		t.Fatal(err)
	}
	f.Keys = slices.DeleteFunc(f.Keys, func(e apikey.Entry) bool { return e.ID == "old" })
	f.Keys = append(f.Keys, added)
	if err := apikey.WriteFile(kr.file, f); err != nil {
		t.Fatal(err)
	}
	req := &moegridv1.GenerateRequest{Prompt: &moegridv1.GenerateRequest_Text{Text: "hi"}, MaxTokens: 2}
	for {
		_, _, err := grpcGenerate(ctx, kr.client, newKey, req)
		if err == nil {
			break
		}
		if status.Code(err) != codes.Unauthenticated || ctx.Err() != nil {
			t.Fatalf("added key: %v", err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	newClient := kr.openai(t, newKey)
	if _, err := newClient.Completions.New(ctx, openai.CompletionNewParams{Model: "tiny", Prompt: openai.CompletionNewParamsPromptUnion{OfString: openai.String("hi")}, MaxTokens: openai.Int(2)}); err != nil {
		t.Errorf("added key over HTTP: %v", err)
	}
	_, trailer, err := grpcGenerate(ctx, kr.client, kr.keys["old"], req)
	wantGRPCRefusal(t, err, trailer, codes.Unauthenticated, 0)
	oldClient := kr.openai(t, kr.keys["old"])
	_, err = oldClient.Models.List(ctx)
	wantRefusal(t, err, http.StatusUnauthorized, "invalid_api_key", 0)
}
