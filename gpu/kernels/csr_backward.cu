// CSR sparse-attention backward, SIMT (fp64; fp32; fp16/bf16 computed in fp32). No atomics.
//
// The math is backward_core.cuh's (semantics, passes, determinism, special values); this file
// gives it the token-CSR walk and the launch geometry.
//
// Kernel 1, csr_backward_dq: one CTA per (tile of BM = 16*TM query rows, head, batch). It walks the
// union of its rows' keys in windows of BN = 16*TN consecutive keys with the CSR walk of the forward
// (csr_walk.cuh: bitmap per window, CSR entries of the next window staged with cp.async), twice
// (statistics, then dq).
// Kernel 2, csr_backward_dkdv: one CTA per (tile of BM keys, kv head, batch), walking the transposed
// pattern (the queries of each key) in windows of BN queries, for each query head of the kv head's
// group in increasing order.
//
// Template: T element type, A accumulator (float or double), TM/TN micro-tile, DMAX >= max(d, d_v)
// (head dims zero-padded to DMAX). Instantiated by name from sparse_ref/backends/cupy/; build
// with -DSPARSE_REF_INSTANTIATE to get a representative set in an object file.
#include "backward_core.cuh"
#include "csr_walk.cuh"

namespace sparse_ref {

// The rows [r0, r0 + nrows) of one head of a stacked CSR (indptr (P, n_rows + 1), absolute
// offsets), walked in windows of BN consecutive columns (< n_cols) that start at the smallest
// column no row has consumed yet.
template <int BM, int BN>
struct CsrWalk {
  static constexpr int MW = BN / 32, LDI = BN + 1;
  const long long* indptr;
  const int* indices;
  int P, n_rows, n_cols, r0, nrows, tid, warp, lane;

  template <typename S>
  __device__ __forceinline__ int begin(const S& sm, int h) {
    const long long* ip = row_offsets(indptr, P, h, n_rows, r0);
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
  template <typename S>
  __device__ __forceinline__ int next(const S& sm) const {
    return tile_min<BM>(sm.next, lane);
  }
  __device__ __forceinline__ int width(int j0) const { return min(BN, n_cols - j0); }
  template <typename S>
  __device__ __forceinline__ void stage(const S& sm, int j1) const {
    if (j1 != BIG_INDEX) stage_indices<BM, LDI>(indices, sm.idx, sm.ptr, sm.end, warp, lane);
  }
  template <typename S>
  __device__ __forceinline__ void build(const S& sm, unsigned* mask, int j1) const {
    if (j1 != BIG_INDEX) build_mask<BM, BN>(sm.idx, mask, sm.ptr, sm.end, sm.next, j1, warp, lane);
  }
  __device__ __forceinline__ void step() {}
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
  constexpr int BM = W::BM, BN = W::BN;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const typename W::Smem sm = W::carve(smem_raw);

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int h = blockIdx.x % H, b = blockIdx.y;
  const int ntiles = (n_q + BM - 1) / BM;
  const int r0 = order[(long long)(P == 1 ? 0 : h) * ntiles + blockIdx.x / H] * BM;
  const int nrows = min(BM, n_q - r0);
  const HeadPlanes pl(b, h, H, Hkv);
  const long long bh = pl.bh, bhk = pl.bhk;
  CsrWalk<BM, BN> walk{indptr, indices, P, n_q, n_k, r0, nrows, tid, warp, lane};
  backward_dq_rows<T, A, TM, TN, DMAX>(sm, walk, h, q + bh * n_q * d, dout + bh * n_q * dv,
                                       k + bhk * n_k * d, v + bhk * n_k * dv, dq + bh * n_q * d,
                                       st_m + bh * n_q, st_r + bh * n_q, st_d + bh * n_q, r0,
                                       nrows, d, dv, scale, softcap, use_softcap != 0, finite != 0);
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
  constexpr int BM = W::BM, BN = W::BN;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const typename W::Smem sm = W::carve(smem_raw);

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g = blockIdx.x % Hkv, b = blockIdx.y;
  const int ntiles = (n_k + BM - 1) / BM;
  const int c0 = order[(long long)(PO == 1 ? 0 : g) * ntiles + blockIdx.x / Hkv] * BM;
  const int nrows = min(BM, n_k - c0);
  const long long bhk = (long long)b * Hkv + g;
  CsrWalk<BM, BN> walk{t_indptr, t_indices, P, n_k, n_q, c0, nrows, tid, warp, lane};
  backward_dkdv_rows<T, A, TM, TN, DMAX>(sm, walk, q, dout, k + bhk * n_k * d, v + bhk * n_k * dv,
                                         dk + bhk * n_k * d, dvout + bhk * n_k * dv, st_m, st_r,
                                         st_d, b, H, g, H / Hkv, n_q, c0, nrows, d, dv, scale,
                                         softcap, use_softcap != 0, finite != 0);
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
