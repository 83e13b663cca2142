package router

import (
	"fmt"
	"slices"
)

// Resuming a stream: a client whose router died mid-stream sends the same
// request to another router with resume_tokens, the tokens it received.
// Sampling is a function of the sequence so far and the number of draws
// (package sample), and the forward pass is batch-invariant, so prefilling
// prompt + resumed tokens and advancing the sampler one draw per resumed
// token continues the stream exactly where it was cut; replaying the
// resumed tokens through the stopper restores the text the first router
// held back (a stop string's prefix, part of a character) without sending
// again what the client already has.

// checkResume reports resumed tokens that no uninterrupted stream of a
// completion of maxTokens could have sent. Field names are the gRPC API's.
func checkResume(resumed []int, maxTokens, vocab int) error {
	if len(resumed) > maxTokens {
		return fmt.Errorf("%w: resume_tokens: %d tokens, more than max_tokens %d", ErrInvalid, len(resumed), maxTokens)
	}
	for i, id := range resumed {
		if id < 0 || id >= vocab {
			return fmt.Errorf("%w: resume_tokens[%d]: token id %d outside the vocabulary [0, %d)", ErrInvalid, i, id, vocab)
		}
	}
	return nil
}

// resume brings a completion's sampler (req's) and stopper to where they
// were after its resumed tokens. It returns the request the scheduler continues with,
// or, when the resumed tokens already ended the completion (the first
// router died before it sent the end), ended true with the finish reason
// and the text the end releases: none after a stop string, what the
// stopper held after EOS or the last of max_tokens.
func (r *Router) resume(c completion, req Request, st *stopper) (next Request, finish FinishReason, tail string, ended bool) {
	if len(c.resumed) == 0 {
		return req, 0, "", false
	}
	req.Sampler.Skip(len(c.resumed))
	for _, tok := range c.resumed {
		if _, stopped := st.next(tok); stopped {
			return req, FinishStop, "", true
		}
	}
	switch last := c.resumed[len(c.resumed)-1]; {
	case last == r.model.Config.EOSTokenID && !c.ignoreEOS:
		return req, FinishStop, st.flush(), true
	case len(c.resumed) == c.maxTokens:
		return req, FinishLength, st.flush(), true
	}
	req.Prompt = slices.Concat(c.prompt, c.resumed)
	req.MaxTokens = c.maxTokens - len(c.resumed)
	return req, 0, "", false
}
