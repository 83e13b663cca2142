#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>
#include "ggml.h"
#include "ggml-quants.h"
#include "ggml-impl.h"
float ggml_table_f32_f16[1 << 16];
void ggml_abort(const char * file, int line, const char * fmt, ...) { fprintf(stderr, "abort %s:%d\n", file, line); exit(1); }
// ref: reads n float32 from stdin as raw, type name in argv[1]; writes quantized bytes then dequantized float32 to stdout.
int main(int argc, char **argv) {
    for (int i = 0; i < (1<<16); i++) ggml_table_f32_f16[i] = ggml_compute_fp16_to_fp32((ggml_fp16_t)i);
    int n = atoi(argv[2]);
    if (argc > 3) { // dequantize raw blocks
        size_t bs = !strcmp(argv[1], "q8_0") ? 34 : !strcmp(argv[1], "q4_0") ? 18 : !strcmp(argv[1], "q4_k") ? 144 : !strcmp(argv[1], "q5_k") ? 176 : 210;
        size_t per = (!strcmp(argv[1], "q8_0") || !strcmp(argv[1], "q4_0")) ? 32 : 256;
        void *b = malloc(n/per*bs); fread(b, 1, n/per*bs, stdin); float *o = malloc(n*4);
        if (!strcmp(argv[1], "q8_0")) dequantize_row_q8_0(b, o, n);
        if (!strcmp(argv[1], "q4_0")) dequantize_row_q4_0(b, o, n);
        if (!strcmp(argv[1], "q4_k")) dequantize_row_q4_K(b, o, n);
        if (!strcmp(argv[1], "q5_k")) dequantize_row_q5_K(b, o, n);
        if (!strcmp(argv[1], "q6_k")) dequantize_row_q6_K(b, o, n);
        fwrite(o, 4, n, stdout); return 0;
    }
    float *x = malloc(n*4); fread(x, 4, n, stdin);
    void *q = malloc(n*2); float *y = malloc(n*4);
    size_t sz = 0;
    if (!strcmp(argv[1], "q8_0")) { quantize_row_q8_0_ref(x, q, n); dequantize_row_q8_0(q, y, n); sz = n/32*34; }
    if (!strcmp(argv[1], "q4_0")) { quantize_row_q4_0_ref(x, q, n); dequantize_row_q4_0(q, y, n); sz = n/32*18; }
    if (!strcmp(argv[1], "q4_k")) { quantize_row_q4_K_ref(x, q, n); dequantize_row_q4_K(q, y, n); sz = n/256*144; }
    if (!strcmp(argv[1], "q5_k")) { quantize_row_q5_K_ref(x, q, n); dequantize_row_q5_K(q, y, n); sz = n/256*176; }
    if (!strcmp(argv[1], "q6_k")) { quantize_row_q6_K_ref(x, q, n); dequantize_row_q6_K(q, y, n); sz = n/256*210; }
    fwrite(q, 1, sz, stdout); fwrite(y, 4, n, stdout);
    return 0;
}
size_t ggml_row_size(enum ggml_type type, int64_t ne) { (void)type; (void)ne; fprintf(stderr, "ggml_row_size unused\n"); exit(1); }
size_t ggml_type_size(enum ggml_type type) { (void)type; fprintf(stderr, "unused\n"); exit(1); }
const char * ggml_type_name(enum ggml_type type) { (void)type; return "?"; }
