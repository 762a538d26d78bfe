// The online softmax of the tensor-core forwards (bsr_forward_mma in bsr_forward.cu,
// bsr_forward_wgmma in bsr_forward_wgmma.cu), FlashAttention-2 style, on the accumulator fragments
// of one warp: MT m-tiles of 16 rows, the scores of a chunk of 8 NT keys in s[MT][NT][4] and the
// output accumulator of 8 ND columns in o[MT][ND][4] (mma.sync's C layout, which wgmma's
// accumulators share: thread (g, t4) holds rows g and g + 8, columns 2 t4 and 2 t4 + 1 of each
// 8-column tile).
//
// Scores enter the softmax as s * mul in log2 units. With a positive scale and no softcap, s is the
// raw q.k and mul = scale log2(e), so the row max is taken before scaling and each weight is one
// fma and one ex2: p = 2^(s mul - m). Otherwise s is transformed in place first (softcap
// tanh(scale s / softcap) log2(e), or s scale log2(e)) and mul = 1.
#pragma once
#include "mma_common.cuh"

namespace sparse_ref {

struct ScoreScale {
  float scale, softcap, sl2, mul;
  bool sc, pre;  // softcap applies; scores are transformed before the softmax
  __device__ __forceinline__ ScoreScale(float scale_, float softcap_, int use_softcap)
      : scale(scale_), softcap(softcap_), sl2(scale_ * 1.4426950408889634f), sc(use_softcap != 0) {
    pre = sc || !(sl2 > 0.f);
    mul = pre ? 1.f : sl2;
  }
  // the transform of the `pre` path, in place
  template <int MT, int NT>
  __device__ __forceinline__ void transform(float (&s)[MT][NT][4]) const {
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const float x = s[mt][nt][e];
          s[mt][nt][e] = sc ? softcap * tanhf(x * scale / softcap) * 1.4426950408889634f : x * sl2;
        }
  }
};

// -inf where chunk ch excludes a score: past its valid keys, or not in its block's mask. row: the
// block row (within the stored block of bq rows) of m-tile 0's row g; m-tile mt is 16 mt further.
template <int MT, int NT>
__device__ __forceinline__ void mask_scores(float (&s)[MT][NT][4], const Chunk& ch,
                                            const unsigned* __restrict__ mbits, int row, int bq,
                                            int mwords, int t4) {
  const float INF = __int_as_float(0x7f800000);
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
    unsigned mw[2][NT / 4];
    chunk_mask(mw, mbits, ch.mi, row + 16 * mt, bq, mwords, ch.c);
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

// Empty rows to start a walk: o = 0, running max m2 = -inf, partial sums l = 0.
template <int MT, int ND>
__device__ __forceinline__ void start_rows(float (&o)[MT][ND][4], float (&m2)[MT][2],
                                           float (&l)[MT][2]) {
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int nd = 0; nd < ND; ++nd) o[mt][nd][0] = o[mt][nd][1] = o[mt][nd][2] = o[mt][nd][3] = 0.f;
    m2[mt][0] = m2[mt][1] = -__int_as_float(0x7f800000);
    l[mt][0] = l[mt][1] = 0.f;
  }
}

// The softmax statistics of one chunk: the running max m2 (log2 units) and partial sums l of each
// row advance, s becomes the weights p, and alpha the factor the row's accumulator must be
// rescaled by (rescale_rows).
template <int MT, int NT>
__device__ __forceinline__ void softmax_weights(float (&s)[MT][NT][4], float (&m2)[MT][2],
                                                float (&l)[MT][2], float mul,
                                                float (&alpha)[MT][2]) {
  const float INF = __int_as_float(0x7f800000);
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int hh = 0; hh < 2; ++hh) {
      float mx = -INF;
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) mx = fmaxf(mx, fmaxf(s[mt][nt][2 * hh], s[mt][nt][2 * hh + 1]));
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
}

// o *= alpha per row, only where some row max of the warp moved (alpha == 1 leaves o bitwise as it
// is, so past the first chunks of a long row the 4 MT ND multiplies are skipped).
template <int MT, int ND>
__device__ __forceinline__ void rescale_rows(float (&o)[MT][ND][4], const float (&alpha)[MT][2]) {
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
}

// The weights of chunk ch from its scores: the transform of the `pre` path, the mask where the
// chunk needs one (a partial block, or keys past n; uniform over the warp), then softmax_weights.
// row: as mask_scores.
template <int MT, int NT>
__device__ __forceinline__ void chunk_weights(float (&s)[MT][NT][4], const Chunk& ch,
                                              const ScoreScale& ss,
                                              const unsigned* __restrict__ mbits, int row, int bq,
                                              int mwords, int t4, float (&m2)[MT][2],
                                              float (&l)[MT][2], float (&alpha)[MT][2]) {
  if (ss.pre) ss.transform(s);
  if (ch.mi >= 0 || ch.nvalid < 8 * NT) mask_scores(s, ch, mbits, row, bq, mwords, t4);
  softmax_weights(s, m2, l, ss.mul, alpha);
}

// out = o / l and lse = m2 ln 2 + ln l for the warp's rows wrow + 16 mt + g (+ 8) of the CTA's
// nrows rows, which start at row `row0` of the (batch, head) plane bh; rows without an allowed key
// (l == 0) give 0 and -inf. out has rows of dv elements.
template <typename T, int MT, int ND>
__device__ __forceinline__ void store_rows(const float (&o)[MT][ND][4], const float (&m2)[MT][2],
                                           const float (&l)[MT][2], T* __restrict__ out,
                                           float* __restrict__ lse, long long bh, int n_q,
                                           int row0, int nrows, int wrow, int dv, int g, int t4) {
  const float INF = __int_as_float(0x7f800000), LN2 = 0.6931471805599453f;
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int hh = 0; hh < 2; ++hh) {
      float lt = l[mt][hh];
      lt += __shfl_xor_sync(0xffffffffu, lt, 1);
      lt += __shfl_xor_sync(0xffffffffu, lt, 2);
      const int r = wrow + 16 * mt + g + 8 * hh;
      if (r >= nrows) continue;
      const long long row = bh * n_q + row0 + r;
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
