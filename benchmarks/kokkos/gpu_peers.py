"""Peers for attnsink_bench_kokkos_gpu, timed on the same GPU in the same run.

torch.nn.functional.scaled_dot_product_attention in fp32 (TF32 off, so every
product is a true fp32 FMA as in attnsink) and a materialized torch sigmoid
attention, sigmoid(q k^T / sqrt(d) - log N) v (the scores tensor exists in full).
Same shapes and FLOP count as the C++ benchmark: 4·B·H·N²·d, half of it causal.
"""
import math

import torch
import torch.nn.functional as F

torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False


def median_ms(fn, reps=7):
    for _ in range(2):
        fn()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return times[len(times) // 2]


def sigmoid_attention(q, k, v, causal):
    n, d = q.shape[-2], q.shape[-1]
    s = torch.sigmoid(q @ k.transpose(-1, -2) / math.sqrt(d) - math.log(n))
    if causal:
        s = s.masked_fill(~torch.ones(n, n, dtype=torch.bool, device=q.device).tril(), 0.0)
    return s @ v


def gemm_ceilings(n=8192):
    """cuBLAS n³ GEMM rates, fp32 and TF32: what a library reaches on each path.

    A 3xTF32 (fp32-accurate) product costs three TF32 products, so a third of
    the TF32 rate bounds any fp32-accurate tensor-core kernel that works the
    way cuBLAS's TF32 kernels do."""
    a, b = (torch.randn(n, n, device="cuda") for _ in range(2))
    out = {}
    for name, tf32 in (("fp32", False), ("tf32", True)):
        torch.backends.cuda.matmul.allow_tf32 = tf32
        out[name] = 2.0 * n ** 3 / (median_ms(lambda: a @ b) * 1e-3) / 1e12
    torch.backends.cuda.matmul.allow_tf32 = False
    print(f"# cuBLAS {n}^3 GEMM: fp32 {out['fp32']:.1f} TFLOP/s, TF32 {out['tf32']:.1f} TFLOP/s "
          f"(a third of it: {out['tf32'] / 3:.1f})", flush=True)


def main():
    B, H = 4, 16
    print(f"# torch {torch.__version__} peers on {torch.cuda.get_device_name()}, fp32 (TF32 off), B={B} H={H}; "
          "median of 7 after 2 warm-up calls")
    print(f"{'peer':<12} {'N':>6} {'d':>4} {'mask':<7} {'ms':>10} {'TFLOP/s':>9}")
    gemm_ceilings()
    gen = torch.Generator(device="cuda").manual_seed(0)
    for n in (1024, 4096):
        for d in (64, 128):
            q, k, v = (torch.randn(B, H, n, d, device="cuda", generator=gen) for _ in range(3))
            for causal in (False, True):
                flops = 4.0 * B * H * n * n * d * (0.5 if causal else 1.0)
                for name, fn in (("sdpa", lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal)),
                                 ("sigmoid_mat", lambda: sigmoid_attention(q, k, v, causal))):
                    ms = median_ms(fn)
                    print(f"{name:<12} {n:>6} {d:>4} {'causal' if causal else 'none':<7} {ms:>10.3f} "
                          f"{flops / (ms * 1e-3) / 1e12:>9.2f}", flush=True)


if __name__ == "__main__":
    main()
