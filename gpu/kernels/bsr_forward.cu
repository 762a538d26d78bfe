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
#include "fragment_softmax.cuh"

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
  const HeadPlanes pl(b, h, H, Hkv);
  const long long bh = pl.bh;
  const T* kb = k + pl.bhk * n_k * d;
  const T* vb = v + pl.bhk * n_k * dv;
  const long long* ip = row_offsets(indptr, P, h, nbq, bi);
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
  const HeadPlanes pl(b, h, H, Hkv);
  const long long bh = pl.bh;
  const T* qb = q + bh * n_q * d;
  const T* kb = k + pl.bhk * n_k * d;
  const T* vb = v + pl.bhk * n_k * dv;
  ChunkCursor walk(bcols, mask_index, row_offsets(indptr, P, h, nbq, bi), 0, 1, bk, n_k);
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
  start_rows(o, m2, l);
  const ScoreScale ss(scale, softcap, use_softcap);

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

    float alpha[MT][2];
    chunk_weights(s, ch, ss, mbits, sub * BM + wrow + g, bq, mwords, t4, m2, l, alpha);
    rescale_rows(o, alpha);

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

  store_rows<T>(o, m2, l, out, lse, bh, n_q, r0, nrows, wrow, dv, g, t4);
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
