#!/usr/bin/python3
"""Writes the quantization golden files from GGML's reference C code.

Build the driver against a llama.cpp checkout (ggml-base's flags: C11 with
GNU extensions, no -march, so no fused multiply-add):

  gcc -O2 -std=gnu11 -I$LLAMA/ggml/include -I$LLAMA/ggml/src -c $LLAMA/ggml/src/ggml-quants.c -o quants.o
  gcc -O2 -std=gnu11 -I$LLAMA/ggml/include -I$LLAMA/ggml/src refquant.c quants.o -o refquant -lm
  ./gen.py ./refquant

Each <type>.json holds, base64-encoded little-endian: "input", float32
values; "quantized", quantize_row_<type>_ref of them; "dequantized",
dequantize_row_<type> of those bytes; "blocks", random blocks (finite
scales); "blocks_dequantized", their dequantization.
"""
import base64, json, struct, subprocess, sys, random

ref = sys.argv[1]
rng = random.Random(9)

def inputs(n):
    x = []
    kinds = ["normal", "zeros", "const", "outlier", "tiny", "positive", "negative", "uniform", "huge"]
    i = 0
    while len(x) < n:
        k = kinds[i % len(kinds)]; i += 1
        blk = []
        for j in range(32):
            if k == "normal": v = rng.gauss(0, 0.02)
            elif k == "zeros": v = 0.0
            elif k == "const": v = 0.75
            elif k == "outlier": v = 40.0 if j == 7 else rng.gauss(0, 0.01)
            elif k == "tiny": v = rng.gauss(0, 1e-6)
            elif k == "positive": v = abs(rng.gauss(0.5, 0.2))
            elif k == "negative": v = -abs(rng.gauss(0.5, 0.2))
            elif k == "uniform": v = rng.uniform(-1, 1)
            else: v = rng.gauss(0, 3000.0)
            blk.append(struct.unpack('<f', struct.pack('<f', v))[0])
        x.extend(blk)
    return x[:n]

def run(args, data):
    return subprocess.run([ref] + args, input=data, capture_output=True, check=True).stdout

layouts = {  # name: (values per block, bytes per block, offsets of F16 scales)
    "q8_0": (32, 34, [0]), "q4_0": (32, 18, [0]),
    "q4_k": (256, 144, [0, 2]), "q5_k": (256, 176, [0, 2]), "q6_k": (256, 210, [208]),
}
for name, (bs, bb, halves) in layouts.items():
    n = 4096
    x = inputs(n)
    raw = struct.pack('<%df' % n, *x)
    out = run([name, str(n)], raw)
    q, deq = out[:n // bs * bb], out[n // bs * bb:]
    nb = 16 if bs == 256 else 64
    blocks = bytearray(rng.getrandbits(8) for _ in range(nb * bb))
    for b in range(nb):
        for off in halves:
            # A random F16 with a small, finite exponent.
            h = rng.getrandbits(16) & 0x83ff | rng.randint(1, 20) << 10
            blocks[b * bb + off:b * bb + off + 2] = struct.pack('<H', h)
    bdeq = run([name, str(nb * bs), "deq"], bytes(blocks))
    enc = lambda b: base64.b64encode(b).decode()
    with open(name + ".json", "w") as f:
        json.dump({"input": enc(raw), "quantized": enc(q), "dequantized": enc(deq),
                   "blocks": enc(bytes(blocks)), "blocks_dequantized": enc(bdeq)}, f, indent=0)
        f.write("\n")
