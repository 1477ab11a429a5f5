#!/usr/bin/env python3
"""Independent hand computation of a 3-token causal attention for every
normalization (plain Python floats, no attnsink code). Its printed output is
pasted into tests/test_policies.cpp; re-run to check: python3 normalizations.py"""
import math

q = [[1.0, 0.0], [0.5, -1.0], [2.0, 1.0]]
k = [[1.0, 2.0], [-1.0, 0.5], [0.3, -0.7]]
v = [[1.0, 2.0], [3.0, -1.0], [0.0, 0.5]]
c = 1 / math.sqrt(2)

def scores(i):  # causal: keys 0..i
    return [c * (q[i][0] * k[j][0] + q[i][1] * k[j][1]) for j in range(i + 1)]

sig = lambda x: 1 / (1 + math.exp(-x))
elu1 = lambda x: x + 1 if x > 0 else math.exp(x)
relu = lambda x: max(x, 0.0)

def softmax_extra(s, extra):  # e^s / (extra + sum e^s)
    z = extra + sum(math.exp(x) for x in s)
    return [math.exp(x) / z for x in s]

norms = {
    "softmax": lambda s: softmax_extra(s, 0.0),
    "softmax_off_by_one": lambda s: softmax_extra(s, 1.0),
    "sink_logit(b=0.5)": lambda s: softmax_extra(s, math.exp(0.5)),
    "scaled_softmax(alpha=0.5)": lambda s: [0.5 * p for p in softmax_extra(s, 0.0)],
    "sigmoid(b=-1)": lambda s: [sig(x - 1) for x in s],
    "elu_plus_one": lambda s: [elu1(x) for x in s],
    "identity": lambda s: list(s),
    "normalized<sigmoid>": lambda s: [sig(x) / (sum(sig(y) for y in s) + 1e-8) for x in s],
    "normalized<elu_plus_one>": lambda s: [elu1(x) / (sum(elu1(y) for y in s) + 1e-8) for x in s],
    "normalized<relu>": lambda s: [relu(x) / (sum(relu(y) for y in s) + 1e-8) for x in s],
    "abs_clamped": lambda s: [x / max(abs(sum(s)), 1.0) for x in s],
    "softpick": lambda s: [relu(math.exp(x) - 1) / (sum(abs(math.exp(y) - 1) for y in s) + 1e-6) for x in s],
}

for name, f in norms.items():
    out = []
    for i in range(3):
        p = f(scores(i))
        out += [sum(p[j] * v[j][e] for j in range(i + 1)) for e in range(2)]
    print(f'{{"{name}", {{' + ", ".join(f"{x:.12f}" for x in out) + "}},")

# T5 relative buckets (Raffel et al.; HF transformers' _relative_position_bucket),
# for the (query position - key position) distances the test checks.
def t5_bucket(n, bidirectional, num_buckets=32, max_distance=128):
    ret = 0
    if bidirectional:
        num_buckets //= 2
        if n < 0:
            ret += num_buckets
        n = abs(n)
    else:
        n = max(n, 0)
    max_exact = num_buckets // 2
    if n < max_exact:
        return ret + n
    large = max_exact + int(math.log(n / max_exact) / math.log(max_distance / max_exact) * (num_buckets - max_exact))
    return ret + min(large, num_buckets - 1)

print("t5 causal", [t5_bucket(n, False) for n in [-3, 0, 1, 15, 16, 17, 30, 60, 127, 128, 500]])
print("t5 bidirectional", [t5_bucket(n, True) for n in [-20, -5, -1, 0, 1, 7, 8, 20, 100, 500]])
