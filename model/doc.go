// Package model implements the Mixtral (MixtralForCausalLM) forward pass with
// Hugging Face semantics: the configuration, the weights as read from a
// safetensors checkpoint, the KV cache, and the decoder split the way the
// cluster runs it.
//
// The non-expert part of the model (embeddings, attention, norms, the gates
// and lm_head) lives in Model; the expert feed-forward blocks are reached
// through the Experts interface. ExpertSet is the in-process implementation,
// used both for a whole model in one process and by an expert node for the
// shards it holds; the router implements Experts over gRPC. The same decoder
// code therefore runs locally and in the cluster.
//
// The package imports no network code.
package model
