// Package mistralv1 embeds the Mistral v1 tokenizer (Mistral-7B-v0.1 and
// Mixtral-8x7B-v0.1) in Hugging Face tokenizer.json form, so that synthetic
// checkpoints and tests carry a real tokenizer without network access.
//
// The vocabulary is Mistral AI's, licensed Apache-2.0; see README.md beside
// this file for its origin and checksum.
package mistralv1

import _ "embed"

// TokenizerJSON is the tokenizer.json file.
//
//go:embed tokenizer.json
var TokenizerJSON []byte
