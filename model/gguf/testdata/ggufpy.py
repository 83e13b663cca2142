import numpy as np, sys
from gguf import GGUFWriter, GGMLQuantizationType, GGUFValueType
from gguf.quants import quantize
w = GGUFWriter(sys.argv[1], "llama")
w.add_uint32("llama.block_count", 2)
w.add_float32("llama.attention.layer_norm_rms_epsilon", 1e-5)
w.add_string("general.name", "tiny")
w.add_bool("flag", True)
w.add_int64("i64", -7)
w.add_array("tokenizer.ggml.tokens", ["<unk>", "<s>", "</s>", "▁a"])
w.add_array("tokenizer.ggml.scores", [0.0, 0.0, 0.0, -1.0])
w.add_array("nested", [[1, 2], [3]])
rng = np.random.default_rng(1)
a = rng.standard_normal((3, 8), dtype=np.float32)
w.add_tensor("token_embd.weight", a)
q = quantize(rng.standard_normal((2, 4, 64)).astype(np.float32), GGMLQuantizationType.Q8_0)
w.add_tensor("blk.0.ffn_up_exps.weight", q, raw_dtype=GGMLQuantizationType.Q8_0)
w.add_tensor("blk.0.attn_norm.weight", np.arange(8, dtype=np.float16))
w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
