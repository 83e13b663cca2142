package router

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"reflect"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/moegrid/moegrid/internal/apikey"
)

// The OpenAI-compatible HTTP API: /v1/models, /v1/completions and
// /v1/chat/completions, streaming with server-sent events when asked. This
// file holds the routes, the models list, body decoding and the error
// object; openai_request.go parses requests, openai_response.go runs their
// choices and writes completions and streams, openai_logprobs.go writes
// log-probabilities.

// maxRequestBody is the largest request body the API reads; larger ones
// get 413. It leaves room for a prompt of maxPromptBytes with JSON escapes.
const maxRequestBody = 4 << 20

func (r *Router) httpHandler(mux *http.ServeMux) {
	mux.Handle("GET /v1/models", r.authorized(apikey.APIModels, r.handleModels))
	// Served model names may contain slashes ("org/name").
	mux.Handle("GET /v1/models/{model...}", r.authorized(apikey.APIModels, r.handleModel))
	mux.Handle("POST /v1/completions", r.authorized(apikey.APICompletions, r.handleCompletions))
	mux.Handle("POST /v1/chat/completions", r.authorized(apikey.APIChat, r.handleChat))
	mux.HandleFunc("/v1/", handleUnserved)
	r.handleDashboard(mux)
}

// authorized puts h behind the API keys, if the router has any.
func (r *Router) authorized(api string, h http.HandlerFunc) http.Handler {
	if r.keys == nil {
		return h
	}
	return r.keys.HTTP(api, h)
}

// apiMethods are the API's paths and the method each takes.
var apiMethods = map[string]string{
	"/v1/models": http.MethodGet, "/v1/completions": http.MethodPost, "/v1/chat/completions": http.MethodPost,
}

// handleUnserved answers the rest of /v1/ in OpenAI's error shape, so that
// a client of an endpoint the router lacks (embeddings, say) reads why.
func handleUnserved(w http.ResponseWriter, req *http.Request) {
	if m, ok := apiMethods[req.URL.Path]; ok {
		w.Header().Set("Allow", m)
		writeError(w, http.StatusMethodNotAllowed, apiErrorBody{
			Message: fmt.Sprintf("%s takes %s, not %s", req.URL.Path, m, req.Method),
			Type:    "invalid_request_error", Code: "method_not_allowed",
		})
		return
	}
	writeError(w, http.StatusNotFound, apiErrorBody{
		Message: fmt.Sprintf("%s %s is not served; the router serves GET /v1/models, POST /v1/completions and POST /v1/chat/completions", req.Method, req.URL.Path),
		Type:    "invalid_request_error", Code: "not_found",
	})
}

// modelObject is the served model as /v1/models lists it. max_model_len is
// vLLM's name for the context length, context_length that of other
// OpenAI-compatible servers; both are the model's positions, prompt and
// completion together.
func (r *Router) modelObject() map[string]any {
	n := r.model.Config.MaxPositionEmbeddings
	return map[string]any{
		"id": r.cfg.ModelName, "object": "model", "created": r.started.Unix(), "owned_by": "moegrid",
		"root": r.cfg.ModelName, "max_model_len": n, "context_length": n,
	}
}

func (r *Router) handleModels(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, map[string]any{"object": "list", "data": []map[string]any{r.modelObject()}})
}

func (r *Router) handleModel(w http.ResponseWriter, req *http.Request) {
	if name := req.PathValue("model"); name != r.cfg.ModelName {
		writeError(w, http.StatusNotFound, apiErrorBody{
			Message: fmt.Sprintf("the model %q does not exist; this router serves %q", name, r.cfg.ModelName),
			Type:    "invalid_request_error", Param: "model", Code: "model_not_found",
		})
		return
	}
	writeJSON(w, http.StatusOK, r.modelObject())
}

// requestError is a bad request found by the HTTP layer. Param is the
// OpenAI name of the field at fault, "" if no one field is.
type requestError struct {
	param string
	msg   string
}

// badParam returns a requestError about param; the message should name it.
func badParam(param, format string, args ...any) error {
	return &requestError{param: param, msg: fmt.Sprintf(format, args...)}
}

func (e *requestError) Error() string { return ErrInvalid.Error() + ": " + e.msg }

// Unwrap makes a requestError an ErrInvalid, so the error boundary gives it
// InvalidArgument.
func (e *requestError) Unwrap() error { return ErrInvalid }

// apiErrorBody is OpenAI's error object, the value of "error" in an error
// response or stream event. Code is the gRPC code name, the same the gRPC
// API reports, except where OpenAI has a name for the condition.
type apiErrorBody struct {
	Message string `json:"message"`
	Type    string `json:"type"`
	Param   any    `json:"param"` // a string, or nil for null
	Code    string `json:"code"`
}

func errorBody(err error) apiErrorBody {
	st := status.Convert(toStatus(err))
	b := apiErrorBody{Message: st.Message(), Type: "server_error", Code: st.Code().String()}
	if st.Code() == codes.InvalidArgument {
		b.Type = "invalid_request_error"
	}
	if re, ok := errors.AsType[*requestError](err); ok && re.param != "" {
		b.Param = re.param
	}
	return b
}

// httpError counts and writes err, a request that failed before it ran.
func (r *Router) httpError(w http.ResponseWriter, err error) {
	r.metrics.requests.WithLabelValues("http", status.Code(toStatus(err)).String()).Inc()
	writeHTTPError(w, err)
}

// writeHTTPError writes err with the HTTP status that matches its gRPC code.
func writeHTTPError(w http.ResponseWriter, err error) {
	httpStatus := http.StatusInternalServerError
	switch status.Code(toStatus(err)) {
	case codes.InvalidArgument:
		httpStatus = http.StatusBadRequest
	case codes.ResourceExhausted:
		httpStatus = http.StatusTooManyRequests
	case codes.Unavailable:
		httpStatus = http.StatusServiceUnavailable
	case codes.DeadlineExceeded:
		httpStatus = http.StatusGatewayTimeout
	case codes.Canceled:
		httpStatus = 499
	}
	writeError(w, httpStatus, errorBody(err))
}

func writeError(w http.ResponseWriter, httpStatus int, b apiErrorBody) {
	writeJSON(w, httpStatus, map[string]any{"error": b})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	newEncoder(w).Encode(v)
}

// newEncoder returns a JSON encoder that writes "<", ">" and "&" as they
// are: the API's texts and tokens ("<s>") are not HTML.
func newEncoder(w io.Writer) *json.Encoder {
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	return enc
}

// marshal is json.Marshal without HTML escapes and without the newline
// Encode ends with.
func marshal(v any) ([]byte, error) {
	var b bytes.Buffer
	if err := newEncoder(&b).Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(b.Bytes(), []byte("\n")), nil
}

// readBody reads a request body of at most maxRequestBody bytes. A larger
// one gets 413 and false.
func (r *Router) readBody(w http.ResponseWriter, req *http.Request) ([]byte, bool) {
	tooLarge := func() ([]byte, bool) {
		r.metrics.requests.WithLabelValues("http", codes.InvalidArgument.String()).Inc()
		writeError(w, http.StatusRequestEntityTooLarge, apiErrorBody{
			Message: fmt.Sprintf("the request body is larger than the limit of %d bytes (4 MiB)", maxRequestBody),
			Type:    "invalid_request_error", Code: "request_too_large",
		})
		return nil, false
	}
	if req.ContentLength > maxRequestBody {
		return tooLarge()
	}
	b, err := io.ReadAll(http.MaxBytesReader(w, req.Body, maxRequestBody))
	if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
		return tooLarge()
	}
	if err != nil {
		r.httpError(w, badParam("", "reading the request body: %v", err))
		return nil, false
	}
	return b, true
}

// decodeJSON unmarshals a request body into v. A value of the wrong type is
// an error naming the field, in OpenAI's dotted form.
func decodeJSON(body []byte, v any) error {
	if len(body) == 0 {
		return badParam("", "the request body is empty; want a JSON object")
	}
	err := json.Unmarshal(body, v)
	if err == nil {
		return nil
	}
	if se, ok := errors.AsType[*json.SyntaxError](err); ok {
		return badParam("", "invalid JSON body at byte %d: %v", se.Offset, se)
	}
	if te, ok := errors.AsType[*json.UnmarshalTypeError](err); ok {
		if te.Field == "" {
			return badParam("", "the request body is a JSON %s; want an object", te.Value)
		}
		return badParam(te.Field, "%s: got %s, want %s", te.Field, te.Value, jsonKind(te.Type))
	}
	return badParam("", "invalid JSON body: %v", err)
}

// jsonKind names the JSON value a Go type decodes from.
func jsonKind(t reflect.Type) string {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.Bool:
		return "a boolean"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "an integer"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.String:
		return "a string"
	case reflect.Slice, reflect.Array:
		return "an array"
	default:
		return "an object"
	}
}
