// SIMT tile core shared by the CSR and BSR SIMT kernels (fp64, fp32, and fp16/bf16 computed in fp32).
//
// A CTA of 256 threads owns BM = 16*TM query rows; key tiles of BN = 16*TN keys stream through
// shared memory. Thread (ty, tx) = (tid / 16, tid % 16) owns score rows ty + 16*i and columns
// tx + 16*j of each tile, and output rows ty + 16*i. A tile carries a bitmap (BN bits per row) of
// the allowed (row, key) pairs; everything else is excluded, never merely down-weighted.
// Every reduction has a fixed order (no atomics), so results are deterministic.
#pragma once
#include "attn_common.cuh"

namespace sparse_ref {

template <typename T, typename A, int TM, int TN, int DMAX, bool SPLIT>
struct Simt {
  static constexpr int THREADS = 256;
  static constexpr int BM = 16 * TM;
  static constexpr int BN = 16 * TN;
  static constexpr int VW = 16 / (int)sizeof(A);            // elements per 16-byte vector
  static constexpr int LD = DMAX + VW;                        // padded row of sQ / sK / sV
  static constexpr int LDP = BN + VW;                         // padded row of sP
  static constexpr int MW = BN / 32;                          // mask words per row
  static constexpr int LDI = BN + 1;                          // staged CSR indices per row
  static constexpr int OV = (DMAX / 16 < VW) ? DMAX / 16 : VW;  // output vector width
  static constexpr int OC = DMAX / (16 * OV);                 // output vectors per row per thread
  static constexpr int NO = OC * OV;                          // output columns per thread
  static_assert(BN % 32 == 0, "BN must be a multiple of 32");
  static_assert(DMAX % 16 == 0 && DMAX % VW == 0, "DMAX must be a multiple of 16");

  // SPLIT: K and V have their own buffers (V streams in while the scores are computed);
  // otherwise V reuses the K buffer once the scores are done (less shared memory, more CTAs).
  static constexpr int SMEM_BYTES = (BM * LD + (SPLIT ? 2 : 1) * BN * LD + BM * LDP) * (int)sizeof(A) +
                                    2 * BM * MW * 4 + BM * LDI * 4 + BM * (8 + 8 + 4);

  struct Smem {
    A* q;
    A* k;
    A* v;
    A* p;
    unsigned* mask;  // two buffers of BM * MW words
    int* idx;        // BM * LDI
    long long* ptr;
    long long* end;
    int* next;
  };
  static __device__ __forceinline__ Smem carve(unsigned char* raw) {
    Smem s;
    s.q = reinterpret_cast<A*>(raw);
    s.k = s.q + BM * LD;
    s.v = SPLIT ? s.k + BN * LD : s.k;
    s.p = s.k + (SPLIT ? 2 : 1) * BN * LD;
    s.mask = reinterpret_cast<unsigned*>(s.p + BM * LDP);
    s.ptr = reinterpret_cast<long long*>(s.mask + 2 * BM * MW);
    s.end = s.ptr + BM;
    s.idx = reinterpret_cast<int*>(s.end + BM);
    s.next = s.idx + BM * LDI;
    return s;
  }

  // Rows [0, ROWS) of `dst` <- rows [row0, row0 + nvalid) of `base` (row length `width`); rows past
  // nvalid and columns past width are zero. Issues cp.async when possible: the caller commits,
  // waits and synchronises.
  template <int ROWS>
  static __device__ __forceinline__ void load_tile(A* dst, const T* base, long long row0, int nvalid,
                                                   int width) {
    if constexpr (is_same<T, A>::value) {
      if (width % VW == 0) {
        constexpr int CPR = DMAX / VW;
        for (int c = threadIdx.x; c < ROWS * CPR; c += THREADS) {
          const int r = c / CPR, cc = (c % CPR) * VW;
          const bool ok = r < nvalid && cc < width;
          const T* g = ok ? base + (row0 + r) * width + cc : base;
          cp_async16(dst + r * LD + cc, g, ok);
        }
        return;
      }
    }
    for (int c = threadIdx.x; c < ROWS * DMAX; c += THREADS) {
      const int r = c / DMAX, cc = c % DMAX;
      A val = (A)0;
      if (r < nvalid && cc < width) val = load_acc<A>(base + (row0 + r) * width + cc);
      dst[r * LD + cc] = val;
    }
  }

  // s[i][j] = q[row ty+16i] . k[col tx+16j], summed over the head dimension in order.
  static __device__ __forceinline__ void scores(const Smem& sm, A (&s)[TM][TN], int ty, int tx) {
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
      for (int j = 0; j < TN; ++j) s[i][j] = (A)0;
#pragma unroll 1  // 64 FMAs per step already; unrolling more spills at 128 registers
    for (int kk = 0; kk < DMAX; kk += VW) {
      VecN<A, VW> a[TM], b[TN];
#pragma unroll
      for (int i = 0; i < TM; ++i)
        a[i] = *reinterpret_cast<const VecN<A, VW>*>(sm.q + (ty + 16 * i) * LD + kk);
#pragma unroll
      for (int j = 0; j < TN; ++j)
        b[j] = *reinterpret_cast<const VecN<A, VW>*>(sm.k + (tx + 16 * j) * LD + kk);
#pragma unroll
      for (int u = 0; u < VW; ++u)
#pragma unroll
        for (int i = 0; i < TM; ++i)
#pragma unroll
          for (int j = 0; j < TN; ++j) s[i][j] = fma(a[i].v[u], b[j].v[u], s[i][j]);
    }
  }

  // scale, softcap and mask the scores, update the running max / sum, write p to sP, rescale o.
  static __device__ __forceinline__ void softmax(const Smem& sm, const unsigned* mask, A (&s)[TM][TN], A (&m)[TM],
                                                 A (&l)[TM], A (&o)[TM][NO], int ty, int tx,
                                                 A scale, A softcap, bool use_softcap) {
    const A NEG = -num<A>::inf();
#pragma unroll
    for (int i = 0; i < TM; ++i) {
      const int r = ty + 16 * i;
      A mx = NEG;
#pragma unroll
      for (int j = 0; j < TN; ++j) {
        const int c = tx + 16 * j;
        const unsigned bit = (mask[r * MW + (c >> 5)] >> (c & 31)) & 1u;
        A x = s[i][j] * scale;
        if (use_softcap) x = softcap * num<A>::tanh_(x / softcap);
        x = bit ? x : NEG;
        s[i][j] = x;
        mx = num<A>::max_(mx, x);
      }
#pragma unroll
      for (int off = 8; off >= 1; off >>= 1) mx = num<A>::max_(mx, shfl_xor(mx, off));
      const A mnew = num<A>::max_(m[i], mx);
      const A mu = (mnew == NEG) ? (A)0 : mnew;
      const A alpha = num<A>::exp_(m[i] - mu);
      m[i] = mnew;
      A ps = (A)0;
#pragma unroll
      for (int j = 0; j < TN; ++j) {
        const A p = num<A>::exp_(s[i][j] - mu);
        ps += p;
        sm.p[r * LDP + tx + 16 * j] = p;
      }
      l[i] = l[i] * alpha + ps;
#pragma unroll
      for (int c = 0; c < NO; ++c) o[i][c] *= alpha;
    }
  }

  // o[i][:] += sum_j p[row][j] * v[j][cols]. SAFE: v is finite, so excluded keys (p = 0) may be
  // multiplied in; otherwise excluded keys are skipped (0 * inf would be NaN).
  template <bool SAFE>
  static __device__ __forceinline__ void pv(const Smem& sm, const unsigned* mask, A (&o)[TM][NO], int ty,
                                            int tx) {
#pragma unroll 2
    for (int jj = 0; jj < BN; jj += VW) {
      VecN<A, VW> p[TM];
#pragma unroll
      for (int i = 0; i < TM; ++i)
        p[i] = *reinterpret_cast<const VecN<A, VW>*>(sm.p + (ty + 16 * i) * LDP + jj);
#pragma unroll
      for (int u = 0; u < VW; ++u) {
        const int j = jj + u;
#pragma unroll
        for (int c = 0; c < OC; ++c) {
          const VecN<A, OV> vv =
              *reinterpret_cast<const VecN<A, OV>*>(sm.v + j * LD + c * 16 * OV + tx * OV);
#pragma unroll
          for (int i = 0; i < TM; ++i) {
            bool use = true;
            if (!SAFE) use = (mask[(ty + 16 * i) * MW + (j >> 5)] >> (j & 31)) & 1u;
#pragma unroll
            for (int w = 0; w < OV; ++w)
              if (use) o[i][c * OV + w] = fma(p[i].v[u], vv.v[w], o[i][c * OV + w]);
          }
        }
      }
    }
  }

  // out = o / l, lse = m + log(l); rows with no allowed keys give 0 and -inf.
  static __device__ __forceinline__ void finalize(const A (&o)[TM][NO], const A (&m)[TM],
                                                  const A (&l)[TM], T* out_base, A* lse_base,
                                                  int nrows, int dv, int ty, int tx) {
#pragma unroll
    for (int i = 0; i < TM; ++i) {
      A lt = l[i];
#pragma unroll
      for (int off = 8; off >= 1; off >>= 1) lt += shfl_xor(lt, off);
      const int r = ty + 16 * i;
      if (r >= nrows) continue;
      const bool empty = (lt == (A)0);
#pragma unroll
      for (int c = 0; c < OC; ++c)
#pragma unroll
        for (int w = 0; w < OV; ++w) {
          const int col = c * 16 * OV + tx * OV + w;
          if (col < dv) store_val(out_base + (long long)r * dv + col, empty ? (A)0 : o[i][c * OV + w] / lt);
        }
      if (tx == 0) lse_base[r] = empty ? -num<A>::inf() : m[i] + num<A>::log_(lt);
    }
  }
};

}  // namespace sparse_ref
