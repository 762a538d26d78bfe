// Walking the keys of a tile of CSR rows in windows of consecutive keys, shared by the CSR forward
// and backward kernels (a CTA of 256 threads, 8 warps; each warp serves rows w, w + 8, ...).
//
// Per row r of the tile, shared memory holds ptr[r] / end[r] (the row's CSR entries not yet consumed),
// next[r] (its next key, BIG_INDEX when none) and up to LDI = BN + 1 staged entries idx[r * LDI ..].
// A window [j0, j0 + BN) starts at the smallest next key (tile_min), so windows that no row needs
// are skipped; build_mask turns the staged entries inside it into a bitmap of BN bits per row.
#pragma once
#include "attn_common.cuh"

namespace sparse_ref {

// smallest next[0..BM), computed redundantly by every warp (no extra barrier)
template <int BM>
__device__ __forceinline__ int tile_min(const int* next, int lane) {
  int mn = BIG_INDEX;
  for (int r = lane; r < BM; r += 32) mn = min(mn, next[r]);
#pragma unroll
  for (int off = 16; off >= 1; off >>= 1) mn = min(mn, __shfl_xor_sync(0xffffffffu, mn, off));
  return mn;
}

// Stage the next LDI CSR entries of each of this warp's rows (w, w + 8, ...) in sIdx.
template <int BM, int LDI>
__device__ __forceinline__ void stage_indices(const int* __restrict__ indices, int* sidx,
                                              const long long* ptr, const long long* end, int warp,
                                              int lane) {
  for (int r = warp; r < BM; r += 8) {
    const long long p = ptr[r];
    const long long cnt = min((long long)LDI, end[r] - p);
    for (int c = lane; c < cnt; c += 32) cp_async4(sidx + r * LDI + c, indices + p + c);
  }
}

// Bitmap of the window [j0, j0 + BN) for each of this warp's rows from the staged entries; advance
// each row's pointer past the entries it consumed; next[r] = the row's next key (BIG_INDEX: none).
// A row has at most BN entries in the window (its entries are distinct), so LDI = BN + 1 staged
// entries settle it.
template <int BM, int BN>
__device__ __forceinline__ void build_mask(const int* sidx, unsigned* mask, long long* ptr,
                                           const long long* end, int* next, int j0, int warp,
                                           int lane) {
  constexpr int MW = BN / 32, LPR = BN / 32, LDI = BN + 1;
  for (int r = warp; r < BM; r += 8) {
    const long long p = ptr[r];
    const long long avail = end[r] - p;
    int ix[LPR];
#pragma unroll
    for (int qq = 0; qq < LPR; ++qq) {
      const int c = 32 * qq + lane;
      ix[qq] = c < avail ? sidx[r * LDI + c] : BIG_INDEX;
    }
    const int ixx = BN < avail ? sidx[r * LDI + BN] : BIG_INDEX;
    unsigned bits[MW];
#pragma unroll
    for (int w = 0; w < MW; ++w) bits[w] = 0u;
    int cnt = 0;
#pragma unroll
    for (int qq = 0; qq < LPR; ++qq) {
      const unsigned rel = (unsigned)(ix[qq] - j0);  // entries left are >= j0
      const bool in = rel < (unsigned)BN;
      cnt += __popc(__ballot_sync(0xffffffffu, in));
#pragma unroll
      for (int w = 0; w < MW; ++w)
        if (in && (int)(rel >> 5) == w) bits[w] |= 1u << (rel & 31);
    }
#pragma unroll
    for (int w = 0; w < MW; ++w) bits[w] = __reduce_or_sync(0xffffffffu, bits[w]);
    int nxt = ixx;
#pragma unroll
    for (int qq = 0; qq < LPR; ++qq) {
      const int val = __shfl_sync(0xffffffffu, ix[qq], cnt & 31);
      if (qq == (cnt >> 5)) nxt = val;
    }
    __syncwarp();
    if (lane == 0) {
#pragma unroll
      for (int w = 0; w < MW; ++w) mask[r * MW + w] = bits[w];
      ptr[r] = p + cnt;
      next[r] = nxt;
    }
    __syncwarp();
  }
}

}  // namespace sparse_ref
