package tokenizer

import "unicode/utf8"

// Encode returns the token ids of text, as the reference tokenizer does: a
// non-empty text gets the dummy prefix "▁", every U+0020 becomes "▁", and
// BPE merges are applied (see the package documentation). With addBOS the
// ids start with [Tokenizer.BOS]. Empty text encodes to no ids, even with
// addBOS. Literal "<s>", "</s>" and "<unk>" in text are encoded as plain
// characters, never as special tokens. The returned slice is newly
// allocated and belongs to the caller.
func (t *Tokenizer) Encode(text string, addBOS bool) []int {
	return t.encode(text, addBOS, true)
}

// EncodeRaw is like Encode without BOS and without the dummy prefix: only
// U+0020 becomes "▁" before the merges. It suits text that continues
// earlier text mid-word.
func (t *Tokenizer) EncodeRaw(text string) []int {
	return t.encode(text, false, false)
}

// symbol is one node of the doubly linked list of pieces that merges
// shrink. A merge keeps the left symbol and unlinks the right one.
type symbol struct {
	id         int32 // piece id, or noID once merged into its left neighbour
	prev, next int   // indexes of the neighbours, or -1
}

// encode returns the ids of text, after BOS if bos, and with the dummy
// prefix "▁" if prefix.
func (t *Tokenizer) encode(text string, bos, prefix bool) []int {
	if text == "" {
		return nil
	}
	syms := make([]symbol, 0, len(text)+1)
	add := func(id int32) {
		n := len(syms)
		syms = append(syms, symbol{id: id, prev: n - 1, next: n + 1})
	}
	// addRune adds the piece of r, or its byte-fallback pieces.
	addRune := func(r rune) {
		if r < utf8.RuneSelf {
			if id := t.asciiIDs[r]; id != noID {
				add(id)
				return
			}
		} else if id, ok := t.runeIDs[r]; ok {
			add(id)
			return
		}
		var buf [utf8.UTFMax]byte
		for _, b := range utf8.AppendRune(buf[:0], r) {
			add(t.byteIDs[b])
		}
	}

	if prefix {
		addRune(metaSpace)
	}
	for i := 0; i < len(text); {
		c := text[i]
		if c < utf8.RuneSelf {
			if c == ' ' {
				addRune(metaSpace)
			} else {
				addRune(rune(c))
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(text[i:])
		if r == utf8.RuneError && size == 1 {
			add(t.byteIDs[c]) // an invalid byte stands for itself
		} else {
			addRune(r)
		}
		i += size
	}
	syms[len(syms)-1].next = -1

	t.mergeAll(syms)

	out := make([]int, 0, len(text)/3+2) // about 4 bytes per id in prose
	if bos {
		out = append(out, t.bos)
	}
	for i := 0; i != -1; i = syms[i].next {
		out = append(out, int(syms[i].id))
	}
	return out
}

// A candidate is a possible merge of the symbol at position pos with its
// right neighbour, packed as rank<<posBits | pos so that candidates order by
// (rank, pos) as plain integers. It goes stale when either symbol changes;
// mergeAll then skips it.
type candidate uint64

// posBits is the width of the position in a candidate. Ranks must fit in
// the remaining 64-posBits bits, which Parse checks (maxMerges). 2^40
// symbols would need tens of terabytes of memory, so positions always fit.
const (
	posBits   = 40
	maxMerges = 1 << (64 - posBits)
)

func newCandidate(rank int32, pos int) candidate {
	return candidate(uint64(rank)<<posBits | uint64(pos))
}

func (c candidate) rank() int32 { return int32(c >> posBits) }
func (c candidate) pos() int    { return int(c & (1<<posBits - 1)) }

// mergeAll applies merges to the symbol list syms, lowest rank first and,
// among equal ranks, leftmost first, until no adjacent pair has a merge.
// Candidates wait in a min-heap ordered by (rank, pos) and are checked
// against the current list when popped, so each merge costs O(log n).
// syms[0] is never merged away, so the list always starts at index 0.
func (t *Tokenizer) mergeAll(syms []symbol) {
	h := make(candidateHeap, 0, len(syms))
	for i := 0; i+1 < len(syms); i++ {
		if m, ok := t.merges[pairKey(syms[i].id, syms[i+1].id)]; ok {
			h = append(h, newCandidate(m.rank, i))
		}
	}
	h.init()
	for len(h) > 0 {
		c := h.pop()
		pos := c.pos()
		left := &syms[pos]
		if left.id == noID || left.next == -1 {
			continue
		}
		right := &syms[left.next]
		m, ok := t.merges[pairKey(left.id, right.id)]
		if !ok || m.rank != c.rank() {
			continue // stale: a neighbour changed since c was pushed
		}
		left.id = m.id
		left.next = right.next
		right.id = noID
		if left.next != -1 {
			syms[left.next].prev = pos
			if m, ok := t.merges[pairKey(left.id, syms[left.next].id)]; ok {
				h.push(newCandidate(m.rank, pos))
			}
		}
		if left.prev != -1 {
			if m, ok := t.merges[pairKey(syms[left.prev].id, left.id)]; ok {
				h.push(newCandidate(m.rank, left.prev))
			}
		}
	}
}

// candidateHeap is a binary min-heap of candidates. It is written out
// rather than built on container/heap to avoid an interface call per
// comparison in the encoder's inner loop.
type candidateHeap []candidate

func (h candidateHeap) init() {
	for i := len(h)/2 - 1; i >= 0; i-- {
		h.down(i)
	}
}

func (h *candidateHeap) push(c candidate) {
	*h = append(*h, c)
	h.up(len(*h) - 1)
}

func (h *candidateHeap) pop() candidate {
	old := *h
	n := len(old) - 1
	c := old[0]
	old[0] = old[n]
	*h = old[:n]
	h.down(0)
	return c
}

// up moves h[i] towards the root to its place.
func (h candidateHeap) up(i int) {
	c := h[i]
	for i > 0 {
		parent := (i - 1) / 2
		if h[parent] <= c {
			break
		}
		h[i] = h[parent]
		i = parent
	}
	h[i] = c
}

// down moves h[i] towards the leaves to its place.
func (h candidateHeap) down(i int) {
	n := len(h)
	if i >= n {
		return
	}
	c := h[i]
	for {
		child := 2*i + 1
		if child >= n {
			break
		}
		if r := child + 1; r < n && h[r] < h[child] {
			child = r
		}
		if c <= h[child] {
			break
		}
		h[i] = h[child]
		i = child
	}
	h[i] = c
}
