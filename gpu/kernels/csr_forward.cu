// CSR sparse-attention forward, SIMT (fp64; fp32; fp16/bf16 computed in fp32).
//
// Semantics (DESIGN §2): s = scale * q.k, optionally softcap * tanh(s / softcap); keys outside the
// row's CSR entries are excluded; out = softmax(s) @ v over the allowed keys; lse natural log; a row
// with no allowed keys gives out = 0, lse = -inf; a NaN allowed score gives a NaN row.
//
// One CTA per (row tile of BM rows, head, batch). The CTA walks the union of its rows' keys in
// windows of BN consecutive keys: each window starts at the smallest key not yet consumed by any of
// its rows, so windows that no row needs are skipped. For each window, the rows' CSR entries that
// fall inside become a bitmap in shared memory (one warp per row: a ballot and a warp OR per 32
// entries), the K and V rows of the window are staged in shared memory, and the SIMT core
// (simt_core.cuh) does scores, online softmax and p @ v. Banded patterns (windows, causal) reuse
// every staged key across BM rows; scattered patterns degrade toward one window per key group.
//
// Pipelining: the bitmap of window t+1 is built while window t is computed. Its CSR entries are
// copied into shared memory with cp.async (each warp its own rows) at the start of window t, land
// while the scores of window t are computed, and are turned into the bitmap before window t's
// softmax, so the index loads never stall the CTA.
//
// Template: T element type, A accumulator (float or double), TM/TN micro-tile (BM = 16*TM rows,
// BN = 16*TN keys), DMAX >= max(d, d_v) (head dims zero-padded to DMAX in shared memory), SPLIT
// (separate K and V buffers). Instantiated by name from sparse_ref/backends/cupy.py; build with
// -DSPARSE_REF_INSTANTIATE to get a representative set in an object file (tests/test_cuda_compile.py).
#include "simt_core.cuh"
#include "csr_walk.cuh"

namespace sparse_ref {

template <typename T, typename A, int TM, int TN, int DMAX, bool SPLIT>
__global__ void __launch_bounds__(256, SPLIT ? 1 : 2)
csr_forward_simt(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                 T* __restrict__ out, A* __restrict__ lse, const long long* __restrict__ indptr,
                 const int* __restrict__ indices, const int* __restrict__ order, int H, int Hkv,
                 int P, int n_q, int n_k, int d, int dv, A scale, A softcap, int use_softcap,
                 int v_finite) {
  using C = Simt<T, A, TM, TN, DMAX, SPLIT>;
  constexpr int BM = C::BM, BN = C::BN, MW = C::MW, LDI = C::LDI;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const typename C::Smem sm = C::carve(smem_raw);

  const int tid = threadIdx.x, ty = tid >> 4, tx = tid & 15, lane = tid & 31, warp = tid >> 5;
  // CTA x -> (head, row tile): heads vary fastest and tiles come heaviest first (order[] sorts
  // each head's tiles by stored entries), so the longest CTAs start first.
  const int h = blockIdx.x % H, b = blockIdx.y;
  const int ntiles = (n_q + BM - 1) / BM;
  const int r0 = order[(long long)(P == 1 ? 0 : h) * ntiles + blockIdx.x / H] * BM;
  const int nrows = min(BM, n_q - r0);
  const HeadPlanes pl(b, h, H, Hkv);
  const long long bh = pl.bh;
  const T* kb = k + pl.bhk * n_k * d;
  const T* vb = v + pl.bhk * n_k * dv;
  const long long* ip = row_offsets(indptr, P, h, n_q, r0);

  C::template load_tile<BM>(sm.q, q + bh * n_q * d, r0, nrows, d);
  cp_async_commit();
  if (tid < BM) {
    long long p = 0, e = 0;
    if (tid < nrows) {
      p = ip[tid];
      e = ip[tid + 1];
    }
    sm.ptr[tid] = p;
    sm.end[tid] = e;
  }
  __syncthreads();
  stage_indices<BM, LDI>(indices, sm.idx, sm.ptr, sm.end, warp, lane);
  cp_async_commit();
  cp_async_wait<0>();
  __syncwarp();
  if (lane == 0)
    for (int r = warp; r < BM; r += 8) sm.next[r] = sm.ptr[r] < sm.end[r] ? sm.idx[r * LDI] : BIG_INDEX;
  __syncthreads();
  int j0 = tile_min<BM>(sm.next, lane);
  if (j0 != BIG_INDEX) build_mask<BM, BN>(sm.idx, sm.mask, sm.ptr, sm.end, sm.next, j0, warp, lane);
  __syncthreads();

  A m[TM], l[TM], o[TM][C::NO];
#pragma unroll
  for (int i = 0; i < TM; ++i) {
    m[i] = -num<A>::inf();
    l[i] = (A)0;
#pragma unroll
    for (int c = 0; c < C::NO; ++c) o[i][c] = (A)0;
  }
  const bool sc = use_softcap != 0;

  for (int t = 0; j0 != BIG_INDEX; ++t) {
    const unsigned* mask_t = sm.mask + (t & 1) * BM * MW;
    unsigned* mask_n = sm.mask + ((t + 1) & 1) * BM * MW;
    const int j1 = tile_min<BM>(sm.next, lane);  // first key of window t + 1
    const int nk = min(BN, n_k - j0);
    C::template load_tile<BN>(sm.k, kb, j0, nk, d);
    cp_async_commit();
    if (SPLIT) C::template load_tile<BN>(sm.v, vb, j0, nk, dv);
    if (j1 != BIG_INDEX) stage_indices<BM, LDI>(indices, sm.idx, sm.ptr, sm.end, warp, lane);
    cp_async_commit();
    cp_async_wait<1>();  // K
    __syncthreads();
    A s[TM][TN];
    C::scores(sm, s, ty, tx);
    if (!SPLIT) {
      __syncthreads();  // the K buffer takes V
      C::template load_tile<BN>(sm.v, vb, j0, nk, dv);
      cp_async_commit();
      cp_async_wait<1>();  // this warp's staged indices
    } else {
      cp_async_wait<0>();
    }
    __syncwarp();
    if (j1 != BIG_INDEX) build_mask<BM, BN>(sm.idx, mask_n, sm.ptr, sm.end, sm.next, j1, warp, lane);
    C::softmax(sm, mask_t, s, m, l, o, ty, tx, scale, softcap, sc);
    cp_async_wait<0>();
    __syncthreads();
    if (v_finite)
      C::template pv<true>(sm, mask_t, o, ty, tx);
    else
      C::template pv<false>(sm, mask_t, o, ty, tx);
    __syncthreads();
    j0 = j1;
  }
  C::finalize(o, m, l, out + (bh * n_q + r0) * dv, lse + bh * n_q + r0, nrows, dv, ty, tx);
}

}  // namespace sparse_ref

#ifdef SPARSE_REF_INSTANTIATE
namespace sparse_ref {
#define SR_CSR(T, A, TM, TN, D, S)                                                                  \
  template __global__ void csr_forward_simt<T, A, TM, TN, D, S>(                                   \
      const T*, const T*, const T*, T*, A*, const long long*, const int*, const int*, int, int,    \
      int, int, int, int, int, A, A, int, int);
SR_CSR(float, float, 8, 4, 128, true)
SR_CSR(float, float, 4, 4, 128, false)
SR_CSR(float, float, 4, 4, 256, false)
SR_CSR(float, float, 4, 4, 32, false)
SR_CSR(double, double, 2, 2, 128, false)
SR_CSR(double, double, 2, 2, 64, false)
SR_CSR(f16_t, float, 4, 4, 128, false)
SR_CSR(bf16_t, float, 8, 4, 64, true)
}  // namespace sparse_ref
#endif
