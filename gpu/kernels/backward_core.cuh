// The SIMT backward's math, shared by the token-CSR backward (csr_backward.cu) and the block-form
// backward (bsr_backward_simt.cu): fp64; fp32; fp16/bf16 computed in fp32. No atomics.
//
// Semantics (as sparse_ref/kernels/csr_backward.py, the CPU kernel):
//   s_ij  = scale * q_i . k_j            (softcap: t_ij = tanh(s_ij / softcap), s_ij = softcap t_ij)
//   p_ij  = exp(s_ij - m_i) * r_i        (m_i = max_j s_ij, r_i = 1 / sum_j exp(s_ij - m_i))
//   dp_ij = dout_i . v_j
//   delta_i = r_i * sum_j exp(s_ij - m_i) dp_ij          (= sum_j p_ij dp_ij, re-derived here)
//   ds_ij = p_ij (dp_ij - delta_i)       (times 1 - t_ij^2 with softcap)
//   dq_i  = scale * sum_j ds_ij k_j                       (backward_dq_rows, over the pattern's rows)
//   dk_j  = scale * sum_i ds_ij q_i,  dv_j = sum_i p_ij dout_i   (backward_dkdv_rows, its transpose)
// with j over the allowed keys of row i only. m, r and delta come from the row's own scores, not
// from the forward's out/lse (see the CPU kernel's module doc for why).
//
// backward_dq_rows: a CTA owns BM = 16*TM query rows and walks their keys in tiles of BN = 16*TN
// columns, twice:
//   pass 1: S = Q K^T and dP = dO V^T per tile; online row max m, sum l and sum of e * dp (both
//           rescaled whenever m grows); at the end r = 1/l and delta = r * sum(e * dp); m, r and
//           delta of every row are written to `stats` for the dk/dv pass;
//   pass 2: S and dP again, p and ds in shared memory, dq += ds K.
// backward_dkdv_rows: a CTA owns BM keys of one kv head and walks the *transposed* pattern (the
// queries of each key) in tiles of BN queries, for each query head of the kv head's group in
// increasing order: S^T = K Q^T and dP^T = V dO^T, p and ds from the stored m, r, delta (bitwise
// the same p and ds as the dq pass: same dot products, same expressions), dv += p dO, dk += ds Q.
// Five plus four tile products per tile, against the four that 8 nnz d counts.
//
// The walk over a tile of rows is a policy (`Walk`), so one body serves every pattern form:
//   int  begin(sm, h)   every thread: start head h's walk; bitmap of the first tile in mask
//                       buffer 0; returns its first column (BIG_INDEX: no tile). Ends with a barrier.
//   int  next(sm)       first column of the following tile (BIG_INDEX: none); no barrier.
//   int  width(j0)      valid columns of the current tile (starting at j0), <= BN.
//   void stage(sm, j1)  issue async copies the next bitmap needs (the caller commits them).
//   void build(sm, mask, j1)  after cp_async_wait<0> and __syncwarp: the next tile's bitmap.
//   void step()         the current tile is done.
// csr_backward.cu walks token CSR rows in windows (csr_walk.cuh); bsr_backward_simt.cu walks the
// stored blocks of a block row (or, transposed, of a block column).
//
// Determinism: every output row is written by one CTA, every sum runs in a fixed order (tile by
// tile, head by head, the head dimension in order, fixed shuffle trees), so results are bitwise
// identical across runs.
//
// Special values: a row with no allowed keys (or only -inf scores) gets dq = 0 and weights 0 in
// the dk/dv pass. A NaN score makes its row's gradients (dq_i, and dk_j/dv_j of its keys) NaN: the
// max ignores NaN, e = exp(NaN) poisons l. An entry outside the pattern never enters a sum: its
// weights are set to exactly 0, and when `finite` is 0 (some input not finite) the accumulations
// also skip it by its bitmap bit, so 0 * inf cannot leak (as the SIMT forward does for non-finite
// v). A row without gradient (1/l stored as 0) that holds inf/NaN in q or dout would still meet its
// weight 0 in the dk/dv pass: the host zeroes such rows in copies of q and dout before launching it.
#pragma once
#include "simt_core.cuh"

namespace sparse_ref {

template <typename T, typename A, int TM, int TN, int DMAX>
struct Bwd {
  using C = Simt<T, A, TM, TN, DMAX, false>;
  static constexpr int BM = C::BM, BN = C::BN, LD = C::LD, LDP = C::LDP, MW = C::MW;
  static constexpr int LDI = C::LDI, NO = C::NO, OC = C::OC, OV = C::OV;
  // x0, x1: BM rows (the CTA's own: Q, dO for dq; K, V for dk/dv); y0, y1: BN rows of the tile
  // (K, V; Q, dO); w0, w1: BM x BN weights (ds; p, ds); stat: m, r, delta of BN queries; mask, ptr,
  // end, idx, next: the walk's bitmaps and state (the CSR walk uses all, the block walk the masks).
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

// One walk over the tiles of `walk` (from walk.begin(sm, h)), the loop both backward kernels run
// (the dq kernel twice): per tile, the BN rows at the tile's first index of y0 (K, or Q) and y1
// (V, or dO) go to sm.y0 / sm.y1 (d and dv columns), stage(j0, nk) stages whatever else the tile
// needs (nk valid rows), then this thread's S = x0 y0^T and dP = x1 y1^T, the next tile's bitmap is
// built, and body(mask, s, dp) consumes the tile with `mask` its bitmap; a barrier follows.
template <typename T, typename A, int TM, int TN, int DMAX, typename Walk, typename Stage,
          typename Body>
__device__ __forceinline__ void walk_tiles(const typename Bwd<T, A, TM, TN, DMAX>::Smem& sm,
                                           Walk& walk, int h, const T* y0, const T* y1, int d,
                                           int dv, Stage&& stage, Body&& body) {
  using W = Bwd<T, A, TM, TN, DMAX>;
  using C = typename W::C;
  constexpr int BM = W::BM, BN = W::BN, MW = W::MW;
  const int tid = threadIdx.x, ty = tid >> 4, tx = tid & 15;
  int j0 = walk.begin(sm, h);
  for (int t = 0; j0 != BIG_INDEX; ++t) {
    const unsigned* mask_t = sm.mask + (t & 1) * BM * MW;
    unsigned* mask_n = sm.mask + ((t + 1) & 1) * BM * MW;
    const int j1 = walk.next(sm);
    const int nk = walk.width(j0);
    C::template load_tile<BN>(sm.y0, y0, j0, nk, d);
    C::template load_tile<BN>(sm.y1, y1, j0, nk, dv);
    cp_async_commit();
    stage(j0, nk);
    walk.stage(sm, j1);
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    A s[TM][TN], dp[TM][TN];
    W::product_nt(sm.x0, sm.y0, s, ty, tx);
    W::product_nt(sm.x1, sm.y1, dp, ty, tx);
    cp_async_wait<0>();
    __syncwarp();
    walk.build(sm, mask_n, j1);
    body(mask_t, s, dp);
    __syncthreads();
    walk.step();
    j0 = j1;
  }
}

// dq (and each row's m, r, delta) of query rows [r0, r0 + nrows) of head h: qb, gb (q, dout) and
// dqb point at head (b, h), kb, vb at its kv head, st_* at the head's statistics (n_q rows).
template <typename T, typename A, int TM, int TN, int DMAX, typename Walk>
__device__ __forceinline__ void backward_dq_rows(
    const typename Bwd<T, A, TM, TN, DMAX>::Smem& sm, Walk& walk, int h, const T* qb, const T* gb,
    const T* kb, const T* vb, T* dqb, A* st_m, A* st_r, A* st_d, int r0, int nrows, int d, int dv,
    A scale, A softcap, bool sc, bool finite) {
  using W = Bwd<T, A, TM, TN, DMAX>;
  using C = typename W::C;
  constexpr int BM = W::BM, LDP = W::LDP, NO = W::NO;
  constexpr int OC = W::OC, OV = W::OV;
  const int tid = threadIdx.x, ty = tid >> 4, tx = tid & 15;
  const A NEG = -num<A>::inf();

  C::template load_tile<BM>(sm.x0, qb, r0, nrows, d);
  C::template load_tile<BM>(sm.x1, gb, r0, nrows, dv);
  cp_async_commit();

  // ---- pass 1: row max m, partial sums l = sum e and dl = sum e * dp (this thread's columns)
  A m[TM], l[TM], dl[TM];
#pragma unroll
  for (int i = 0; i < TM; ++i) {
    m[i] = NEG;
    l[i] = (A)0;
    dl[i] = (A)0;
  }
  const auto no_stage = [](int, int) {};
  walk_tiles<T, A, TM, TN, DMAX>(
      sm, walk, h, kb, vb, d, dv, no_stage, [&](const unsigned* mask_t, auto& s, auto& dp) {
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
  });

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
      const long long o = r0 + r;
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
  walk_tiles<T, A, TM, TN, DMAX>(
      sm, walk, h, kb, vb, d, dv, no_stage, [&](const unsigned* mask_t, auto& s, auto& dp) {
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
    W::product_acc(sm.w0, sm.y0, mask_t, finite, acc, ty, tx);
  });

#pragma unroll
  for (int i = 0; i < TM; ++i) {
    const int r = ty + 16 * i;
    if (r >= nrows) continue;
    const bool dead = rrow[i] == (A)0;
    T* row = dqb + (long long)(r0 + r) * d;
#pragma unroll
    for (int c = 0; c < OC; ++c)
#pragma unroll
      for (int w = 0; w < OV; ++w) {
        const int col = c * 16 * OV + tx * OV + w;
        if (col < d) store_val(row + col, dead ? (A)0 : acc[i][c * OV + w] * scale);
      }
  }
}

// dk, dv of keys [c0, c0 + nrows) of kv head g (batch b): walks, for each query head of the group
// in increasing order, that head's transposed pattern. q, dout, st_* are the whole arrays; kb, vb,
// dkb, dvb point at the kv head (b, g).
template <typename T, typename A, int TM, int TN, int DMAX, typename Walk>
__device__ __forceinline__ void backward_dkdv_rows(
    const typename Bwd<T, A, TM, TN, DMAX>::Smem& sm, Walk& walk, const T* q, const T* dout,
    const T* kb, const T* vb, T* dkb, T* dvb, const A* st_m, const A* st_r, const A* st_d, int b,
    int H, int g, int group, int n_q, int c0, int nrows, int d, int dv, A scale, A softcap, bool sc,
    bool finite) {
  using W = Bwd<T, A, TM, TN, DMAX>;
  using C = typename W::C;
  constexpr int BM = W::BM, BN = W::BN, LDP = W::LDP, NO = W::NO;
  constexpr int OC = W::OC, OV = W::OV;
  const int tid = threadIdx.x, ty = tid >> 4, tx = tid & 15;

  C::template load_tile<BM>(sm.x0, kb, c0, nrows, d);
  C::template load_tile<BM>(sm.x1, vb, c0, nrows, dv);
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
    const auto stage_stats = [&](int i0, int ni) {  // the tile's query rows' m, r, delta
      if (tid < BN) {
        const bool ok = tid < ni;
        sm.stat[tid] = ok ? st_m[so + i0 + tid] : (A)0;
        sm.stat[BN + tid] = ok ? st_r[so + i0 + tid] : (A)0;
        sm.stat[2 * BN + tid] = ok ? st_d[so + i0 + tid] : (A)0;
      }
    };
    walk_tiles<T, A, TM, TN, DMAX>(
        sm, walk, h, qb, gb, d, dv, stage_stats, [&](const unsigned* mask_t, auto& s, auto& dp) {
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
      W::product_acc(sm.w0, sm.y1, mask_t, finite, acc_v, ty, tx);
      W::product_acc(sm.w1, sm.y0, mask_t, finite, acc_k, ty, tx);
    });
  }

#pragma unroll
  for (int i = 0; i < TM; ++i) {
    const int r = ty + 16 * i;
    if (r >= nrows) continue;
    T* rk = dkb + (long long)(c0 + r) * d;
    T* rv = dvb + (long long)(c0 + r) * dv;
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
