// Package eval measures a model on a text: its perplexity, scored in windows
// of the model's context as Hugging Face's perplexity guide does, and how
// its gates spread the text's tokens over the experts of each layer.
//
// Perplexity takes its log-probabilities from a Scorer, so the same
// windows and the same float64 sum run over the model in this process
// (Local) or over a cluster's router; with F32 activations on the wire the
// two give the same bits.
package eval
