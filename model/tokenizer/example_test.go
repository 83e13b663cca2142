package tokenizer_test

import (
	"fmt"
	"log"
	"strings"

	"github.com/moegrid/moegrid/model/tokenizer"
)

func Example() {
	tok, err := tokenizer.Load("mistralv1/tokenizer.json")
	if err != nil {
		log.Fatal(err)
	}
	ids := tok.Encode("Hello world!", true)
	fmt.Println(ids)
	fmt.Printf("%q\n", tok.Decode(ids))
	// Output:
	// [1 22557 1526 28808]
	// "Hello world!"
}

func ExampleStreamDecoder() {
	tok, err := tokenizer.Load("mistralv1/tokenizer.json")
	if err != nil {
		log.Fatal(err)
	}
	prompt := tok.Encode("The giraffe", true)
	// Pretend these ids were generated after the prompt: " 🦒!" is
	// "▁", four byte pieces, and "!".
	generated := tok.Encode("The giraffe 🦒!", true)[len(prompt):]

	// The generated text continues the prompt, so its leading space stays.
	d := tok.NewStreamDecoder(false)
	var chunks []string
	for _, id := range generated {
		chunks = append(chunks, d.Next(id))
	}
	chunks = append(chunks, d.Flush())
	fmt.Printf("%q\n", chunks)
	fmt.Printf("%q\n", strings.Join(chunks, ""))
	// Output:
	// [" " "" "" "" "🦒" "!" ""]
	// " 🦒!"
}
