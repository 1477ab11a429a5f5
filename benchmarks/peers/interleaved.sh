#!/usr/bin/env bash
# Ours and the CPU peers in rotation, shape by shape (B=1, H=8, fp32, 2 threads):
# per shape attnsink_bench's forward/softmax case, then ONNX Runtime, oneDNN
# (unmasked only) and ggml where present; ROUNDS rounds; the FMA peak before
# and after. Summarize with: python3 parse_interleaved.py OUTDIR
#
# usage: interleaved.sh BENCH OUTDIR ROUNDS
# env:   ORT_DIR     a folder where `npm install onnxruntime-node --ignore-scripts` ran
#        ONEDNN_BIN  onednn_attn built from onednn_attn.cpp (see README.md)
#        GGML_FA     optional: a ggml flash-attention driver built outside this
#                    repository (same arguments and output line; see README.md)
set -u
B=$1; O=$2; R=$3; HERE=$(cd "$(dirname "$0")" && pwd)
ORT_DIR=${ORT_DIR:-}; ONEDNN_BIN=${ONEDNN_BIN:-}; GGML_FA=${GGML_FA:-}
mkdir -p "$O"; export OMP_NUM_THREADS=2
"$B" --benchmark_filter='BM_fma_peak' 2>/dev/null | grep fma >> "$O/peak.txt"
for r in $(seq 1 "$R"); do
  for T in 512 1024 2048 4096; do for d in 64 128; do for c in 0 1; do
    m=full; [ "$c" = 1 ] && m=causal
    "$B" --benchmark_filter="^forward/softmax/$m/T:$T/d:$d/" 2>/dev/null | grep '^forward' | sed "s/^/round=$r /" >> "$O/ours.txt"
    [ -n "$ORT_DIR" ] && (cd "$ORT_DIR" && NODE_PATH="$ORT_DIR/node_modules" node "$HERE/ort_mha.js" "$T" "$d" "$c") | sed "s/^/round=$r /" >> "$O/peers.txt"
    [ -n "$ONEDNN_BIN" ] && [ "$c" = 0 ] && "$ONEDNN_BIN" "$T" "$d" 0 | sed "s/^/round=$r /" >> "$O/peers.txt"
    [ -n "$GGML_FA" ] && "$GGML_FA" "$T" "$d" "$c" | sed "s/^/round=$r /" >> "$O/peers.txt"
  done; done; done
done
"$B" --benchmark_filter='BM_fma_peak' 2>/dev/null | grep fma >> "$O/peak.txt"
