// BSR (block-sparse) sparse-attention forward.
//
// Pattern block form: block (bq, bk); indptr (P, nbq + 1) int64 absolute offsets into the stored
// blocks; bcols (nblocks,) int32 block columns, sorted within a block row; mask_index (nblocks,)
// int32, -1 for a full block (every in-range entry allowed), else the index of the block's mask in
// mbits (n_partial, bq, mwords) uint32, the (bq, bk) bool masks packed 32 keys per word, bit j%32 of
// word j/32 (bits past bk zero). n_q and n_k need not be multiples of the block: entries past them
// are never allowed. Semantics as csr_forward.cu (DESIGN §2).
//
// Two kernels:
//  * bsr_forward_simt<T, A, TM, TN, DMAX>: the SIMT core of simt_core.cuh walking the stored blocks
//    of a block row in key tiles of BN = 16*TN (fp64, fp32; fp16/bf16 computed in fp32).
//  * bsr_forward_mma<T, D, WARPS>: fp16/bf16 on tensor cores, mma.sync.m16n8k16 with fp32
//    accumulation, FlashAttention-2 style. A CTA of WARPS warps owns 16*WARPS query rows of one block
//    row (several CTAs when bq is larger); each warp owns 16 rows and keeps its Q fragments and its
//    16 x D output accumulator in registers. Key chunks of 64 keys (a stored block is 1 or more
//    chunks) are double-buffered in shared memory with cp.async; full blocks skip the mask, partial
//    blocks read their packed mask words. Requires d, d_v <= D and d, d_v multiples of 8.
// Both are deterministic: fixed reduction order, no atomics.
#include "simt_core.cuh"
#include "block_walk.cuh"
#include "mma_common.cuh"

namespace sparse_ref {

template <typename T, typename A, int TM, int TN, int DMAX, bool SPLIT>
__global__ void __launch_bounds__(256, SPLIT ? 1 : 2)
bsr_forward_simt(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                 T* __restrict__ out, A* __restrict__ lse, const long long* __restrict__ indptr,
                 const int* __restrict__ bcols, const int* __restrict__ mask_index,
                 const unsigned* __restrict__ mbits, const int* __restrict__ order, int H, int Hkv,
                 int P, int n_q, int n_k, int d, int dv, int bq, int bk, int mwords, int subs,
                 A scale, A softcap, int use_softcap, int v_finite) {
  using C = Simt<T, A, TM, TN, DMAX, SPLIT>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const typename C::Smem sm = C::carve(smem_raw);

  const int tid = threadIdx.x, ty = tid >> 4, tx = tid & 15;
  const BlockRowTile<C::BM> tile(order, H, P, n_q, bq, subs);
  if (tile.nrows <= 0) return;
  const int h = tile.head, b = tile.batch, nbq = tile.nb, sub = tile.sub, bi = tile.brow;
  const int r0 = tile.row0, nrows = tile.nrows;
  const int hk = h / (H / Hkv);
  const long long bh = (long long)b * H + h, bhk = (long long)b * Hkv + hk;
  const T* kb = k + bhk * n_k * d;
  const T* vb = v + bhk * n_k * dv;
  const long long* ip = indptr + (long long)(P == 1 ? 0 : h) * (nbq + 1) + bi;
  const long long kb0 = ip[0], kb1 = ip[1];
  const int cpb = (bk + C::BN - 1) / C::BN;  // key tiles per stored block

  C::template load_tile<C::BM>(sm.q, q + bh * n_q * d, r0, nrows, d);
  cp_async_commit();

  A m[TM], l[TM], o[TM][C::NO];
#pragma unroll
  for (int i = 0; i < TM; ++i) {
    m[i] = -num<A>::inf();
    l[i] = (A)0;
#pragma unroll
    for (int c = 0; c < C::NO; ++c) o[i][c] = (A)0;
  }
  const bool sc = use_softcap != 0;

  for (long long t = 0; t < (kb1 - kb0) * cpb; ++t) {
    const long long kbi = kb0 + t / cpb;
    const int c = (int)(t % cpb);
    const int mi = mask_index[kbi];
    const long long kstart = (long long)bcols[kbi] * bk;
    const long long c0 = kstart + (long long)c * C::BN;
    const long long kend = min(kstart + bk, (long long)n_k);
    const int nk = (int)min((long long)C::BN, kend - c0);
    if (nk <= 0) continue;  // ragged last block column; uniform over the CTA
    C::template load_tile<C::BN>(sm.k, kb, c0, nk, d);
    cp_async_commit();
    if (SPLIT) C::template load_tile<C::BN>(sm.v, vb, c0, nk, dv);
    cp_async_commit();
    block_tile_mask<C::BM, C::BN, C::THREADS>(sm.mask, mbits, mi, c, nk, sub * C::BM, nrows, bq,
                                              mwords);
    cp_async_wait<1>();  // K (and Q)
    __syncthreads();
    A s[TM][TN];
    C::scores(sm, s, ty, tx);
    if (!SPLIT) {
      __syncthreads();  // the K buffer takes V
      C::template load_tile<C::BN>(sm.v, vb, c0, nk, dv);
      cp_async_commit();
    }
    C::softmax(sm, sm.mask, s, m, l, o, ty, tx, scale, softcap, sc);
    cp_async_wait<0>();
    __syncthreads();
    if (v_finite)
      C::template pv<true>(sm, sm.mask, o, ty, tx);
    else
      C::template pv<false>(sm, sm.mask, o, ty, tx);
    __syncthreads();
  }
  C::finalize(o, m, l, out + (bh * n_q + r0) * dv, lse + bh * n_q + r0, nrows, dv, ty, tx);
}

// ------------------------------------------------------------------ tensor-core path (f16 / bf16)
template <int D, int WARPS, int MT>
struct MmaCfg {
  static constexpr int BM = 16 * MT * WARPS, BN = 64, LDS = D + 8, THREADS = 32 * WARPS;
  static constexpr int SMEM_BYTES = (BM + 4 * BN) * LDS * 2;
};

// MT: 16-row m-tiles per warp. MT = 1 keeps the warp's Q fragments in registers; MT = 2 reloads
// them from shared memory per chunk but shares every K and V fragment between two m-tiles, halving
// the ldmatrix traffic per mma (FlashAttention-2's layout for d = 128).
template <typename T, int D, int WARPS, int MT>
__global__ void __launch_bounds__(32 * WARPS, (WARPS * MT <= 4) ? 2 : 1)
bsr_forward_mma(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                T* __restrict__ out, float* __restrict__ lse, const long long* __restrict__ indptr,
                const int* __restrict__ bcols, const int* __restrict__ mask_index,
                const unsigned* __restrict__ mbits, const int* __restrict__ order, int H, int Hkv,
                int P, int n_q, int n_k, int d, int dv, int bq, int bk, int mwords, int subs,
                float scale, float softcap, int use_softcap) {
  using Cfg = MmaCfg<D, WARPS, MT>;
  constexpr int BM = Cfg::BM, BN = Cfg::BN, LDS = Cfg::LDS, THREADS = Cfg::THREADS;
  constexpr int NT = BN / 8, ND = D / 8, KS = D / 16;
  constexpr float LOG2E = 1.4426950408889634f, LN2 = 0.6931471805599453f;
  const float INF = __int_as_float(0x7f800000);
  static_assert(D % 16 == 0, "D must be a multiple of 16");
  static_assert(MT == 1 || MT == 2, "MT must be 1 or 2");

  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sQ = reinterpret_cast<T*>(smem_raw);
  T* sK = sQ + BM * LDS;
  T* sV = sK + 2 * BN * LDS;

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, t4 = lane & 3;
  const BlockRowTile<BM> tile(order, H, P, n_q, bq, subs);
  if (tile.nrows <= 0) return;
  const int h = tile.head, b = tile.batch, nbq = tile.nb, sub = tile.sub, bi = tile.brow;
  const int r0 = tile.row0, nrows = tile.nrows;
  const int hk = h / (H / Hkv);
  const long long bh = (long long)b * H + h, bhk = (long long)b * Hkv + hk;
  const T* qb = q + bh * n_q * d;
  const T* kb = k + bhk * n_k * d;
  const T* vb = v + bhk * n_k * dv;
  const long long* ip = indptr + (long long)(P == 1 ? 0 : h) * (nbq + 1) + bi;
  ChunkCursor walk(bcols, mask_index, ip, 0, 1, bk, n_k);
  const int total = (int)walk.total();
  const int wrow = warp * 16 * MT;  // first row of this warp within the CTA

  tile_async<BM, D, THREADS>(sQ, qb, r0, nrows, d, tid);
  cp_async_commit();

  Chunk next;  // the chunk whose tiles were loaded last
  auto load = [&](int buf) {
    next = load_kv_chunk<BN, D, THREADS>(walk, sK, sV, buf, kb, vb, d, dv, tid);
  };
  if (total > 0) load(0);
  cp_async_commit();
  cp_async_wait<0>();
  __syncthreads();

  unsigned qf[MT == 1 ? KS : 1][4];  // MT == 1: the warp's Q fragments stay in registers
  if constexpr (MT == 1) {
#pragma unroll
    for (int ks = 0; ks < KS; ++ks) frag_a<LDS>(qf[ks], sQ, wrow, ks, lane);
  }

  float o[MT][ND][4];
  float m2[MT][2], l[MT][2];  // running max in log2 units, partial sums
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int nd = 0; nd < ND; ++nd) o[mt][nd][0] = o[mt][nd][1] = o[mt][nd][2] = o[mt][nd][3] = 0.f;
    m2[mt][0] = m2[mt][1] = -INF;
    l[mt][0] = l[mt][1] = 0.f;
  }
  // Scores enter the softmax as s * mul in log2 units. With a positive scale and no softcap, s is
  // the raw q.k and mul = scale log2(e), so the row max is taken before scaling and each weight is
  // one fma and one ex2: p = 2^(s mul - m). Otherwise s is transformed in place first
  // (softcap tanh(scale s / softcap) log2(e), or s scale log2(e)) and mul = 1.
  const float sl2 = scale * LOG2E;
  const bool sc = use_softcap != 0, pre = sc || !(sl2 > 0.f);
  const float mul = pre ? 1.f : sl2;

  for (int t = 0; t < total; ++t) {
    const Chunk ch = next;
    await_step(load, t, total);
    const T* K = sK + (t & 1) * BN * LDS;
    const T* V = sV + (t & 1) * BN * LDS;

    float s[MT][NT][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) s[mt][nt][0] = s[mt][nt][1] = s[mt][nt][2] = s[mt][nt][3] = 0.f;
#pragma unroll
    for (int ks = 0; ks < KS; ++ks) {
      unsigned a[MT][4];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        if constexpr (MT == 1) {
          a[mt][0] = qf[ks][0];
          a[mt][1] = qf[ks][1];
          a[mt][2] = qf[ks][2];
          a[mt][3] = qf[ks][3];
        } else {
          frag_a<LDS>(a[mt], sQ, wrow + 16 * mt, ks, lane);
        }
      }
#pragma unroll
      for (int np = 0; np < NT / 2; ++np) {
        unsigned bf[4];
        frag_bt<LDS>(bf, K, np, ks, lane);
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          MmaOp<T>::run(s[mt][2 * np], a[mt], bf[0], bf[1]);
          MmaOp<T>::run(s[mt][2 * np + 1], a[mt], bf[2], bf[3]);
        }
      }
    }

    if (pre) {
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const float x = s[mt][nt][e];
            s[mt][nt][e] = sc ? softcap * tanhf(x * scale / softcap) * LOG2E : x * sl2;
          }
    }
    if (ch.mi >= 0 || ch.nvalid < BN) {  // a partial block or a chunk past n: mask (uniform)
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        unsigned mw[2][2];
        chunk_mask(mw, mbits, ch.mi, sub * BM + wrow + 16 * mt + g, bq, mwords, ch.c);
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int col = nt * 8 + 2 * t4 + (e & 1);
            const bool ok = col < ch.nvalid && ((mw[e >> 1][nt >> 2] >> (col & 31)) & 1u);
            if (!ok) s[mt][nt][e] = -INF;
          }
      }
    }

    float alpha[MT][2];  // rescale factors of the running sums
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
      for (int hh = 0; hh < 2; ++hh) {
        float mx = -INF;
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
          mx = fmaxf(mx, fmaxf(s[mt][nt][2 * hh], s[mt][nt][2 * hh + 1]));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        const float mnew = fmaxf(m2[mt][hh], mx * mul);
        const float mu = (mnew == -INF) ? 0.f : mnew;
        alpha[mt][hh] = ex2(m2[mt][hh] - mu);
        m2[mt][hh] = mnew;
        float rs = 0.f;
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
          const float p0 = ex2(fmaf(s[mt][nt][2 * hh], mul, -mu));
          const float p1 = ex2(fmaf(s[mt][nt][2 * hh + 1], mul, -mu));
          s[mt][nt][2 * hh] = p0;
          s[mt][nt][2 * hh + 1] = p1;
          rs += p0 + p1;
        }
        l[mt][hh] = l[mt][hh] * alpha[mt][hh] + rs;
      }
    }
    // Rescale the accumulators only where a row max moved (alpha == 1 leaves them bitwise as
    // they are): past the first chunks of a long row this skips 4 MT ND multiplies per step.
    bool moved = false;
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) moved |= (alpha[mt][0] != 1.f) | (alpha[mt][1] != 1.f);
    if (__any_sync(0xffffffffu, moved)) {
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int nd = 0; nd < ND; ++nd)
#pragma unroll
          for (int e = 0; e < 4; ++e) o[mt][nd][e] *= alpha[mt][e >> 1];
    }

#pragma unroll
    for (int ks = 0; ks < BN / 16; ++ks) {
      unsigned a[MT][4];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) c_to_a<T, NT>(a[mt], s[mt], ks);
#pragma unroll
      for (int np = 0; np < ND / 2; ++np) {
        unsigned bf[4];
        frag_b<LDS>(bf, V, np, ks, lane);
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          MmaOp<T>::run(o[mt][2 * np], a[mt], bf[0], bf[1]);
          MmaOp<T>::run(o[mt][2 * np + 1], a[mt], bf[2], bf[3]);
        }
      }
    }
    __syncthreads();
  }

#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int hh = 0; hh < 2; ++hh) {
      float lt = l[mt][hh];
      lt += __shfl_xor_sync(0xffffffffu, lt, 1);
      lt += __shfl_xor_sync(0xffffffffu, lt, 2);
      const int r = wrow + 16 * mt + g + 8 * hh;
      if (r >= nrows) continue;
      const long long row = bh * n_q + r0 + r;
      const bool empty = (lt == 0.f);
      T* orow = out + row * dv;
#pragma unroll
      for (int nd = 0; nd < ND; ++nd) {
        const int col = nd * 8 + 2 * t4;
        if (col < dv) {
          const float a0 = empty ? 0.f : o[mt][nd][2 * hh] / lt;
          const float a1 = empty ? 0.f : o[mt][nd][2 * hh + 1] / lt;
          *reinterpret_cast<unsigned*>(orow + col) = pack2<T>(a0, a1);
        }
      }
      if (t4 == 0) lse[row] = empty ? -INF : m2[mt][hh] * LN2 + logf(lt);
    }
}

}  // namespace sparse_ref

#ifdef SPARSE_REF_INSTANTIATE
namespace sparse_ref {
#define SR_BSR(T, A, TM, TN, D, S)                                                                 \
  template __global__ void bsr_forward_simt<T, A, TM, TN, D, S>(                                  \
      const T*, const T*, const T*, T*, A*, const long long*, const int*, const int*,             \
      const unsigned*, const int*, int, int, int, int, int, int, int, int, int, int, int, A, A, int, \
      int);
SR_BSR(float, float, 4, 4, 128, false)
SR_BSR(float, float, 8, 4, 128, true)
SR_BSR(double, double, 2, 2, 64, false)
SR_BSR(bf16_t, float, 4, 4, 128, false)
#define SR_MMA(T, D, W, MT)                                                                        \
  template __global__ void bsr_forward_mma<T, D, W, MT>(                                          \
      const T*, const T*, const T*, T*, float*, const long long*, const int*, const int*,         \
      const unsigned*, const int*, int, int, int, int, int, int, int, int, int, int, int, float,  \
      float, int);
SR_MMA(bf16_t, 128, 8, 1)
SR_MMA(bf16_t, 128, 4, 1)
SR_MMA(bf16_t, 128, 4, 2)
SR_MMA(f16_t, 64, 4, 1)
SR_MMA(f16_t, 96, 4, 2)
SR_MMA(bf16_t, 32, 4, 1)
}  // namespace sparse_ref
#endif
