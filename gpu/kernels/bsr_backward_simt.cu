// Block-form sparse-attention backward, SIMT (fp64; fp32; fp16/bf16 computed in fp32). No atomics.
//
// The math is backward_core.cuh's (the same as the token-CSR backward, csr_backward.cu); this file
// walks the block form instead of token CSR rows (block_walk.cuh): full blocks carry no mask (their
// tiles' bitmaps are every in-range bit), partial blocks read their packed masks.
//
// Kernel 1, bsr_backward_dq: one CTA per (BM = 16*TM query rows of one block row, head, batch);
// `subs` = ceil(bq / BM) CTAs share a block row. It walks the block row's stored blocks, each in
// tiles of BN = 16*TN keys, twice (statistics, then dq). Block rows are launched heaviest first
// (order (P, nbq): each head's block rows by stored blocks).
// Kernel 2, bsr_backward_dkdv: one CTA per (BM keys of one block column, kv head, batch) over the
// transposed block form (block (bk, bq), the block rows of each block column in increasing order,
// masks transposed; built once per pattern by the host, see device_bsr_transpose), for each query
// head of the kv head's group in increasing order; order (PO, nbk): block columns by stored blocks
// summed over the group's heads (PO = 1 when the heads share one pattern).
//
// Block form arguments (see bsr_forward.cu): indptr (P, nb + 1) int64, cols int32, mask_index
// int32 (-1: full), mbits (n_partial, rows, mwords) uint32; rows x cols = bq x bk for the dq kernel
// and bk x bq for the dk/dv kernel.
//
// Template: T element type, A accumulator (float or double), TM/TN micro-tile, DMAX >= max(d, d_v).
// Instantiated by name from sparse_ref/backends/cupy/; build with -DSPARSE_REF_INSTANTIATE to get a
// representative set in an object file.
#include "backward_core.cuh"
#include "block_walk.cuh"

namespace sparse_ref {

// ------------------------------------------------------------------------------- kernel 1: dq
template <typename T, typename A, int TM, int TN, int DMAX>
__global__ void __launch_bounds__(256, 1)
bsr_backward_dq(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                const T* __restrict__ dout, T* __restrict__ dq, A* __restrict__ st_m,
                A* __restrict__ st_r, A* __restrict__ st_d, const long long* __restrict__ indptr,
                const int* __restrict__ bcols, const int* __restrict__ mask_index,
                const unsigned* __restrict__ mbits, const int* __restrict__ order, int H, int Hkv,
                int P, int n_q, int n_k, int d, int dv, int bq, int bk, int mwords, int subs,
                A scale, A softcap, int use_softcap, int finite) {
  using W = Bwd<T, A, TM, TN, DMAX>;
  constexpr int BM = W::BM, BN = W::BN;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const typename W::Smem sm = W::carve(smem_raw);

  const BlockRowTile<BM> tile(order, H, P, n_q, bq, subs);
  if (tile.nrows <= 0) return;
  const int h = tile.head, b = tile.batch, nbq = tile.nb, sub = tile.sub, bi = tile.brow;
  const int r0 = tile.row0, nrows = tile.nrows;
  const HeadPlanes pl(b, h, H, Hkv);
  const long long bh = pl.bh, bhk = pl.bhk;
  BlockWalk<BM, BN> walk{indptr, bcols, mask_index, mbits, P, nbq, bi, sub * BM, nrows, bq, bk,
                         mwords, n_k, 0, 0, 0, 0};
  backward_dq_rows<T, A, TM, TN, DMAX>(sm, walk, h, q + bh * n_q * d, dout + bh * n_q * dv,
                                       k + bhk * n_k * d, v + bhk * n_k * dv, dq + bh * n_q * d,
                                       st_m + bh * n_q, st_r + bh * n_q, st_d + bh * n_q, r0,
                                       nrows, d, dv, scale, softcap, use_softcap != 0, finite != 0);
}

// ---------------------------------------------------------------------------- kernel 2: dk, dv
template <typename T, typename A, int TM, int TN, int DMAX>
__global__ void __launch_bounds__(256, 1)
bsr_backward_dkdv(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                  const T* __restrict__ dout, T* __restrict__ dk, T* __restrict__ dvout,
                  const A* __restrict__ st_m, const A* __restrict__ st_r,
                  const A* __restrict__ st_d, const long long* __restrict__ t_indptr,
                  const int* __restrict__ t_brows, const int* __restrict__ t_mask_index,
                  const unsigned* __restrict__ t_mbits, const int* __restrict__ order, int H,
                  int Hkv, int P, int PO, int n_q, int n_k, int d, int dv, int bq, int bk,
                  int t_mwords, int subs, A scale, A softcap, int use_softcap, int finite) {
  using W = Bwd<T, A, TM, TN, DMAX>;
  constexpr int BM = W::BM, BN = W::BN;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const typename W::Smem sm = W::carve(smem_raw);

  const BlockRowTile<BM> tile(order, Hkv, PO, n_k, bk, subs);  // keys of a block column
  if (tile.nrows <= 0) return;
  const int g = tile.head, b = tile.batch, nbk = tile.nb, sub = tile.sub, bj = tile.brow;
  const int c0 = tile.row0, nrows = tile.nrows;
  const long long bhk = (long long)b * Hkv + g;
  BlockWalk<BM, BN> walk{t_indptr, t_brows, t_mask_index, t_mbits, P, nbk, bj, sub * BM, nrows,
                         bk, bq, t_mwords, n_q, 0, 0, 0, 0};
  backward_dkdv_rows<T, A, TM, TN, DMAX>(sm, walk, q, dout, k + bhk * n_k * d, v + bhk * n_k * dv,
                                         dk + bhk * n_k * d, dvout + bhk * n_k * dv, st_m, st_r,
                                         st_d, b, H, g, H / Hkv, n_q, c0, nrows, d, dv, scale,
                                         softcap, use_softcap != 0, finite != 0);
}

}  // namespace sparse_ref

#ifdef SPARSE_REF_INSTANTIATE
namespace sparse_ref {
#define SR_BSR_BWD(T, A, TM, TN, D)                                                                 \
  template __global__ void bsr_backward_dq<T, A, TM, TN, D>(                                       \
      const T*, const T*, const T*, const T*, T*, A*, A*, A*, const long long*, const int*,        \
      const int*, const unsigned*, const int*, int, int, int, int, int, int, int, int, int, int,   \
      int, A, A, int, int);                                                                        \
  template __global__ void bsr_backward_dkdv<T, A, TM, TN, D>(                                     \
      const T*, const T*, const T*, const T*, T*, T*, const A*, const A*, const A*,                \
      const long long*, const int*, const int*, const unsigned*, const int*, int, int, int, int,   \
      int, int, int, int, int, int, int, int, A, A, int, int);
SR_BSR_BWD(float, float, 4, 4, 128)
SR_BSR_BWD(float, float, 2, 2, 256)
SR_BSR_BWD(double, double, 2, 2, 128)
SR_BSR_BWD(double, double, 1, 2, 256)
SR_BSR_BWD(bf16_t, float, 4, 4, 64)
}  // namespace sparse_ref
#endif
