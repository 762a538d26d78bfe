// CSR sparse-attention backward, SIMT (fp64; fp32; fp16/bf16 computed in fp32). No atomics.
//
// Semantics (as sparse_ref/kernels/csr_backward.py, the CPU kernel):
//   s_ij  = scale * q_i . k_j            (softcap: t_ij = tanh(s_ij / softcap), s_ij = softcap t_ij)
//   p_ij  = exp(s_ij - m_i) * r_i        (m_i = max_j s_ij, r_i = 1 / sum_j exp(s_ij - m_i))
//   dp_ij = dout_i . v_j
//   delta_i = r_i * sum_j exp(s_ij - m_i) dp_ij          (= sum_j p_ij dp_ij, re-derived here)
//   ds_ij = p_ij (dp_ij - delta_i)       (times 1 - t_ij^2 with softcap)
//   dq_i  = scale * sum_j ds_ij k_j                       (kernel 1, over the pattern's rows)
//   dk_j  = scale * sum_i ds_ij q_i,  dv_j = sum_i p_ij dout_i   (kernel 2, over its transpose)
// with j over the allowed keys of row i only. m, r and delta come from the row's own scores, not
// from the forward's out/lse (see the CPU kernel's module doc for why).
//
// Kernel 1, csr_backward_dq: one CTA per (tile of BM = 16*TM query rows, head, batch). It walks the
// union of its rows' keys in windows of BN = 16*TN consecutive keys with the CSR walk of the forward
// (csr_walk.cuh: bitmap per window, CSR entries of the next window staged with cp.async), twice:
//   pass 1: S = Q K^T and dP = dO V^T per window; online row max m, sum l and sum of e * dp (both
//           rescaled whenever m grows); at the end r = 1/l and delta = r * sum(e * dp); m, r and
//           delta of every row are written to `stats` for kernel 2;
//   pass 2: S and dP again, p and ds in shared memory, dq += ds K.
// Kernel 2, csr_backward_dkdv: one CTA per (tile of BM keys, kv head, batch), walking the transposed
// pattern (the queries of each key) in windows of BN queries, for each query head of the kv head's
// group in increasing order: S^T = K Q^T and dP^T = V dO^T, p and ds from the stored m, r, delta
// (bitwise the same p and ds as kernel 1: same dot products, same expressions), dv += p dO,
// dk += ds Q. Five plus four tile products per window, against the four that 8 nnz d counts.
//
// Determinism: every output row is written by one CTA, every sum runs in a fixed order (window by
// window, head by head, the head dimension in order, fixed shuffle trees), so results are bitwise
// identical across runs.
//
// Special values: a row with no allowed keys (or only -inf scores) gets dq = 0 and weights 0 in
// kernel 2. A NaN score makes its row's gradients (dq_i, and dk_j/dv_j of its keys) NaN: the max
// ignores NaN, e = exp(NaN) poisons l. An entry outside the pattern never enters a sum: its weights
// are set to exactly 0, and when `finite` is 0 (some input not finite) the accumulations also skip
// it by its bitmap bit, so 0 * inf cannot leak (as the SIMT forward does for non-finite v). A row
// without gradient (1/l stored as 0) that holds inf/NaN in q or dout would still meet its weight 0
// in kernel 2: the host zeroes such rows in copies of q and dout before launching it.
//
// Template: T element type, A accumulator (float or double), TM/TN micro-tile, DMAX >= max(d, d_v)
// (head dims zero-padded to DMAX). Instantiated by name from sparse_ref/backends/cupy.py; build
// with -DSPARSE_REF_INSTANTIATE to get a representative set in an object file.
#include "simt_core.cuh"
#include "csr_walk.cuh"

namespace sparse_ref {

template <typename T, typename A, int TM, int TN, int DMAX>
struct Bwd {
  using C = Simt<T, A, TM, TN, DMAX, false>;
  static constexpr int BM = C::BM, BN = C::BN, LD = C::LD, LDP = C::LDP, MW = C::MW;
  static constexpr int LDI = C::LDI, NO = C::NO, OC = C::OC, OV = C::OV;
  // x0, x1: BM rows (the CTA's own: Q, dO in kernel 1; K, V in kernel 2); y0, y1: BN rows of the
  // window (K, V; Q, dO); w0, w1: BM x BN weights (ds; p, ds); stat: m, r, delta of BN queries.
  static constexpr int SMEM_BYTES = (2 * BM * LD + 2 * BN * LD + 2 * BM * LDP + 3 * BN) * (int)sizeof(A) +
                                    2 * BM * MW * 4 + BM * (8 + 8) + BM * LDI * 4 + BM * 4;

  struct Smem {
    A* x0;
    A* x1;
    A* y0;
    A* y1;
    A* w0;
    A* w1;
    A* stat;
    unsigned* mask;  // two buffers of BM * MW words
    long long* ptr;
    long long* end;
    int* idx;  // BM * LDI
    int* next;
  };
  static __device__ __forceinline__ Smem carve(unsigned char* raw) {
    Smem s;
    s.x0 = reinterpret_cast<A*>(raw);
    s.x1 = s.x0 + BM * LD;
    s.y0 = s.x1 + BM * LD;
    s.y1 = s.y0 + BN * LD;
    s.w0 = s.y1 + BN * LD;
    s.w1 = s.w0 + BM * LDP;
    s.stat = s.w1 + BM * LDP;
    s.mask = reinterpret_cast<unsigned*>(s.stat + 3 * BN);
    s.ptr = reinterpret_cast<long long*>(s.mask + 2 * BM * MW);
    s.end = s.ptr + BM;
    s.idx = reinterpret_cast<int*>(s.end + BM);
    s.next = s.idx + BM * LDI;
    return s;
  }

  // s[i][j] = x[row ty+16i] . y[row tx+16j] (the SIMT core's score product on other buffers)
  static __device__ __forceinline__ void product_nt(A* x, A* y, A (&s)[TM][TN], int ty, int tx) {
    typename C::Smem v{};
    v.q = x;
    v.k = y;
    C::scores(v, s, ty, tx);
  }
  // acc[i][:] += sum_j w[row ty+16i][j] * y[j][cols]; FINITE: y finite, so entries with weight 0
  // outside the pattern may be multiplied in; otherwise they are skipped by their mask bit.
  static __device__ __forceinline__ void product_acc(A* w, A* y, const unsigned* mask, bool finite,
                                                     A (&acc)[TM][NO], int ty, int tx) {
    typename C::Smem v{};
    v.p = w;
    v.v = y;
    if (finite)
      C::template pv<true>(v, mask, acc, ty, tx);
    else
      C::template pv<false>(v, mask, acc, ty, tx);
  }

  static __device__ __forceinline__ bool bit(const unsigned* mask, int r, int c) {
    return (mask[r * MW + (c >> 5)] >> (c & 31)) & 1u;
  }

  // Start the walk over rows [0, nrows) of a tile whose CSR offsets start at `ip`: stage, first
  // window's bitmap into mask buffer 0. Returns the window's first column (BIG_INDEX: none). Every
  // thread of the CTA calls it; it starts and ends with a barrier-ordered state.
  static __device__ int walk_begin(const Smem& sm, const long long* ip, int nrows,
                                   const int* __restrict__ indices, int tid, int warp, int lane) {
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
    const int j0 = tile_min<BM>(sm.next, lane);
    if (j0 != BIG_INDEX) build_mask<BM, BN>(sm.idx, sm.mask, sm.ptr, sm.end, sm.next, j0, warp, lane);
    __syncthreads();
    return j0;
  }

  // scale, then softcap: the score and the softcap's derivative factor 1 - t^2
  static __device__ __forceinline__ A score(A s, A scale, A softcap, bool sc, A& f) {
    A x = s * scale;
    f = (A)1;
    if (sc) {
      const A t = num<A>::tanh_(x / softcap);
      x = softcap * t;
      f = (A)1 - t * t;
    }
    return x;
  }
};

// ------------------------------------------------------------------------------- kernel 1: dq
template <typename T, typename A, int TM, int TN, int DMAX>
__global__ void __launch_bounds__(256, 1)
csr_backward_dq(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                const T* __restrict__ dout, T* __restrict__ dq, A* __restrict__ st_m,
                A* __restrict__ st_r, A* __restrict__ st_d, const long long* __restrict__ indptr,
                const int* __restrict__ indices, const int* __restrict__ order, int H, int Hkv,
                int P, int n_q, int n_k, int d, int dv, A scale, A softcap, int use_softcap,
                int finite) {
  using W = Bwd<T, A, TM, TN, DMAX>;
  using C = typename W::C;
  constexpr int BM = W::BM, BN = W::BN, MW = W::MW, LDI = W::LDI, LDP = W::LDP, NO = W::NO;
  constexpr int OC = W::OC, OV = W::OV;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const typename W::Smem sm = W::carve(smem_raw);

  const int tid = threadIdx.x, ty = tid >> 4, tx = tid & 15, lane = tid & 31, warp = tid >> 5;
  const int h = blockIdx.x % H, b = blockIdx.y;
  const int ntiles = (n_q + BM - 1) / BM;
  const int r0 = order[(long long)(P == 1 ? 0 : h) * ntiles + blockIdx.x / H] * BM;
  const int nrows = min(BM, n_q - r0);
  const int hk = h / (H / Hkv);
  const long long bh = (long long)b * H + h, bhk = (long long)b * Hkv + hk;
  const T* kb = k + bhk * n_k * d;
  const T* vb = v + bhk * n_k * dv;
  const long long* ip = indptr + (long long)(P == 1 ? 0 : h) * (n_q + 1) + r0;
  const bool sc = use_softcap != 0;
  const A NEG = -num<A>::inf();

  C::template load_tile<BM>(sm.x0, q + bh * n_q * d, r0, nrows, d);
  C::template load_tile<BM>(sm.x1, dout + bh * n_q * dv, r0, nrows, dv);
  cp_async_commit();

  // ---- pass 1: row max m, partial sums l = sum e and dl = sum e * dp (this thread's columns)
  A m[TM], l[TM], dl[TM];
#pragma unroll
  for (int i = 0; i < TM; ++i) {
    m[i] = NEG;
    l[i] = (A)0;
    dl[i] = (A)0;
  }
  int j0 = W::walk_begin(sm, ip, nrows, indices, tid, warp, lane);
  for (int t = 0; j0 != BIG_INDEX; ++t) {
    const unsigned* mask_t = sm.mask + (t & 1) * BM * MW;
    unsigned* mask_n = sm.mask + ((t + 1) & 1) * BM * MW;
    const int j1 = tile_min<BM>(sm.next, lane);
    const int nk = min(BN, n_k - j0);
    C::template load_tile<BN>(sm.y0, kb, j0, nk, d);
    C::template load_tile<BN>(sm.y1, vb, j0, nk, dv);
    cp_async_commit();
    if (j1 != BIG_INDEX) stage_indices<BM, LDI>(indices, sm.idx, sm.ptr, sm.end, warp, lane);
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    A s[TM][TN], dp[TM][TN];
    W::product_nt(sm.x0, sm.y0, s, ty, tx);
    W::product_nt(sm.x1, sm.y1, dp, ty, tx);
    cp_async_wait<0>();
    __syncwarp();
    if (j1 != BIG_INDEX) build_mask<BM, BN>(sm.idx, mask_n, sm.ptr, sm.end, sm.next, j1, warp, lane);
#pragma unroll
    for (int i = 0; i < TM; ++i) {
      const int r = ty + 16 * i;
      A mx = NEG;
      unsigned bits = 0u;
#pragma unroll
      for (int j = 0; j < TN; ++j) {
        const bool in = W::bit(mask_t, r, tx + 16 * j);
        bits |= (unsigned)in << j;
        A f;
        const A x = in ? W::score(s[i][j], scale, softcap, sc, f) : NEG;
        s[i][j] = x;
        mx = num<A>::max_(mx, x);
      }
#pragma unroll
      for (int off = 8; off >= 1; off >>= 1) mx = num<A>::max_(mx, shfl_xor(mx, off));
      const A mnew = num<A>::max_(m[i], mx);
      const A mu = (mnew == NEG) ? (A)0 : mnew;
      const A alpha = num<A>::exp_(m[i] - mu);
      m[i] = mnew;
      A le = (A)0, dle = (A)0;
#pragma unroll
      for (int j = 0; j < TN; ++j) {
        const A e = num<A>::exp_(s[i][j] - mu);
        le += e;
        dle += ((bits >> j) & 1u) ? e * dp[i][j] : (A)0;
      }
      l[i] = l[i] * alpha + le;
      dl[i] = dl[i] * alpha + dle;
    }
    __syncthreads();
    j0 = j1;
  }

  // ---- row statistics: m (0 for rows without finite max), r = 1/l (0: no gradient), delta
  A mrow[TM], rrow[TM], drow[TM];
#pragma unroll
  for (int i = 0; i < TM; ++i) {
    A lt = l[i], dlt = dl[i];
#pragma unroll
    for (int off = 8; off >= 1; off >>= 1) {
      lt += shfl_xor(lt, off);
      dlt += shfl_xor(dlt, off);
    }
    mrow[i] = (m[i] == NEG) ? (A)0 : m[i];
    const bool dead = (lt == (A)0);
    rrow[i] = dead ? (A)0 : (A)1 / lt;
    drow[i] = dead ? (A)0 : dlt * rrow[i];
    const int r = ty + 16 * i;
    if (tx == 0 && r < nrows) {
      const long long o = bh * n_q + r0 + r;
      st_m[o] = mrow[i];
      st_r[o] = rrow[i];
      st_d[o] = drow[i];
    }
  }

  // ---- pass 2: ds into w0, dq += ds K
  A acc[TM][NO];
#pragma unroll
  for (int i = 0; i < TM; ++i)
#pragma unroll
    for (int c = 0; c < NO; ++c) acc[i][c] = (A)0;
  j0 = W::walk_begin(sm, ip, nrows, indices, tid, warp, lane);
  for (int t = 0; j0 != BIG_INDEX; ++t) {
    const unsigned* mask_t = sm.mask + (t & 1) * BM * MW;
    unsigned* mask_n = sm.mask + ((t + 1) & 1) * BM * MW;
    const int j1 = tile_min<BM>(sm.next, lane);
    const int nk = min(BN, n_k - j0);
    C::template load_tile<BN>(sm.y0, kb, j0, nk, d);
    C::template load_tile<BN>(sm.y1, vb, j0, nk, dv);
    cp_async_commit();
    if (j1 != BIG_INDEX) stage_indices<BM, LDI>(indices, sm.idx, sm.ptr, sm.end, warp, lane);
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    A s[TM][TN], dp[TM][TN];
    W::product_nt(sm.x0, sm.y0, s, ty, tx);
    W::product_nt(sm.x1, sm.y1, dp, ty, tx);
    cp_async_wait<0>();
    __syncwarp();
    if (j1 != BIG_INDEX) build_mask<BM, BN>(sm.idx, mask_n, sm.ptr, sm.end, sm.next, j1, warp, lane);
#pragma unroll
    for (int i = 0; i < TM; ++i) {
      const int r = ty + 16 * i;
#pragma unroll
      for (int j = 0; j < TN; ++j) {
        const int c = tx + 16 * j;
        A f;
        const A x = W::score(s[i][j], scale, softcap, sc, f);
        const bool live = W::bit(mask_t, r, c) && rrow[i] != (A)0;
        const A p = num<A>::exp_(x - mrow[i]) * rrow[i];
        sm.w0[r * LDP + c] = live ? p * (dp[i][j] - drow[i]) * f : (A)0;
      }
    }
    __syncthreads();
    W::product_acc(sm.w0, sm.y0, mask_t, finite != 0, acc, ty, tx);
    __syncthreads();
    j0 = j1;
  }

#pragma unroll
  for (int i = 0; i < TM; ++i) {
    const int r = ty + 16 * i;
    if (r >= nrows) continue;
    const bool dead = rrow[i] == (A)0;
    T* row = dq + (bh * n_q + r0 + r) * d;
#pragma unroll
    for (int c = 0; c < OC; ++c)
#pragma unroll
      for (int w = 0; w < OV; ++w) {
        const int col = c * 16 * OV + tx * OV + w;
        if (col < d) store_val(row + col, dead ? (A)0 : acc[i][c * OV + w] * scale);
      }
  }
}

// ---------------------------------------------------------------------------- kernel 2: dk, dv
template <typename T, typename A, int TM, int TN, int DMAX>
__global__ void __launch_bounds__(256, 1)
csr_backward_dkdv(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                  const T* __restrict__ dout, T* __restrict__ dk, T* __restrict__ dvout,
                  const A* __restrict__ st_m, const A* __restrict__ st_r,
                  const A* __restrict__ st_d, const long long* __restrict__ t_indptr,
                  const int* __restrict__ t_indices, const int* __restrict__ order, int H, int Hkv,
                  int P, int PO, int n_q, int n_k, int d, int dv, A scale, A softcap,
                  int use_softcap, int finite) {
  using W = Bwd<T, A, TM, TN, DMAX>;
  using C = typename W::C;
  constexpr int BM = W::BM, BN = W::BN, MW = W::MW, LDI = W::LDI, LDP = W::LDP, NO = W::NO;
  constexpr int OC = W::OC, OV = W::OV;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const typename W::Smem sm = W::carve(smem_raw);

  const int tid = threadIdx.x, ty = tid >> 4, tx = tid & 15, lane = tid & 31, warp = tid >> 5;
  const int g = blockIdx.x % Hkv, b = blockIdx.y;
  const int group = H / Hkv;
  const int ntiles = (n_k + BM - 1) / BM;
  const int c0 = order[(long long)(PO == 1 ? 0 : g) * ntiles + blockIdx.x / Hkv] * BM;
  const int nrows = min(BM, n_k - c0);
  const long long bhk = (long long)b * Hkv + g;
  const bool sc = use_softcap != 0;

  C::template load_tile<BM>(sm.x0, k + bhk * n_k * d, c0, nrows, d);
  C::template load_tile<BM>(sm.x1, v + bhk * n_k * dv, c0, nrows, dv);
  cp_async_commit();

  A acc_k[TM][NO], acc_v[TM][NO];
#pragma unroll
  for (int i = 0; i < TM; ++i)
#pragma unroll
    for (int c = 0; c < NO; ++c) {
      acc_k[i][c] = (A)0;
      acc_v[i][c] = (A)0;
    }

  for (int hh = 0; hh < group; ++hh) {  // the kv head's query heads, in increasing order
    const int h = g * group + hh;
    const long long bh = (long long)b * H + h;
    const T* qb = q + bh * n_q * d;
    const T* gb = dout + bh * n_q * dv;
    const long long so = bh * n_q;
    const long long* ip = t_indptr + (long long)(P == 1 ? 0 : h) * (n_k + 1) + c0;
    int i0 = W::walk_begin(sm, ip, nrows, t_indices, tid, warp, lane);
    for (int t = 0; i0 != BIG_INDEX; ++t) {
      const unsigned* mask_t = sm.mask + (t & 1) * BM * MW;
      unsigned* mask_n = sm.mask + ((t + 1) & 1) * BM * MW;
      const int i1 = tile_min<BM>(sm.next, lane);
      const int ni = min(BN, n_q - i0);
      C::template load_tile<BN>(sm.y0, qb, i0, ni, d);
      C::template load_tile<BN>(sm.y1, gb, i0, ni, dv);
      cp_async_commit();
      if (tid < BN) {
        const bool ok = tid < ni;
        sm.stat[tid] = ok ? st_m[so + i0 + tid] : (A)0;
        sm.stat[BN + tid] = ok ? st_r[so + i0 + tid] : (A)0;
        sm.stat[2 * BN + tid] = ok ? st_d[so + i0 + tid] : (A)0;
      }
      if (i1 != BIG_INDEX) stage_indices<BM, LDI>(t_indices, sm.idx, sm.ptr, sm.end, warp, lane);
      cp_async_commit();
      cp_async_wait<1>();
      __syncthreads();
      A s[TM][TN], dp[TM][TN];
      W::product_nt(sm.x0, sm.y0, s, ty, tx);
      W::product_nt(sm.x1, sm.y1, dp, ty, tx);
      cp_async_wait<0>();
      __syncwarp();
      if (i1 != BIG_INDEX)
        build_mask<BM, BN>(sm.idx, mask_n, sm.ptr, sm.end, sm.next, i1, warp, lane);
#pragma unroll
      for (int i = 0; i < TM; ++i) {
        const int r = ty + 16 * i;
#pragma unroll
        for (int j = 0; j < TN; ++j) {
          const int c = tx + 16 * j;
          const A mc = sm.stat[c], rc = sm.stat[BN + c], dc = sm.stat[2 * BN + c];
          A f;
          const A x = W::score(s[i][j], scale, softcap, sc, f);
          const bool live = W::bit(mask_t, r, c) && rc != (A)0;
          const A p = num<A>::exp_(x - mc) * rc;
          sm.w0[r * LDP + c] = live ? p : (A)0;
          sm.w1[r * LDP + c] = live ? p * (dp[i][j] - dc) * f : (A)0;
        }
      }
      __syncthreads();
      W::product_acc(sm.w0, sm.y1, mask_t, finite != 0, acc_v, ty, tx);
      W::product_acc(sm.w1, sm.y0, mask_t, finite != 0, acc_k, ty, tx);
      __syncthreads();
      i0 = i1;
    }
  }

#pragma unroll
  for (int i = 0; i < TM; ++i) {
    const int r = ty + 16 * i;
    if (r >= nrows) continue;
    T* rk = dk + (bhk * n_k + c0 + r) * d;
    T* rv = dvout + (bhk * n_k + c0 + r) * dv;
#pragma unroll
    for (int c = 0; c < OC; ++c)
#pragma unroll
      for (int w = 0; w < OV; ++w) {
        const int col = c * 16 * OV + tx * OV + w;
        if (col < d) store_val(rk + col, acc_k[i][c * OV + w] * scale);
        if (col < dv) store_val(rv + col, acc_v[i][c * OV + w]);
      }
  }
}

}  // namespace sparse_ref

#ifdef SPARSE_REF_INSTANTIATE
namespace sparse_ref {
#define SR_BWD(T, A, TM, TN, D)                                                                     \
  template __global__ void csr_backward_dq<T, A, TM, TN, D>(                                       \
      const T*, const T*, const T*, const T*, T*, A*, A*, A*, const long long*, const int*,        \
      const int*, int, int, int, int, int, int, int, A, A, int, int);                              \
  template __global__ void csr_backward_dkdv<T, A, TM, TN, D>(                                     \
      const T*, const T*, const T*, const T*, T*, T*, const A*, const A*, const A*,                \
      const long long*, const int*, const int*, int, int, int, int, int, int, int, int, A, A, int, \
      int);
SR_BWD(float, float, 4, 4, 128)
SR_BWD(float, float, 4, 4, 32)
SR_BWD(float, float, 2, 2, 256)
SR_BWD(float, float, 1, 2, 64)
SR_BWD(float, float, 2, 4, 64)
SR_BWD(float, float, 4, 2, 128)
SR_BWD(double, double, 4, 4, 64)
SR_BWD(double, double, 2, 2, 128)
SR_BWD(double, double, 1, 2, 256)
SR_BWD(f16_t, float, 4, 4, 64)
SR_BWD(bf16_t, float, 4, 4, 128)
}  // namespace sparse_ref
#endif
