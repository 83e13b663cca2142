#!/usr/bin/env bash
# llamacpp-pairs.sh measures moegrid against llama.cpp on one model, as
# interleaved pairs (llama.cpp, then moegrid, PAIRS rounds), because on a
# shared machine only ratios measured back to back mean anything.
#
# Workloads, THREADS threads on both sides:
#   decode1    llama-bench -p 0 -n 64                 vs 64 one-token decode steps (1 stream)
#   prefill128 llama-bench -p 128 -n 0                vs one 128-token forward pass
#   streams16  llama-batched-bench -npp 32 -ntg 32 -npl 16, decode (S_TG)
#                                                     vs 16 sequences' decode, same prompt
#   streams16d the same llama.cpp figure              vs 16 distinct prompts (DISTINCT=1)
#   bw1, bw2   memory read bandwidth, 1 and 2 threads (BW=binary taking THREADS, printing GB/s=N)
# llama-batched-bench feeds token 0 to every sequence, so its 16 sequences
# are identical and route to the same 2 experts per layer; streams16 gives
# moegrid identical sequences too, streams16d shows what distinct ones cost.
#
# Usage:
#   LLAMA_CPP=/path/llama.cpp/build GGUF=m.gguf MODEL=m-dir MOEGRID=./moegrid \
#     [BW=./bw] [PAIRS=5] [THREADS=2] [OUT=dir] hack/bench/llamacpp-pairs.sh
# Before each pair it waits (up to QUIET_WAIT s) for total CPU use below
# QUIET_BUSY %; a pair run on a busy machine is marked "busy". Raw output
# goes to OUT (default a new temporary directory).
set -euo pipefail

die() { echo "llamacpp-pairs: $*" >&2; exit 1; }

: "${LLAMA_CPP:?set LLAMA_CPP to the llama.cpp build or build/bin directory}"
: "${GGUF:?set GGUF to the model as a GGUF file}"
: "${MODEL:?set MODEL to the same model for moegrid (a checkpoint directory)}"
MOEGRID=${MOEGRID:-moegrid}
PAIRS=${PAIRS:-5}
THREADS=${THREADS:-2}
LLAMA_REPS=${LLAMA_REPS:-3}
DISTINCT=${DISTINCT:-1}
QUIET_BUSY=${QUIET_BUSY:-12}
QUIET_WAIT=${QUIET_WAIT:-900}
BW=${BW:-}
OUT=${OUT:-$(mktemp -d -t llamacpp-pairs.XXXXXX)}

bin=
for d in "$LLAMA_CPP" "$LLAMA_CPP/bin" "$LLAMA_CPP/build/bin"; do
	if [[ -x $d/llama-bench && -x $d/llama-batched-bench ]]; then bin=$d; break; fi
done
[[ -n $bin ]] || die "no llama-bench and llama-batched-bench under $LLAMA_CPP"
[[ -f $GGUF ]] || die "GGUF $GGUF: no such file"
[[ -e $MODEL ]] || die "MODEL $MODEL: no such file or directory"
command -v "$MOEGRID" >/dev/null || die "MOEGRID $MOEGRID: not found"
command -v jq >/dev/null || die "jq is needed to read the JSON reports"
[[ -z $BW || -x $BW ]] || die "BW $BW: not executable"
mkdir -p "$OUT"

# busy_percent prints the share of CPU time, all cores, spent not idle over
# the next $1 seconds.
busy_percent() {
	local -a t0 t1
	read -ra t0 < /proc/stat
	sleep "$1"
	read -ra t1 < /proc/stat
	local total=0 idle i
	for i in 1 2 3 4 5 6 7 8; do total=$((total + t1[i] - t0[i])); done
	idle=$((t1[4] - t0[4] + t1[5] - t0[5]))
	echo $((total > 0 ? 100 * (total - idle) / total : 0))
}

# wait_quiet waits until the machine is quiet and sets quiet_note to what it
# found: "" when quiet, "busy N%" when it gave up waiting.
quiet_note=
wait_quiet() {
	local start=$SECONDS b
	while :; do
		b=$(busy_percent 3)
		if ((b < QUIET_BUSY)); then quiet_note=; return; fi
		if ((SECONDS - start >= QUIET_WAIT)); then
			quiet_note="busy ${b}%"
			echo "  not quiet after ${QUIET_WAIT}s (busy ${b}%); measuring anyway" >&2
			return
		fi
		sleep 10
	done
}

# run_logged runs a command with its output in $OUT/$1.log and prints the
# output; on failure it shows the end of the log and stops the script.
run_logged() {
	local log=$OUT/$1.log
	shift
	if ! "$@" >"$log" 2>&1; then
		tail -n 20 "$log" >&2
		die "failed: $* (log $log)"
	fi
	cat "$log"
}

median_json_samples() { jq '.[0].samples_ts | sort | .[length / 2 | floor]'; }

llama_decode() { run_logged "$1" "$bin/llama-bench" -m "$GGUF" -t "$THREADS" -p 0 -n 64 -r "$LLAMA_REPS" -o json | median_json_samples; }
llama_prefill() { run_logged "$1" "$bin/llama-bench" -m "$GGUF" -t "$THREADS" -p 128 -n 0 -r "$LLAMA_REPS" -o json | median_json_samples; }
llama_streams() {
	run_logged "$1" "$bin/llama-batched-bench" -m "$GGUF" -t "$THREADS" -c 2048 -npp 32 -ntg 32 -npl 16 --output-format jsonl |
		grep '^{' | jq 'select(.pl == 16) | .speed_tg'
}

# moegrid_bench runs moegrid bench in process with GOMAXPROCS pinned to
# THREADS and prints the JSON field $2.
moegrid_bench() {
	local name=$1 field=$2
	shift 2
	run_logged "$name" env GOMAXPROCS="$THREADS" "$MOEGRID" bench --in-process --model "$MODEL" --warmup 1 -o json "$@" | jq ".$field"
}
moegrid_decode() { moegrid_bench "$1" decode_tokens_per_second --requests 1 --concurrency 1 --prompt-tokens 1 --max-tokens 65; }
moegrid_prefill() { moegrid_bench "$1" prefill_tokens_per_second --requests 1 --concurrency 1 --prompt-tokens 128 --max-tokens 1; }
moegrid_streams() { moegrid_bench "$1" decode_tokens_per_second --requests 16 --concurrency 16 --prompt-tokens 32 --max-tokens 33 --same-prompt; }
moegrid_streams_distinct() { moegrid_bench "$1" decode_tokens_per_second --requests 16 --concurrency 16 --prompt-tokens 32 --max-tokens 33; }

bw() { run_logged "$1" "$BW" "$2" | sed -n 's/.*GB\/s=\([0-9.]*\).*/\1/p'; }

pairs=$OUT/pairs.tsv
printf 'round\tworkload\tllama.cpp\tmoegrid\tratio\tload1\tnote\n' >"$pairs"

# record prints and stores one pair.
record() {
	local round=$1 what=$2 a=$3 b=$4 load ratio
	load=$(cut -d' ' -f1 /proc/loadavg)
	ratio=$(awk -v a="$a" -v b="$b" 'BEGIN { printf "%.3f", (a > 0 ? b / a : 0) }')
	printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$what" "$a" "$b" "$ratio" "$load" "$quiet_note" >>"$pairs"
	printf '  %-11s llama.cpp %9.2f  moegrid %9.2f  ratio %6.3f  load %s %s\n' "$what" "$a" "$b" "$ratio" "$load" "$quiet_note"
}

echo "llama.cpp $bin, GGUF $GGUF; moegrid $MOEGRID, model $MODEL; $THREADS threads; raw output in $OUT"
echo "tokens/s (bw: GB/s, 1 thread vs $THREADS); ratio = moegrid / llama.cpp"
for round in $(seq 1 "$PAIRS"); do
	echo "round $round ($(date -u +%T) UTC, load $(cut -d' ' -f1-3 /proc/loadavg))"
	# Each side's figure goes to a variable first: set -e stops the script
	# when a command substitution fails in an assignment, not in an argument.
	wait_quiet
	a=$(llama_decode "r$round-llama-decode")
	b=$(moegrid_decode "r$round-moegrid-decode")
	record "$round" decode1 "$a" "$b"
	wait_quiet
	a=$(llama_prefill "r$round-llama-prefill")
	b=$(moegrid_prefill "r$round-moegrid-prefill")
	record "$round" prefill128 "$a" "$b"
	wait_quiet
	a=$(llama_streams "r$round-llama-streams")
	b=$(moegrid_streams "r$round-moegrid-streams")
	record "$round" streams16 "$a" "$b"
	if ((DISTINCT)); then
		b=$(moegrid_streams_distinct "r$round-moegrid-streams-distinct")
		record "$round" streams16d "$a" "$b"
	fi
	if [[ -n $BW ]]; then
		wait_quiet
		a=$(bw "r$round-bw1" 1)
		b=$(bw "r$round-bw$THREADS" "$THREADS")
		record "$round" bw "$a" "$b"
	fi
done

echo
echo "medians over $PAIRS pairs (ratio: median of the pairs' ratios, and its range); best: each side's"
echo "fastest pair, which on a busy machine is the least disturbed"
printf '%-11s %10s %10s %7s %15s %10s %10s %7s\n' workload llama.cpp moegrid ratio "ratio range" best-llama best-moe ratio
awk -F'\t' 'NR > 1 { n[$2]++; a[$2, n[$2]] = $3; b[$2, n[$2]] = $4; r[$2, n[$2]] = $5; if (!($2 in seen)) { seen[$2] = 1; order[++k] = $2 } }
function median(arr, w, m,    i, j, t, v) {
	for (i = 1; i <= m; i++) v[i] = arr[w, i] + 0
	for (i = 2; i <= m; i++) for (j = i; j > 1 && v[j - 1] > v[j]; j--) { t = v[j]; v[j] = v[j - 1]; v[j - 1] = t }
	lo = v[1]; hi = v[m]
	return m % 2 ? v[(m + 1) / 2] : (v[m / 2] + v[m / 2 + 1]) / 2
}
END {
	for (i = 1; i <= k; i++) {
		w = order[i]; m = n[w]
		ma = median(a, w, m); besta = hi
		mb = median(b, w, m); bestb = hi
		mr = median(r, w, m)
		printf "%-11s %10.2f %10.2f %7.3f %7.3f-%-7.3f %10.2f %10.2f %7.3f\n", w, ma, mb, mr, lo, hi, besta, bestb, (besta > 0 ? bestb / besta : 0)
	}
}' "$pairs"
echo "(bw row: llama.cpp column = 1 thread, moegrid column = $THREADS threads, GB/s)"
