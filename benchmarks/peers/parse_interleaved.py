# Summarizes interleaved.sh's OUTDIR: ours (median of rounds of the bench's
# GFLOPS), each peer (median of rounds of its own median), the ratios.
# usage: python3 parse_interleaved.py OUTDIR
import re,sys,statistics as st,collections
d=sys.argv[1]
ours=collections.defaultdict(list); peers=collections.defaultdict(list)
for l in open(d+'/ours.txt'):
    m=re.search(r'forward/softmax/(\w+)/T:(\d+)/d:(\d+).* GFLOPS=([\d.]+)',l)
    ours[(m[1],int(m[2]),int(m[3]))].append(float(m[4]))
for l in open(d+'/peers.txt'):
    m=re.search(r'peer=(\w+) T=(\d+) d=(\d+) causal=(\d).*gflops=([\d.]+)',l)
    peers[('causal' if m[4]=='1' else 'full',int(m[2]),int(m[3]),m[1])].append(float(m[5]))
print('| mask | T | d | ours GFLOP/s (range) | ORT | oneDNN | ggml | ours ÷ best peer | ours ÷ ggml |')
print('|---|---|---|---|---|---|---|---|---|')
for mask in ['full','causal']:
  for dd in [64,128]:
    for T in [512,1024,2048,4096]:
        o=ours[(mask,T,dd)]; om=st.median(o)
        pm={p:st.median(peers[(mask,T,dd,p)]) for p in ['ort','onednn','ggml'] if peers[(mask,T,dd,p)]}
        best=max(pm,key=pm.get) if pm else None
        f=lambda p: '%.1f'%pm[p] if p in pm else '—'
        rb = '%.2f (%s)' % (om / pm[best], best) if best else '—'
        rg = '%.2f' % (om / pm['ggml']) if 'ggml' in pm else '—'
        print(f'| {mask} | {T} | {dd} | {om:.1f} ({min(o):.1f}–{max(o):.1f}) | {f("ort")} | {f("onednn")} | {f("ggml")} | {rb} | {rg} |')
