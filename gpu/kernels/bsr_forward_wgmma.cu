// BSR (block-sparse) sparse-attention forward on Hopper's warpgroup tensor cores (sm_90a only).
//
// Pattern block form and semantics as bsr_forward.cu. bsr_forward_wgmma<T, WG, STAGES, BN>:
// fp16/bf16, head dims d, d_v <= 128 and multiples of 8, fp32 accumulation. A CTA of WG
// warpgroups (128 threads each) owns 64 WG query rows of one block row (several CTAs when bq is
// larger); warpgroup w owns rows 64 w .. 64 w + 63 and keeps its 64 x 128 output accumulator in
// registers. Q stays in shared memory for the whole walk; key chunks of BN = 64 or 128 (a stored
// block is 1 or more chunks) go through STAGES shared-memory buffers, loaded with cp.async, all
// tiles in wgmma's 128-byte swizzled layout (wgmma_common.cuh). Per chunk and warpgroup: S = Q K^T
// is eight wgmma.m64nBNk16 reading both operands from shared memory; the online softmax
// (fragment_softmax.cuh) turns S into P in registers; O += P V is BN / 16 wgmma.m64n128k16 with P
// from registers and V from shared memory. Full blocks skip the mask, partial blocks read their
// packed mask words. Deterministic: fixed reduction order, no atomics.
#include "wgmma_common.cuh"
#include "fragment_softmax.cuh"

namespace sparse_ref {

template <int WG, int STAGES, int BN_>
struct WgmmaCfg {
  static constexpr int BM = 64 * WG, BN = BN_, D = 128, THREADS = 128 * WG;
  static constexpr int Q_BYTES = BM * D * 2, KV_BYTES = BN * D * 2;  // one tile, swizzled
  // Q, STAGES K and V buffers, and 1 KiB to align the tiles to the swizzle's 1024 bytes, which
  // also holds the mbarriers
  static constexpr int SMEM_BYTES = Q_BYTES + 2 * STAGES * KV_BYTES + 1024;
};

// S[64 x 8 NT] = Q K^T for a warpgroup: its 64 rows of Q at q_rows, an 8 NT-key K tile at K (both
// swizzled, K-major, 8-row groups 1024 bytes apart); eight k-steps of 16 columns, one group.
template <typename T, int NT, int Q_PANEL, int KV_PANEL>
__device__ __forceinline__ void issue_scores(float (&s)[NT][4], unsigned q_rows, unsigned K) {
  wgmma_fence();
#pragma unroll
  for (int ks = 0; ks < 8; ++ks) {
    const unsigned col = (unsigned)(ks >> 2), step = (unsigned)(ks & 3) * 32;
    Wgmma<T>::ss(s, sw128_desc(q_rows + col * Q_PANEL + step, 16, 1024),
                 sw128_desc(K + col * KV_PANEL + step, 16, 1024), ks > 0);
  }
  wgmma_commit();
}

// The softmax weights of a chunk (scores s, 8 NT keys) as wgmma's register A operand, rounded to
// T: pa[ks] holds keys 16 ks .. 16 ks + 15.
template <typename T, int NT>
__device__ __forceinline__ void weights_to_a(unsigned (&pa)[NT / 2][4], const float (&p)[NT][4]) {
#pragma unroll
  for (int ks = 0; ks < NT / 2; ++ks) c_to_a<T, NT>(pa[ks], p, ks);
}

// O[64 x 128] += P V for a warpgroup: P the weights in registers (weights_to_a), V a KS * 16-key
// tile at V read as MN-major B (keys 16 ks .., its two 64-column panels KV_PANEL apart); KS
// k-steps, one group.
template <typename T, int KS, int KV_PANEL>
__device__ __forceinline__ void issue_pv(float (&o)[16][4], const unsigned (&pa)[KS][4], unsigned V) {
  wgmma_fence();
#pragma unroll
  for (int ks = 0; ks < KS; ++ks)
    Wgmma<T>::rs_n128(o, pa[ks], sw128_desc(V + (unsigned)ks * 16 * 128, KV_PANEL, 1024));
  wgmma_commit();
}

// STAGES = 2: per chunk, S = Q K^T, wait, softmax, O += P V, wait; K/V double-buffered.
// STAGES = 3 (FlashAttention-3's intra-warpgroup overlap): per chunk t, S of chunk t + 1 and then
// O += P V of chunk t are issued; once S is back, its softmax weights are computed while the
// tensor cores still work on P V; then O is rescaled. Nothing is in flight across steps. Chunk
// t + 2 loads during step t into the buffers of chunk t - 1. The warpgroups pass buffers through
// mbarriers, not a CTA barrier per step, and drift apart, one's softmax overlapping the other's
// products (FlashAttention-3's ping-pong, here unforced).
// BN keys per chunk: 64, or 128 (blocks of 128 keys or more: half the steps, each with twice the
// work; 225 KiB of shared memory with WG = 2, STAGES = 3). WG = 1 with 64-key chunks fits two CTAs
// per SM with either schedule (3 stages: 113 KiB of shared memory each).
template <typename T, int WG, int STAGES, int BN>
__global__ void __launch_bounds__(128 * WG, WG == 1 && BN == 64 ? 2 : 1)
bsr_forward_wgmma(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                  T* __restrict__ out, float* __restrict__ lse, const long long* __restrict__ indptr,
                  const int* __restrict__ bcols, const int* __restrict__ mask_index,
                  const unsigned* __restrict__ mbits, const int* __restrict__ order, int H, int Hkv,
                  int P, int n_q, int n_k, int d, int dv, int bq, int bk, int mwords, int subs,
                  float scale, float softcap, int use_softcap) {
  using Cfg = WgmmaCfg<WG, STAGES, BN>;
  constexpr int BM = Cfg::BM, THREADS = Cfg::THREADS, ND = Cfg::D / 8, NT = BN / 8, KS = BN / 16;
  constexpr unsigned Q_BYTES = Cfg::Q_BYTES, KV_BYTES = Cfg::KV_BYTES;
  constexpr int Q_PANEL = Q_BYTES / 2, KV_PANEL = KV_BYTES / 2;
  static_assert(STAGES == 2 || STAGES == 3, "STAGES must be 2 or 3");
  static_assert(BN == 64 || BN == 128, "BN must be 64 or 128");

  // the 3-stage schedule's mbarriers first, then the tiles from the next 1024-byte boundary: with a
  // 128-byte aligned base that is at most the 1 KiB the size allows for alignment
  extern __shared__ __align__(128) unsigned char smem_raw[];
  const unsigned sBar = smem_addr(smem_raw);
  const unsigned sQ = (sBar + 4 * STAGES * 8 + 1023u) & ~1023u;
  const unsigned sK = sQ + Q_BYTES, sV = sK + STAGES * KV_BYTES;

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
  ChunkCursor<BN> walk(bcols, mask_index, row_offsets(indptr, P, h, nbq, bi), 0, 1, bk, n_k);
  const int total = (int)walk.total();
  const int wrow = warp * 16;  // first row of this warp within the CTA
  const unsigned q_rows = sQ + (unsigned)(warp >> 2) * 64 * 128;  // this warpgroup's Q rows

  tile_async_sw128<BM, THREADS>(sQ, qb, r0, nrows, d, tid);
  cp_async_commit();
  // the K or V tile of chunk ch into buffer buf
  auto load_k = [&](int buf, const Chunk& ch) {
    tile_async_sw128<BN, THREADS>(sK + buf * KV_BYTES, kb, ch.c0, ch.nvalid, d, tid);
  };
  auto load_v = [&](int buf, const Chunk& ch) {
    tile_async_sw128<BN, THREADS>(sV + buf * KV_BYTES, vb, ch.c0, ch.nvalid, dv, tid);
  };

  float o[1][ND][4];
  float m2[1][2], l[1][2];  // running max in log2 units, partial sums
  start_rows(o, m2, l);
  const ScoreScale ss(scale, softcap, use_softcap);
  float alpha[1][2];  // the rescale factors of o's rows for the chunk whose weights came last
  float s[1][NT][4];  // the scores of one chunk, then its softmax weights
  // the weights of chunk ch from its scores in s, as the A operand of P V
  auto weights = [&](unsigned (&pa)[KS][4], const Chunk& ch) {
    chunk_weights(s, ch, ss, mbits, sub * BM + wrow + g, bq, mwords, t4, m2, l, alpha);
    weights_to_a<T, NT>(pa, s[0]);
  };

  if constexpr (STAGES == 2) {
    Chunk next;  // the chunk whose tiles were loaded last
    auto load_next = [&](int buf) {
      next = walk.next();
      load_k(buf, next);
      load_v(buf, next);
    };
    if (total > 0) load_next(0);
    cp_async_commit();
    for (int t = 0; t < total; ++t) {
      const Chunk ch = next;
      await_step<true>(load_next, t, total);
      issue_scores<T, NT, Q_PANEL, KV_PANEL>(s[0], q_rows, sK + (t & 1) * KV_BYTES);
      wgmma_wait<0>();
      wgmma_hold(s[0]);
      unsigned pa[KS][4];
      weights(pa, ch);
      rescale_rows(o, alpha);
      issue_pv<T, KS, KV_PANEL>(o[0], pa, sV + (t & 1) * KV_BYTES);
      wgmma_wait<0>();
      wgmma_hold(o[0]);
      __syncthreads();
    }
  } else {
    // mbarriers per buffer b, THREADS arrivals a phase: full_k/full_v (chunk's K/V tile landed: an
    // arrival per thread once its copies have), free_k/free_v (every thread's wgmma is done
    // reading it). Chunk c uses buffer c % STAGES, the (c / STAGES)-th phase of each.
    enum { FULL_K, FULL_V, FREE_K, FREE_V };
    auto bar = [&](int kind, int c) { return sBar + (unsigned)(kind * STAGES + c % STAGES) * 8; };
    auto wait_bar = [&](int kind, int c) { mbar_wait(bar(kind, c), (unsigned)(c / STAGES) & 1u); };
    auto put_k = [&](int c, const Chunk& ch) {
      load_k(c % STAGES, ch);
      mbar_arrive_on_copies(bar(FULL_K, c));
    };
    auto put_v = [&](int c, const Chunk& ch) {
      load_v(c % STAGES, ch);
      mbar_arrive_on_copies(bar(FULL_V, c));
    };
    if (tid == 0)
      for (int i = 0; i < 4 * STAGES; ++i) mbar_init(sBar + 8 * i, THREADS);
    __syncthreads();
    if (total > 0) {
      const Chunk first = walk.next();
      put_k(0, first);
      put_v(0, first);
      Chunk c1 = {}, c2 = {};  // in step t: chunks t + 1 and t + 2
      if (total > 1) {
        c1 = walk.next();
        put_k(1, c1);
        put_v(1, c1);
      }
      unsigned pa[KS][4], pb[KS][4];  // the weights of two consecutive chunks
      cp_async_wait<0>();  // Q, the one committed group (the mbarriers track the chunks' copies)
      fence_proxy_async();
      __syncthreads();
      wait_bar(FULL_K, 0);
      fence_proxy_async();
      issue_scores<T, NT, Q_PANEL, KV_PANEL>(s[0], q_rows, sK);
      wgmma_wait<0>();
      wgmma_hold(s[0]);
      mbar_arrive(bar(FREE_K, 0));
      weights(pa, first);  // o is still zero: nothing to rescale
      // Step t: cur holds the weights of chunk t; the scores of chunk t + 1 go to s, their weights
      // to nxt. K of chunk t + 2 loads into the buffer of chunk t - 1 once every thread has its
      // scores (step t - 2), V once every thread is done with step t - 1: a warpgroup can run up
      // to a step ahead of the other, so one's softmax overlaps the other's products.
      auto step = [&](const unsigned (&cur)[KS][4], unsigned (&nxt)[KS][4], int t) {
        const bool more = t + 1 < total, ahead = t + 2 < total;
        if (ahead) {
          c2 = walk.next();
          if (t >= 1) wait_bar(FREE_K, t - 1);
          put_k(t + 2, c2);
        }
        if (more) wait_bar(FULL_K, t + 1);
        wait_bar(FULL_V, t);
        fence_proxy_async();
        // past the last chunk, the scores come from a buffer no copy is writing, and go unused
        issue_scores<T, NT, Q_PANEL, KV_PANEL>(s[0], q_rows, sK + ((t + 1) % STAGES) * KV_BYTES);
        issue_pv<T, KS, KV_PANEL>(o[0], cur, sV + (t % STAGES) * KV_BYTES);
        wgmma_wait<1>();  // the scores of chunk t + 1; P V still runs
        wgmma_hold(s[0]);
        if (more) {
          mbar_arrive(bar(FREE_K, t + 1));
          weights(nxt, c1);
        }
        if (ahead) {
          if (t >= 1) wait_bar(FREE_V, t - 1);
          put_v(t + 2, c2);
        }
        wgmma_wait<0>();
        wgmma_hold(o[0]);
        mbar_arrive(bar(FREE_V, t));
        if (more) rescale_rows(o, alpha);
        c1 = c2;
      };
      for (int t = 0;; t += 2) {
        step(pa, pb, t);
        if (t + 1 >= total) break;
        step(pb, pa, t + 1);
        if (t + 2 >= total) break;
      }
    }
  }

  store_rows<T>(o, m2, l, out, lse, bh, n_q, r0, nrows, wrow, dv, g, t4);
}

}  // namespace sparse_ref

#ifdef SPARSE_REF_INSTANTIATE
namespace sparse_ref {
#define SR_WGMMA_FWD(T, WG, S, BN)                                                                 \
  template __global__ void bsr_forward_wgmma<T, WG, S, BN>(                                            \
      const T*, const T*, const T*, T*, float*, const long long*, const int*, const int*,         \
      const unsigned*, const int*, int, int, int, int, int, int, int, int, int, int, int, float,  \
      float, int);
SR_WGMMA_FWD(bf16_t, 2, 3, 64)
SR_WGMMA_FWD(bf16_t, 2, 2, 64)
SR_WGMMA_FWD(bf16_t, 1, 2, 64)
SR_WGMMA_FWD(bf16_t, 1, 3, 64)
SR_WGMMA_FWD(bf16_t, 2, 3, 128)
SR_WGMMA_FWD(bf16_t, 2, 2, 128)
SR_WGMMA_FWD(bf16_t, 1, 3, 128)
SR_WGMMA_FWD(f16_t, 2, 3, 64)
SR_WGMMA_FWD(f16_t, 2, 3, 128)
}  // namespace sparse_ref
#endif
