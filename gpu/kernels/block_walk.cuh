// Walking the stored blocks of one block row of a block form in key tiles of BN = 16*TN columns:
// the bitmap of a tile (BM rows x BN columns, packed 32 columns per word) from the block's packed
// mask, or all in-range bits for a full block. Used by the block-form backward
// (bsr_backward_simt.cu) over the block form and, transposed, over its block columns.
//
// Block form: indptr (P, nb + 1) int64 absolute offsets into the stored blocks; cols (nblocks,)
// int32 block columns, sorted within a block row; mask_index (nblocks,) int32, -1 for a full block
// (every in-range entry allowed), else the index of its mask in mbits (n_partial, rows, mwords)
// uint32, bit j%32 of word j/32 (bits past the block's columns zero). A stored block of `cols`
// columns is ceil(cols / BN) tiles; a tile past the last column (n_cols) is skipped.
#pragma once
#include "attn_common.cuh"

namespace sparse_ref {

// bitmap[r * (BN/32) + w] of tile chunk `c` of a block: rows [0, BM) of the tile are rows
// [brow0, brow0 + BM) of the block (rows past nrows get no bits), `nk` valid columns. Every thread
// of the CTA (THREADS) writes its share; the caller synchronises before the bitmap is read.
template <int BM, int BN, int THREADS = 256>
__device__ __forceinline__ void block_tile_mask(unsigned* bitmap, const unsigned* __restrict__ mbits,
                                                int mi, int c, int nk, int brow0, int nrows,
                                                int rows_per_block, int mwords) {
  constexpr int MW = BN / 32;
  for (int x = threadIdx.x; x < BM * MW; x += THREADS) {
    const int r = x / MW, w = x % MW;
    const int nv = nk - 32 * w;
    const unsigned valid = nv >= 32 ? 0xffffffffu : (nv <= 0 ? 0u : ((1u << nv) - 1u));
    unsigned bits = 0u;
    if (r < nrows) {
      if (mi < 0) {
        bits = valid;
      } else {
        const int wi = c * MW + w;
        if (wi < mwords)
          bits = mbits[((long long)mi * rows_per_block + brow0 + r) * mwords + wi] & valid;
      }
    }
    bitmap[r * MW + w] = bits;
  }
}

// The rows [brow0, brow0 + nrows) of block row `bi` of one head's block form, walked tile by tile
// (the Walk policy of backward_core.cuh). rows/cols: the block's shape in this form.
template <int BM, int BN>
struct BlockWalk {
  const long long* indptr;
  const int* cols;
  const int* mask_index;
  const unsigned* mbits;
  int P, nb, bi, brow0, nrows, rows, bcols, mwords, n_cols;
  long long kb0, total, cur, nxt;

  __device__ __forceinline__ int cpb() const { return (bcols + BN - 1) / BN; }
  // first column of tile t and its number of valid columns (<= 0: past n_cols)
  __device__ __forceinline__ int start(long long t) const {
    return cols[kb0 + t / cpb()] * bcols + (int)(t % cpb()) * BN;
  }
  __device__ __forceinline__ int valid(long long t) const {
    const int c0 = start(t);
    const int kend = min(cols[kb0 + t / cpb()] * bcols + bcols, n_cols);
    return min(BN, kend - c0);
  }
  __device__ __forceinline__ long long first_from(long long t) const {
    while (t < total && valid(t) <= 0) ++t;
    return t;
  }
  __device__ __forceinline__ void fill(unsigned* bitmap, long long t) const {
    block_tile_mask<BM, BN>(bitmap, mbits, mask_index[kb0 + t / cpb()], (int)(t % cpb()), valid(t),
                            brow0, nrows, rows, mwords);
  }

  template <typename S>
  __device__ __forceinline__ int begin(const S& sm, int h) {
    const long long* ip = row_offsets(indptr, P, h, nb, bi);
    kb0 = ip[0];
    total = (ip[1] - kb0) * cpb();
    cur = first_from(0);
    if (cur < total) fill(sm.mask, cur);
    __syncthreads();
    return cur < total ? start(cur) : BIG_INDEX;
  }
  template <typename S>
  __device__ __forceinline__ int next(const S&) {
    nxt = first_from(cur + 1);
    return nxt < total ? start(nxt) : BIG_INDEX;
  }
  __device__ __forceinline__ int width(int) const { return valid(cur); }
  template <typename S>
  __device__ __forceinline__ void stage(const S&, int) const {}
  template <typename S>
  __device__ __forceinline__ void build(const S&, unsigned* bitmap, int j1) const {
    if (j1 != BIG_INDEX) fill(bitmap, nxt);
  }
  __device__ __forceinline__ void step() { cur = nxt; }
};

}  // namespace sparse_ref
