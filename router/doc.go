// Package router is the gating router: it holds the non-expert weights and
// the tokenizer, batches every active sequence into scheduler steps
// (continuous batching: decode tokens plus chunks of prefill), runs attention
// and the gates, and fans each layer's rows out to the expert nodes over
// gRPC, one Forward call per node per layer. It serves the Generation gRPC API
// and an OpenAI-compatible HTTP API.
//
// A token is never computed without its experts: a failed call is retried on
// another replica; with none, the router waits (bounded) for a new placement
// and then fails the step with UNAVAILABLE.
package router
