// Block-form (BSR) sparse-attention backward on tensor cores, fp16/bf16 (mma.sync.m16n8k16, fp32
// accumulation). FlashAttention-2's backward, with dq and dk/dv in two kernels so that there are
// no atomics:
//
//   bsr_backward_mma_prep: delta_i = sum_c dout_ic out_ic (fp32, fixed order) and lse2_i = lse_i
//       log2(e) (+inf on rows without keys, lse = -inf, so that their p is exactly 0);
//   bsr_backward_mma_dq:   a CTA owns 16*WARPS query rows of one block row (as bsr_forward_mma) and
//       walks its stored blocks in key chunks of 64: S = Q K^T, dP = dO V^T,
//       p = exp2(s log2(e) - lse2) (0 outside the pattern), ds = p (dp - delta) (times 1 - t^2
//       with softcap, t = tanh(scale q.k / softcap)), dq += ds K; dq = scale dq at the end;
//   bsr_backward_mma_dkdv: a CTA owns 16*WARPS keys of one block column of one kv head and walks
//       the transposed block form (the block rows that hold the column) in query chunks of 64, for
//       each query head of the kv head's group in increasing order: S^T = K Q^T, dP^T = V dO^T,
//       p and ds as above (the same expressions on the same dot products), dv += p^T dO,
//       dk += ds^T Q; dk = scale dk at the end.
// s = scale q.k (softcap: softcap tanh(scale q.k / softcap)); p and ds are rounded to the input
// dtype before their products, as P is in the forward. Each warp owns 16 rows (keys) and keeps
// its accumulators in registers; the chunks of the other side are double-buffered in shared
// memory with cp.async. Full blocks skip the mask; partial blocks read their packed mask words
// (the dk/dv kernel reads the transposed masks, (n_partial, bk, ceil(bq/32)) uint32).
//
// Determinism: every output row is written by one warp of one CTA, and every sum runs in a fixed
// order (chunk by chunk, head by head, mma's fixed internal order), so the gradients are bitwise
// identical across runs. Inputs must be finite (the host sends non-finite inputs to the SIMT
// kernels, which skip excluded entries): an entry outside the pattern inside a stored block gets
// p = ds = 0 and is still multiplied in. Requires d, d_v <= D and multiples of 8.
#include "mma_common.cuh"

namespace sparse_ref {

template <typename T> __device__ __forceinline__ float2 unpack2(unsigned x);
template <> __device__ __forceinline__ float2 unpack2<bf16_t>(unsigned x) {
  return make_float2(__uint_as_float(x << 16), __uint_as_float(x & 0xffff0000u));
}
template <> __device__ __forceinline__ float2 unpack2<f16_t>(unsigned x) {
  float lo, hi;
  asm("{ .reg .f16 a, b; mov.b32 {a, b}, %2; cvt.f32.f16 %0, a; cvt.f32.f16 %1, b; }"
      : "=f"(lo), "=f"(hi)
      : "r"(x));
  return make_float2(lo, hi);
}

// One warp per row of (rows, dv): delta and lse2 as described above. dv % 8 == 0.
template <typename T>
__global__ void __launch_bounds__(256)
bsr_backward_mma_prep(const T* __restrict__ out, const T* __restrict__ dout,
                      const float* __restrict__ lse, float* __restrict__ delta,
                      float* __restrict__ lse2, long long rows, int dv) {
  const long long row = (long long)blockIdx.x * 8 + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (row >= rows) return;
  float acc = 0.f;
  for (int c = lane * 8; c < dv; c += 256) {
    const uint4 o = *reinterpret_cast<const uint4*>(out + row * dv + c);
    const uint4 g = *reinterpret_cast<const uint4*>(dout + row * dv + c);
    const unsigned ow[4] = {o.x, o.y, o.z, o.w}, gw[4] = {g.x, g.y, g.z, g.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float2 a = unpack2<T>(ow[i]), b = unpack2<T>(gw[i]);
      acc = fmaf(a.x, b.x, acc);
      acc = fmaf(a.y, b.y, acc);
    }
  }
#pragma unroll
  for (int m = 16; m >= 1; m >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, m);
  if (lane == 0) {
    const float l = lse[row];
    delta[row] = acc;
    lse2[row] = (l == -__int_as_float(0x7f800000)) ? __int_as_float(0x7f800000)
                                                   : l * 1.4426950408889634f;
  }
}

template <int D, int WARPS>
struct BwdMmaCfg {
  // BM own rows (Q, dO or K, V), chunks of BN rows of the other side, double-buffered
  static constexpr int BM = 16 * WARPS, BN = 64, LDS = D + 8, THREADS = 32 * WARPS;
  static constexpr int SMEM_BYTES = (2 * BM + 4 * BN) * LDS * 2 + 4 * BN * 4;
};

// p and ds of one 16 x 64 tile from the scores s (q.k) and dp (dO.v), in place: s <- p, dp <- ds.
// lse2/delta of element e: stat(e, col, lse2, delta); ok(e, col): allowed and in range, not asked
// when FULL (a full block's chunk of 64 in-range keys or queries). SC: with softcap. Both are
// template flags so that the 64 elements form one branch-free block the compiler can interleave.
template <bool FULL, bool SC, int NT, typename Ok, typename Stat>
__device__ __forceinline__ void p_and_ds(float (&s)[NT][4], float (&dp)[NT][4], Ok ok, Stat stat,
                                         float scale, float softcap, int t4) {
  constexpr float LOG2E = 1.4426950408889634f;
  const float sl2 = scale * LOG2E;
#pragma unroll
  for (int nt = 0; nt < NT; ++nt)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int col = nt * 8 + 2 * t4 + (e & 1);
      float l2, dl;
      stat(e, col, l2, dl);
      const float x = s[nt][e];
      float t = 0.f, p;
      if constexpr (SC) {
        t = tanhf(x * scale / softcap);
        p = ex2(softcap * t * LOG2E - l2);
      } else {
        p = ex2(fmaf(x, sl2, -l2));
      }
      if (!FULL && !ok(e, col)) p = 0.f;
      float ds = p * (dp[nt][e] - dl);
      if constexpr (SC) ds *= 1.f - t * t;
      s[nt][e] = p;
      dp[nt][e] = ds;
    }
}

// p_and_ds over chunk ch: without a mask when ch is a full block's whole chunk, else with the
// mask words of rows row and row + 8 of its block (rows of them, words per row).
template <int NT, typename Stat>
__device__ __forceinline__ void chunk_p_and_ds(float (&s)[NT][4], float (&dp)[NT][4], const Chunk& ch,
                                               const unsigned* __restrict__ mbits, int row, int rows,
                                               int words, Stat stat, float scale, float softcap,
                                               bool sc, int t4) {
  if (ch.mi < 0 && ch.nvalid == 8 * NT) {
    const auto all = [](int, int) { return true; };
    if (sc) {
      p_and_ds<true, true, NT>(s, dp, all, stat, scale, softcap, t4);
    } else {
      p_and_ds<true, false, NT>(s, dp, all, stat, scale, softcap, t4);
    }
    return;
  }
  unsigned mw[2][2];
  chunk_mask(mw, mbits, ch.mi, row, rows, words, ch.c);
  const int nv = ch.nvalid;
  const auto ok = [&](int e, int col) {
    return col < nv && ((mw[e >> 1][col >> 5] >> (col & 31)) & 1u);
  };
  if (sc) {
    p_and_ds<false, true, NT>(s, dp, ok, stat, scale, softcap, t4);
  } else {
    p_and_ds<false, false, NT>(s, dp, ok, stat, scale, softcap, t4);
  }
}

template <int N>
__device__ __forceinline__ void zero(float (&c)[N][4]) {
#pragma unroll
  for (int i = 0; i < N; ++i) c[i][0] = c[i][1] = c[i][2] = c[i][3] = 0.f;
}

// Rows [r0 + wrow, +16) of a (rows, ncols) matrix from a warp's 16 x (8 ND) accumulator, times f.
template <typename T, int ND>
__device__ __forceinline__ void store_rows(T* __restrict__ dst, const float (&c)[ND][4], float f,
                                           int nrows, int ncols, int g, int t4) {
#pragma unroll
  for (int hh = 0; hh < 2; ++hh) {
    const int r = g + 8 * hh;
    if (r >= nrows) continue;
#pragma unroll
    for (int nd = 0; nd < ND; ++nd) {
      const int col = nd * 8 + 2 * t4;
      if (col < ncols)
        *reinterpret_cast<unsigned*>(dst + (long long)r * ncols + col) =
            pack2<T>(c[nd][2 * hh] * f, c[nd][2 * hh + 1] * f);
    }
  }
}

template <typename T, int D, int WARPS>
__global__ void __launch_bounds__(32 * WARPS, WARPS <= 4 ? 2 : 1)
bsr_backward_mma_dq(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                    const T* __restrict__ dout, const float* __restrict__ lse2,
                    const float* __restrict__ delta, T* __restrict__ dq,
                    const long long* __restrict__ indptr, const int* __restrict__ bcols,
                    const int* __restrict__ mask_index, const unsigned* __restrict__ mbits,
                    const int* __restrict__ order, int H, int Hkv, int P, int n_q, int n_k, int d,
                    int dv, int bq, int bk, int mwords, int subs, float scale, float softcap,
                    int use_softcap) {
  using Cfg = BwdMmaCfg<D, WARPS>;
  constexpr int BM = Cfg::BM, BN = Cfg::BN, LDS = Cfg::LDS, THREADS = Cfg::THREADS;
  constexpr int NT = BN / 8, ND = D / 8, KS = D / 16;
  static_assert(D % 16 == 0, "D must be a multiple of 16");

  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sQ = reinterpret_cast<T*>(smem_raw);
  T* sG = sQ + BM * LDS;
  T* sK = sG + BM * LDS;
  T* sV = sK + 2 * BN * LDS;

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, t4 = lane & 3;
  const BlockRowTile<BM> tile(order, H, P, n_q, bq, subs);
  if (tile.nrows <= 0) return;
  const int h = tile.head, b = tile.batch, nbq = tile.nb, sub = tile.sub, bi = tile.brow;
  const int r0 = tile.row0, nrows = tile.nrows;
  const HeadPlanes pl(b, h, H, Hkv);
  const long long bh = pl.bh;
  const T* kb = k + pl.bhk * n_k * d;
  const T* vb = v + pl.bhk * n_k * dv;
  ChunkCursor walk(bcols, mask_index, row_offsets(indptr, P, h, nbq, bi), 0, 1, bk, n_k);
  const int total = (int)walk.total();
  const int wrow = warp * 16;

  tile_async<BM, D, THREADS>(sQ, q + bh * n_q * d, r0, nrows, d, tid);
  tile_async<BM, D, THREADS>(sG, dout + bh * n_q * dv, r0, nrows, dv, tid);
  cp_async_commit();
  Chunk next;  // the chunk whose tiles were loaded last
  auto load = [&](int buf) {
    next = load_kv_chunk<BN, D, THREADS>(walk, sK, sV, buf, kb, vb, d, dv, tid);
  };
  if (total > 0) load(0);
  cp_async_commit();

  float l2r[2], dlr[2];  // this thread's rows wrow + g, wrow + g + 8
#pragma unroll
  for (int hh = 0; hh < 2; ++hh) {
    const int r = wrow + g + 8 * hh;
    l2r[hh] = r < nrows ? lse2[bh * n_q + r0 + r] : __int_as_float(0x7f800000);
    dlr[hh] = r < nrows ? delta[bh * n_q + r0 + r] : 0.f;
  }
  const bool sc = use_softcap != 0;
  float acc[ND][4];
  zero(acc);

  for (int t = 0; t < total; ++t) {
    const Chunk ch = next;
    await_step(load, t, total);
    const T* K = sK + (t & 1) * BN * LDS;
    const T* V = sV + (t & 1) * BN * LDS;

    float s[NT][4], dp[NT][4];
    zero(s);
    zero(dp);
    warp_abt<T, LDS, NT, KS>(s, sQ, wrow, K, lane);
    warp_abt<T, LDS, NT, KS>(dp, sG, wrow, V, lane);
    chunk_p_and_ds<NT>(
        s, dp, ch, mbits, sub * BM + wrow + g, bq, mwords,
        [&](int e, int, float& l2, float& dl) {
          l2 = l2r[e >> 1];
          dl = dlr[e >> 1];
        },
        scale, softcap, sc, t4);
    warp_wb<T, LDS, NT, ND>(acc, dp, K, lane);
    __syncthreads();
  }
  store_rows<T, ND>(dq + (bh * n_q + r0 + wrow) * d, acc, scale, nrows - wrow, d, g, t4);
}

// Transposed block form: t_indptr (P, nbk + 1) int64, t_brows (nblocks,) int32 block rows sorted
// within a block column, t_mask_index (nblocks,) int32 (-1 full) into t_mbits (n_partial, bk,
// twords) uint32 (query i of the block is bit i % 32 of word i / 32). order (P == 1 ? 1 : Hkv, nbk)
// int32: each kv head's block columns, heaviest first.
template <typename T, int D, int WARPS>
__global__ void __launch_bounds__(32 * WARPS, WARPS <= 4 ? 2 : 1)
bsr_backward_mma_dkdv(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                      const T* __restrict__ dout, const float* __restrict__ lse2,
                      const float* __restrict__ delta, T* __restrict__ dk, T* __restrict__ dvo,
                      const long long* __restrict__ t_indptr, const int* __restrict__ t_brows,
                      const int* __restrict__ t_mask_index, const unsigned* __restrict__ t_mbits,
                      const int* __restrict__ order, int H, int Hkv, int P, int n_q, int n_k,
                      int d, int dv, int bq, int bk, int twords, int subs, float scale,
                      float softcap, int use_softcap) {
  using Cfg = BwdMmaCfg<D, WARPS>;
  constexpr int BM = Cfg::BM, BN = Cfg::BN, LDS = Cfg::LDS, THREADS = Cfg::THREADS;
  constexpr int NT = BN / 8, ND = D / 8, KS = D / 16;
  const float INF = __int_as_float(0x7f800000);
  static_assert(D % 16 == 0, "D must be a multiple of 16");

  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sK = reinterpret_cast<T*>(smem_raw);
  T* sV = sK + BM * LDS;
  T* sQ = sV + BM * LDS;
  T* sG = sQ + 2 * BN * LDS;
  float* sL = reinterpret_cast<float*>(sG + 2 * BN * LDS);  // [2][BN] lse2, then [2][BN] delta
  float* sD = sL + 2 * BN;

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, t4 = lane & 3;
  const BlockRowTile<BM> tile(order, Hkv, P, n_k, bk, subs);  // keys of a block column
  if (tile.nrows <= 0) return;
  const int hk = tile.head, b = tile.batch, nbk = tile.nb, sub = tile.sub, bj = tile.brow;
  const int k0 = tile.row0, nkeys = tile.nrows;
  const int group = H / Hkv;
  const long long bhk = (long long)b * Hkv + hk;
  const int wrow = warp * 16;
  // the query heads hk*group .. of the group one after the other, a segment of the walk each
  ChunkCursor walk(t_brows, t_mask_index, row_offsets(t_indptr, P, hk * group, nbk, bj),
                   P == 1 ? 0 : nbk + 1, group, bq, n_q);
  const int total = (int)walk.total();

  tile_async<BM, D, THREADS>(sK, k + bhk * n_k * d, k0, nkeys, d, tid);
  tile_async<BM, D, THREADS>(sV, v + bhk * n_k * dv, k0, nkeys, dv, tid);
  cp_async_commit();
  Chunk next;  // the chunk whose tiles were loaded last
  auto load = [&](int buf) {
    next = walk.next();
    const int nq = next.nvalid;
    const long long c0 = next.c0, bh = (long long)b * H + hk * group + next.seg;
    tile_async<BN, D, THREADS>(sQ + buf * BN * LDS, q + bh * n_q * d, c0, nq, d, tid);
    tile_async<BN, D, THREADS>(sG + buf * BN * LDS, dout + bh * n_q * dv, c0, nq, dv, tid);
    for (int i = tid; i < BN; i += THREADS) {  // asynchronous too: no global round trip here
      if (i < nq) {
        cp_async4(sL + buf * BN + i, lse2 + bh * n_q + c0 + i);
        cp_async4(sD + buf * BN + i, delta + bh * n_q + c0 + i);
      } else {
        sL[buf * BN + i] = INF;
        sD[buf * BN + i] = 0.f;
      }
    }
  };
  if (total > 0) load(0);
  cp_async_commit();

  const bool sc = use_softcap != 0;
  float adk[ND][4], adv[ND][4];
  zero(adk);
  zero(adv);

  for (int u = 0; u < total; ++u) {
    const Chunk ch = next;
    await_step(load, u, total);
    const int buf = u & 1;
    const T* Q = sQ + buf * BN * LDS;
    const T* G = sG + buf * BN * LDS;
    const float* L = sL + buf * BN;
    const float* DL = sD + buf * BN;

    float s[NT][4], dp[NT][4];
    zero(s);
    zero(dp);
    warp_abt<T, LDS, NT, KS>(s, sK, wrow, Q, lane);   // S^T = K Q^T
    warp_abt<T, LDS, NT, KS>(dp, sV, wrow, G, lane);  // dP^T = V dO^T
    chunk_p_and_ds<NT>(
        s, dp, ch, t_mbits, sub * BM + wrow + g, bk, twords,
        [&](int, int col, float& l2, float& dl) {
          l2 = L[col];
          dl = DL[col];
        },
        scale, softcap, sc, t4);
    warp_wb<T, LDS, NT, ND>(adv, s, G, lane);   // dV += P^T dO
    warp_wb<T, LDS, NT, ND>(adk, dp, Q, lane);  // dK += dS^T Q
    __syncthreads();
  }
  const int nk_w = nkeys - wrow;
  store_rows<T, ND>(dk + (bhk * n_k + k0 + wrow) * d, adk, scale, nk_w, d, g, t4);
  store_rows<T, ND>(dvo + (bhk * n_k + k0 + wrow) * dv, adv, 1.f, nk_w, dv, g, t4);
}

}  // namespace sparse_ref

#ifdef SPARSE_REF_INSTANTIATE
namespace sparse_ref {
#define SR_BWD_MMA(T, D, W)                                                                        \
  template __global__ void bsr_backward_mma_dq<T, D, W>(                                          \
      const T*, const T*, const T*, const T*, const float*, const float*, T*, const long long*,   \
      const int*, const int*, const unsigned*, const int*, int, int, int, int, int, int, int, int, \
      int, int, int, float, float, int);                                                          \
  template __global__ void bsr_backward_mma_dkdv<T, D, W>(                                        \
      const T*, const T*, const T*, const T*, const float*, const float*, T*, T*,                 \
      const long long*, const int*, const int*, const unsigned*, const int*, int, int, int, int,  \
      int, int, int, int, int, int, int, float, float, int);
SR_BWD_MMA(bf16_t, 128, 4)
SR_BWD_MMA(bf16_t, 128, 8)
SR_BWD_MMA(f16_t, 64, 4)
SR_BWD_MMA(bf16_t, 32, 4)
template __global__ void bsr_backward_mma_prep<bf16_t>(const bf16_t*, const bf16_t*, const float*,
                                                       float*, float*, long long, int);
template __global__ void bsr_backward_mma_prep<f16_t>(const f16_t*, const f16_t*, const float*,
                                                      float*, float*, long long, int);
}  // namespace sparse_ref
#endif
