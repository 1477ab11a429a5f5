// ONNX Runtime CPU peer: com.microsoft.MultiHeadAttention, fp32, B=1, H=8.
// usage: node ort_mha.js T d causal(0|1)
// The one-node ONNX model is protobuf-encoded by hand below (no onnx package).
'use strict';
const ort = require('onnxruntime-node');

const T = parseInt(process.argv[2] || '1024', 10);
const d = parseInt(process.argv[3] || '64', 10);
const causal = parseInt(process.argv[4] || '0', 10) ? 1 : 0;
const B = 1, H = 8, D = H * d;
const scale = 1 / Math.sqrt(d);

// ---------- minimal protobuf encoder ----------
function varint(n) {                 // non-negative integers (< 2^53)
  const out = [];
  let v = BigInt(n);
  do {
    let b = Number(v & 0x7fn);
    v >>= 7n;
    if (v > 0n) b |= 0x80;
    out.push(b);
  } while (v > 0n);
  return out;
}
const key = (field, wt) => varint((field << 3) | wt);
const fInt = (field, n) => [...key(field, 0), ...varint(n)];
const fBytes = (field, bytes) => [...key(field, 2), ...varint(bytes.length), ...bytes];
const fStr = (field, s) => fBytes(field, [...Buffer.from(s, 'utf8')]);
const fMsg = fBytes;

// onnx.proto field numbers
const ATTR_INT = 2;
function attrInt(name, v) {          // AttributeProto: name=1, i=3, type=20
  return [...fStr(1, name), ...fInt(3, v), ...fInt(20, ATTR_INT)];
}
function valueInfo(name, dims) {     // ValueInfoProto{name=1,type=2{tensor_type=1{elem_type=1,shape=2{dim=1{dim_value=1}}}}}
  const shape = [].concat(...dims.map(v => fMsg(1, fInt(1, v))));
  const tensorType = [...fInt(1, 1 /*FLOAT*/), ...fMsg(2, shape)];
  const typeProto = fMsg(1, tensorType);
  return [...fStr(1, name), ...fMsg(2, typeProto)];
}
function buildModel() {
  const node = [
    ...fStr(1, 'query'), ...fStr(1, 'key'), ...fStr(1, 'value'),
    ...fStr(2, 'output'),
    ...fStr(3, 'mha'),
    ...fStr(4, 'MultiHeadAttention'),
    ...fMsg(5, attrInt('num_heads', H)),
    ...(causal ? fMsg(5, attrInt('unidirectional', 1)) : []),
    ...fStr(7, 'com.microsoft'),
  ];
  const graph = [
    ...fMsg(1, node),
    ...fStr(2, 'mha_graph'),
    ...fMsg(11, valueInfo('query', [B, T, D])),
    ...fMsg(11, valueInfo('key', [B, T, D])),
    ...fMsg(11, valueInfo('value', [B, T, D])),
    ...fMsg(12, valueInfo('output', [B, T, D])),
  ];
  const model = [
    ...fInt(1, 8),                                   // ir_version
    ...fMsg(8, [...fStr(1, ''), ...fInt(2, 17)]),    // opset_import ai.onnx 17
    ...fMsg(8, [...fStr(1, 'com.microsoft'), ...fInt(2, 1)]),
    ...fStr(2, 'attnsink-peer'),                     // producer_name
    ...fMsg(7, graph),
  ];
  return Uint8Array.from(model);
}

// ---------- data ----------
let seed = (Date.now() ^ (process.pid << 16)) >>> 0;
function rnd() {                     // xorshift32 -> [0,1)
  seed ^= seed << 13; seed >>>= 0;
  seed ^= seed >>> 17;
  seed ^= seed << 5; seed >>>= 0;
  return seed / 4294967296;
}
const a = Math.sqrt(3);              // uniform(-sqrt3, sqrt3): unit variance
function fill(n) {
  const x = new Float32Array(n);
  for (let i = 0; i < n; i++) x[i] = (2 * rnd() - 1) * a;
  return x;
}
const q = fill(B * T * D), k = fill(B * T * D), v = fill(B * T * D);

// double-precision reference for row t of head h -> max abs err vs out
function refErr(out, h, t) {
  const nk = causal ? t + 1 : T;
  const s = new Float64Array(nk);
  let m = -Infinity;
  for (let j = 0; j < nk; j++) {
    let acc = 0;
    for (let c = 0; c < d; c++) acc += q[t * D + h * d + c] * k[j * D + h * d + c];
    s[j] = acc * (1 / Math.sqrt(d));
    if (s[j] > m) m = s[j];
  }
  let sum = 0;
  for (let j = 0; j < nk; j++) { s[j] = Math.exp(s[j] - m); sum += s[j]; }
  let err = 0;
  for (let c = 0; c < d; c++) {
    let acc = 0;
    for (let j = 0; j < nk; j++) acc += s[j] * v[j * D + h * d + c];
    acc /= sum;
    const e = Math.abs(acc - out[t * D + h * d + c]);
    if (e > err) err = e;
  }
  return err;
}

async function main() {
  const session = await ort.InferenceSession.create(buildModel(), {
    intraOpNumThreads: 2,
    interOpNumThreads: 1,
    executionMode: 'sequential',
    graphOptimizationLevel: 'all',
    executionProviders: ['cpu'],
  });
  const feeds = {
    query: new ort.Tensor('float32', q, [B, T, D]),
    key: new ort.Tensor('float32', k, [B, T, D]),
    value: new ort.Tensor('float32', v, [B, T, D]),
  };
  // correctness, once
  const res = await session.run(feeds);
  const out = res.output.data;
  const rows = [...new Set([0, 1, Math.floor(T / 3), Math.floor(T / 2), T - 2, T - 1])];
  let maxerr = 0;
  for (let h = 0; h < H; h++) for (const t of rows) maxerr = Math.max(maxerr, refErr(out, h, t));
  if (!(maxerr < 1e-4)) {
    console.error(`ort: correctness FAILED, maxerr=${maxerr}`);
    process.exit(1);
  }
  // warm-ups
  for (let i = 0; i < 2; i++) await session.run(feeds);
  // timed: at least 10 runs and at least 1 s
  const times = [];
  let total = 0;
  while (times.length < 10 || total < 1.0) {
    const t0 = process.hrtime.bigint();
    await session.run(feeds);
    const dt = Number(process.hrtime.bigint() - t0) / 1e9;
    times.push(dt); total += dt;
    if (times.length >= 1000) break;
  }
  times.sort((x, y) => x - y);
  const n = times.length;
  const med = n % 2 ? times[(n - 1) / 2] : 0.5 * (times[n / 2 - 1] + times[n / 2]);
  let flops = 4 * H * T * T * d;
  if (causal) flops /= 2;
  console.log(`peer=ort T=${T} d=${d} causal=${causal} median_ms=${(med * 1e3).toFixed(3)} ` +
    `gflops=${(flops / med / 1e9).toFixed(2)} maxerr=${maxerr.toExponential(2)} runs=${n}`);
}
main().catch(e => { console.error(e); process.exit(1); });
