package tokenizer

import "unicode/utf8"

// replacement is U+FFFD, which stands for each byte that is not part of a
// valid UTF-8 character.
const replacement = "\uFFFD"

// Decode returns the text of ids. It drops special tokens and ids outside
// the vocabulary, turns "▁" into a space, joins runs of byte-fallback
// pieces into UTF-8 (each byte that is not part of a valid character
// becomes U+FFFD), and removes one leading space, the dummy prefix that
// [Tokenizer.Encode] added. See the package documentation for how this
// relates to the Hugging Face decoder.
func (t *Tokenizer) Decode(ids []int) string {
	d := StreamDecoder{t: t, strip: true}
	dst := make([]byte, 0, 4*len(ids))
	for _, id := range ids {
		dst = d.append(dst, id)
	}
	return string(d.appendFlush(dst))
}

// A StreamDecoder decodes a stream of token ids incrementally, for sending
// generated text to a client as it is produced. The text that Next returns
// for each id, followed by the text of Flush, is the text that
// [Tokenizer.Decode] returns for all the ids together (when the decoder
// strips the leading space). Byte-fallback pieces are held back until they
// complete a UTF-8 character or can no longer be part of one, so Next never
// returns part of a character.
//
// A StreamDecoder is not safe for concurrent use. Its zero value is not
// usable; create one with [Tokenizer.NewStreamDecoder].
type StreamDecoder struct {
	t       *Tokenizer
	pending [utf8.UTFMax]byte // bytes of a character that is not complete yet
	npend   int               // number of bytes in pending
	strip   bool              // the next space at the start of the text is to be removed
}

// NewStreamDecoder returns a decoder for one stream of ids. With
// stripLeadingSpace, one space at the start of the decoded text is removed
// (the dummy prefix), as Decode does; use it when the stream is a whole
// text. Use false when the stream continues text decoded earlier, such as
// the tokens generated after a prompt, so that the space before the first
// generated word is kept.
func (t *Tokenizer) NewStreamDecoder(stripLeadingSpace bool) *StreamDecoder {
	return &StreamDecoder{t: t, strip: stripLeadingSpace}
}

// Next returns the text that token id completes. For a normal piece that
// is the piece's text, preceded by any bytes still held back, as U+FFFD each
// since they can no longer complete a character. For a byte-fallback piece
// it is the character the byte completes, or U+FFFD for each byte it shows
// to be invalid, or "" while a character is incomplete. Special tokens and
// ids outside the vocabulary yield "".
func (d *StreamDecoder) Next(id int) string {
	t := d.t
	if d.npend == 0 && !d.strip && id >= 0 && id < len(t.pieces) && t.byteOf[id] < 0 {
		if t.special[id] {
			return ""
		}
		return t.text[id] // nothing to combine: no copy needed
	}
	var buf [32]byte
	return string(d.append(buf[:0], id))
}

// Flush returns the bytes still held back, each as U+FFFD since they do not
// form a complete character, and empties the buffer. The decoder remains
// usable; text decoded after Flush continues the same stream.
func (d *StreamDecoder) Flush() string {
	var buf [4 * len(replacement)]byte
	return string(d.appendFlush(buf[:0]))
}

// append appends the text completed by token id to dst.
func (d *StreamDecoder) append(dst []byte, id int) []byte {
	t := d.t
	if id < 0 || id >= len(t.pieces) || t.special[id] {
		// Dropped before the byte pieces are joined, so bytes on both
		// sides of a special token still combine, as in Hugging Face.
		return dst
	}
	start := len(dst)
	if b := t.byteOf[id]; b >= 0 {
		d.pending[d.npend] = byte(b)
		d.npend++
		dst = d.appendPending(dst, false)
	} else {
		dst = d.appendPending(dst, true)
		dst = append(dst, t.text[id]...)
	}
	return d.stripFrom(dst, start)
}

// appendFlush appends all pending bytes to dst.
func (d *StreamDecoder) appendFlush(dst []byte) []byte {
	start := len(dst)
	dst = d.appendPending(dst, true)
	return d.stripFrom(dst, start)
}

// appendPending appends the pending bytes to dst: complete characters as
// they are, and each byte that cannot start a valid character as U+FFFD.
// Unless final, it stops at a valid but incomplete character and keeps its
// bytes pending; more bytes cannot change how the bytes before it decode,
// so decoding in pieces gives the same text as decoding the whole run.
func (d *StreamDecoder) appendPending(dst []byte, final bool) []byte {
	p := d.pending[:d.npend]
	i := 0
	for i < len(p) {
		if !final && !utf8.FullRune(p[i:]) {
			break
		}
		r, size := utf8.DecodeRune(p[i:])
		if r == utf8.RuneError && size == 1 {
			dst = append(dst, replacement...)
		} else {
			dst = append(dst, p[i:i+size]...)
		}
		i += size
	}
	// At most utf8.UTFMax-1 bytes stay: any UTFMax bytes are a FullRune.
	d.npend = copy(d.pending[:], p[i:])
	return dst
}

// stripFrom removes the leading space of the whole text, if it is still to
// be removed and dst[start:] is the first text produced.
func (d *StreamDecoder) stripFrom(dst []byte, start int) []byte {
	if !d.strip || len(dst) == start {
		return dst
	}
	d.strip = false
	if dst[start] == ' ' {
		dst = append(dst[:start], dst[start+1:]...)
	}
	return dst
}
