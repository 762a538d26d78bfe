// BSR (block-sparse) sparse-attention forward on Hopper's warpgroup tensor cores (sm_90a only).
//
// Pattern block form and semantics as bsr_forward.cu. bsr_forward_wgmma<T, WG, STAGES>: fp16/bf16,
// head dims d, d_v <= 128 and multiples of 8, fp32 accumulation. A CTA of WG warpgroups (128
// threads each) owns 64 WG query rows of one block row (several CTAs when bq is larger); warpgroup
// w owns rows 64 w .. 64 w + 63 and keeps its 64 x 128 output accumulator in registers. Q stays in
// shared memory for the whole walk; key chunks of 64 (a stored block is 1 or more chunks) go
// through STAGES shared-memory buffers, loaded with cp.async, all tiles in wgmma's 128-byte
// swizzled layout (wgmma_common.cuh). Per chunk and warpgroup: S = Q K^T is eight wgmma.m64n64k16
// reading both operands from shared memory; the online softmax (fragment_softmax.cuh) turns S into
// P in registers; O += P V is four wgmma.m64n128k16 with P from registers and V from shared memory.
// Full blocks skip the mask, partial blocks read their packed mask words. Deterministic: fixed
// reduction order, no atomics.
#include "wgmma_common.cuh"
#include "fragment_softmax.cuh"

namespace sparse_ref {

template <int WG, int STAGES>
struct WgmmaCfg {
  static constexpr int BM = 64 * WG, BN = 64, D = 128, THREADS = 128 * WG;
  static constexpr int Q_BYTES = BM * D * 2, KV_BYTES = BN * D * 2;  // one tile, swizzled
  // Q, STAGES K and V buffers, and up to 1 KiB to align the tiles to the swizzle's 1024 bytes
  static constexpr int SMEM_BYTES = Q_BYTES + 2 * STAGES * KV_BYTES + 1024;
};

// S[64 x 64] = Q K^T for a warpgroup: its 64 rows of Q at q_rows, a 64-key K tile at K (both
// swizzled, K-major, 8-row groups 1024 bytes apart); eight k-steps of 16 columns, one group.
template <typename T, int Q_PANEL, int KV_PANEL>
__device__ __forceinline__ void issue_scores(float (&s)[8][4], unsigned q_rows, unsigned K) {
  wgmma_fence();
#pragma unroll
  for (int ks = 0; ks < 8; ++ks) {
    const unsigned col = (unsigned)(ks >> 2), step = (unsigned)(ks & 3) * 32;
    Wgmma<T>::ss_n64(s, sw128_desc(q_rows + col * Q_PANEL + step, 16, 1024),
                     sw128_desc(K + col * KV_PANEL + step, 16, 1024), ks > 0);
  }
  wgmma_commit();
}

// O[64 x 128] += P V for a warpgroup: P the softmax weights in registers (rounded to T), V a
// 64-key tile at V read as MN-major B (keys 16 ks .., its two 64-column panels KV_PANEL apart);
// four k-steps, one group.
template <typename T, int KV_PANEL>
__device__ __forceinline__ void issue_pv(float (&o)[16][4], const float (&p)[8][4], unsigned V) {
  unsigned pa[4][4];
#pragma unroll
  for (int ks = 0; ks < 4; ++ks) c_to_a<T, 8>(pa[ks], p, ks);
  wgmma_fence();
#pragma unroll
  for (int ks = 0; ks < 4; ++ks)
    Wgmma<T>::rs_n128(o, pa[ks], sw128_desc(V + (unsigned)ks * 16 * 128, KV_PANEL, 1024));
  wgmma_commit();
}

// STAGES = 2: per chunk, S = Q K^T, wait, softmax, O += P V, wait; K/V double-buffered.
// WG = 1 fits two CTAs per SM with either schedule (3 stages: 113 KiB of shared memory each).
// STAGES = 3 (FlashAttention-3's intra-warpgroup overlap): per chunk t, S of chunk t + 1 and then
// O += P V of chunk t are issued; once S is back, its softmax weights are computed while the
// tensor cores still work on P V; then O is rescaled. Nothing is in flight across steps. Chunk
// t + 2 loads during step t into the buffer of chunk t - 1, which every warpgroup has finished with.
template <typename T, int WG, int STAGES>
__global__ void __launch_bounds__(128 * WG, WG == 1 ? 2 : 1)
bsr_forward_wgmma(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                  T* __restrict__ out, float* __restrict__ lse, const long long* __restrict__ indptr,
                  const int* __restrict__ bcols, const int* __restrict__ mask_index,
                  const unsigned* __restrict__ mbits, const int* __restrict__ order, int H, int Hkv,
                  int P, int n_q, int n_k, int d, int dv, int bq, int bk, int mwords, int subs,
                  float scale, float softcap, int use_softcap) {
  using Cfg = WgmmaCfg<WG, STAGES>;
  constexpr int BM = Cfg::BM, BN = Cfg::BN, THREADS = Cfg::THREADS, ND = Cfg::D / 8;
  constexpr unsigned Q_BYTES = Cfg::Q_BYTES, KV_BYTES = Cfg::KV_BYTES;
  constexpr int Q_PANEL = Q_BYTES / 2, KV_PANEL = KV_BYTES / 2;
  static_assert(STAGES == 2 || STAGES == 3, "STAGES must be 2 or 3");

  extern __shared__ __align__(16) unsigned char smem_raw[];
  const unsigned sQ = (smem_addr(smem_raw) + 1023u) & ~1023u;
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
  ChunkCursor walk(bcols, mask_index, row_offsets(indptr, P, h, nbq, bi), 0, 1, bk, n_k);
  const int total = (int)walk.total();
  const int wrow = warp * 16;  // first row of this warp within the CTA
  const unsigned q_rows = sQ + (unsigned)(warp >> 2) * 64 * 128;  // this warpgroup's Q rows

  tile_async_sw128<BM, THREADS>(sQ, qb, r0, nrows, d, tid);
  cp_async_commit();
  // the K and V tiles of the walk's next chunk into buffer buf
  auto load = [&](int buf) {
    const Chunk ch = walk.next();
    tile_async_sw128<BN, THREADS>(sK + buf * KV_BYTES, kb, ch.c0, ch.nvalid, d, tid);
    tile_async_sw128<BN, THREADS>(sV + buf * KV_BYTES, vb, ch.c0, ch.nvalid, dv, tid);
    return ch;
  };

  float o[1][ND][4];
  float m2[1][2], l[1][2];  // running max in log2 units, partial sums
  start_rows(o, m2, l);
  const ScoreScale ss(scale, softcap, use_softcap);
  float alpha[1][2];  // the rescale factors of o's rows for the chunk whose weights came last
  auto weights = [&](float (&s)[1][8][4], const Chunk& ch) {
    chunk_weights(s, ch, ss, mbits, sub * BM + wrow + g, bq, mwords, t4, m2, l, alpha);
  };

  if constexpr (STAGES == 2) {
    Chunk next;  // the chunk whose tiles were loaded last
    auto load_next = [&](int buf) { next = load(buf); };
    if (total > 0) next = load(0);
    cp_async_commit();
    for (int t = 0; t < total; ++t) {
      const Chunk ch = next;
      await_step<true>(load_next, t, total);
      float s[1][8][4];
      issue_scores<T, Q_PANEL, KV_PANEL>(s[0], q_rows, sK + (t & 1) * KV_BYTES);
      wgmma_wait<0>();
      wgmma_hold(s[0]);
      weights(s, ch);
      rescale_rows(o, alpha);
      issue_pv<T, KV_PANEL>(o[0], s[0], sV + (t & 1) * KV_BYTES);
      wgmma_wait<0>();
      wgmma_hold(o[0]);
      __syncthreads();
    }
  } else {
    if (total > 0) {
      const Chunk first = load(0);
      cp_async_commit();
      Chunk c1 = {}, c2 = {};  // in step t: chunks t + 1 and t + 2
      if (total > 1) c1 = load(1);
      cp_async_commit();
      float sa[1][8][4], sb[1][8][4];
      cp_async_wait<1>();  // Q and chunk 0
      fence_proxy_async();
      __syncthreads();
      issue_scores<T, Q_PANEL, KV_PANEL>(sa[0], q_rows, sK);
      wgmma_wait<0>();
      wgmma_hold(sa[0]);
      weights(sa, first);  // o is still zero: nothing to rescale
      // Step t: cur holds the weights of chunk t; the scores of chunk t + 1 go to nxt (past the
      // last chunk from a stale buffer, and not used).
      auto step = [&](float (&cur)[1][8][4], float (&nxt)[1][8][4], int t) {
        cp_async_wait<0>();  // chunk t + 1
        fence_proxy_async();
        __syncthreads();  // chunk t + 1 visible; every warpgroup is done with chunk t - 1
        if (t + 2 < total) c2 = load((t + 2) % STAGES);
        cp_async_commit();
        issue_scores<T, Q_PANEL, KV_PANEL>(nxt[0], q_rows, sK + ((t + 1) % STAGES) * KV_BYTES);
        issue_pv<T, KV_PANEL>(o[0], cur[0], sV + (t % STAGES) * KV_BYTES);
        wgmma_wait<1>();  // the scores of chunk t + 1; P V still runs
        wgmma_hold(nxt[0]);
        const bool more = t + 1 < total;
        if (more) weights(nxt, c1);
        wgmma_wait<0>();
        wgmma_hold(o[0]);
        if (more) rescale_rows(o, alpha);
        c1 = c2;
      };
      for (int t = 0;; t += 2) {
        step(sa, sb, t);
        if (t + 1 >= total) break;
        step(sb, sa, t + 1);
        if (t + 2 >= total) break;
      }
    }
  }

  store_rows<T>(o, m2, l, out, lse, bh, n_q, r0, nrows, wrow, dv, g, t4);
}

}  // namespace sparse_ref

#ifdef SPARSE_REF_INSTANTIATE
namespace sparse_ref {
#define SR_WGMMA_FWD(T, WG, S)                                                                     \
  template __global__ void bsr_forward_wgmma<T, WG, S>(                                            \
      const T*, const T*, const T*, T*, float*, const long long*, const int*, const int*,         \
      const unsigned*, const int*, int, int, int, int, int, int, int, int, int, int, int, float,  \
      float, int);
SR_WGMMA_FWD(bf16_t, 2, 3)
SR_WGMMA_FWD(bf16_t, 2, 2)
SR_WGMMA_FWD(bf16_t, 1, 2)
SR_WGMMA_FWD(bf16_t, 1, 3)
SR_WGMMA_FWD(f16_t, 2, 3)
}  // namespace sparse_ref
#endif
