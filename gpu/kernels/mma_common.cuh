// Tensor-core helpers shared by the fp16/bf16 block-form kernels (bsr_forward_mma in
// bsr_forward.cu, the kernels of bsr_backward_mma.cu): mma.sync.m16n8k16 with fp32 accumulation,
// ldmatrix fragment loads from padded shared-memory tiles, cp.async tile loads, and the walk over
// the stored blocks of one block row (or column) in chunks of 64.
//
// Tiles in shared memory are row-major with LDS = D + 8 elements per row (16 bytes of padding, so
// that ldmatrix's eight 16-byte rows hit eight different bank groups). Fragment layouts are PTX's
// for m16n8k16: thread (g = lane / 4, t4 = lane % 4) holds C[g][2 t4 + {0,1}] in c[0..1] and
// C[g + 8][2 t4 + {0,1}] in c[2..3] of each 16 x 8 tile.
#pragma once
#include "attn_common.cuh"

namespace sparse_ref {

template <typename T> struct MmaOp;
template <> struct MmaOp<bf16_t> {
  static __device__ __forceinline__ void run(float (&c)[4], const unsigned (&a)[4], unsigned b0,
                                             unsigned b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
};
template <> struct MmaOp<f16_t> {
  static __device__ __forceinline__ void run(float (&c)[4], const unsigned (&a)[4], unsigned b0,
                                             unsigned b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
};

// ldmatrix at a shared address (smem_addr). The fragment helpers below add their offsets to the
// tile's address in 32 bits, so that one address conversion serves a whole tile and the constant
// parts fold into the instruction.
__device__ __forceinline__ void ldsm_x4(unsigned (&r)[4], unsigned addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr)
               : "memory");
}
__device__ __forceinline__ void ldsm_x4_t(unsigned (&r)[4], unsigned addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr)
               : "memory");
}
// shared address of element (row, col) of a row-major tile with LDS elements per row
template <int LDS, typename T>
__device__ __forceinline__ unsigned tile_addr(const T* tile, int row, int col) {
  return smem_addr(tile) + (unsigned)(row * LDS + col) * (unsigned)sizeof(T);
}
// ldmatrix of the 8 x 8 matrices at rows r0 + (lane's row), columns c0 + (lane's column) of a
// row-major tile: the lane's part and the tile's address are summed first, so that they are shared
// by every call on the tile and the constant (r0, c0) part folds into the instruction's offset.
template <int LDS, bool TRANS, typename T>
__device__ __forceinline__ void ldsm_tile(unsigned (&r)[4], const T* tile, int lane_row, int lane_col,
                                          int r0, int c0) {
  const unsigned base = tile_addr<LDS>(tile, lane_row, lane_col);
  const unsigned addr = base + (unsigned)((r0 * LDS + c0) * (int)sizeof(T));
  if constexpr (TRANS) {
    ldsm_x4_t(r, addr);
  } else {
    ldsm_x4(r, addr);
  }
}

// A fragment (16 x 16) of a row-major tile: rows row0.., columns 16 ks..
template <int LDS, typename T>
__device__ __forceinline__ void frag_a(unsigned (&a)[4], const T* tile, int row0, int ks, int lane) {
  ldsm_tile<LDS, false>(a, tile, (lane & 7) + ((lane >> 3) & 1) * 8, (lane >> 4) * 8, row0, ks * 16);
}
// B fragments of two n-tiles for C = A B^T: B^T's rows 16 np.. (n) of a row-major tile, columns
// 16 ks.. (k); b[0..1] is n-tile 2 np, b[2..3] n-tile 2 np + 1
template <int LDS, typename T>
__device__ __forceinline__ void frag_bt(unsigned (&b)[4], const T* tile, int np, int ks, int lane) {
  ldsm_tile<LDS, false>(b, tile, (lane & 7) + ((lane >> 4) << 3), ((lane >> 3) & 1) * 8, np * 16,
                        ks * 16);
}
// B fragments of two n-tiles for C = A B: rows 16 ks.. (k) of a row-major tile, columns 16 np..
// (n), through ldmatrix.trans
template <int LDS, typename T>
__device__ __forceinline__ void frag_b(unsigned (&b)[4], const T* tile, int np, int ks, int lane) {
  ldsm_tile<LDS, true>(b, tile, (lane & 7) + ((lane >> 3) & 1) * 8, (lane >> 4) * 8, ks * 16,
                       np * 16);
}

// The accumulator tiles 2 ks and 2 ks + 1 of a 16 x (8 NT) fp32 C fragment, rounded to T, as the A
// fragment of k-step ks (FlashAttention-2's register reuse of P).
template <typename T, int NT>
__device__ __forceinline__ void c_to_a(unsigned (&a)[4], const float (&c)[NT][4], int ks) {
  a[0] = pack2<T>(c[2 * ks][0], c[2 * ks][1]);
  a[1] = pack2<T>(c[2 * ks][2], c[2 * ks][3]);
  a[2] = pack2<T>(c[2 * ks + 1][0], c[2 * ks + 1][1]);
  a[3] = pack2<T>(c[2 * ks + 1][2], c[2 * ks + 1][3]);
}

// Warp product C[16 x 8 NT] += A[16 x 16 KS] B^T, A rows arow.. of tile `a`, B rows 0..8 NT of
// tile `b` (both row-major, k along the row).
template <typename T, int LDS, int NT, int KS>
__device__ __forceinline__ void warp_abt(float (&c)[NT][4], const T* a, int arow, const T* b, int lane) {
#pragma unroll
  for (int ks = 0; ks < KS; ++ks) {
    unsigned af[4];
    frag_a<LDS>(af, a, arow, ks, lane);
#pragma unroll
    for (int np = 0; np < NT / 2; ++np) {
      unsigned bf[4];
      frag_bt<LDS>(bf, b, np, ks, lane);
      MmaOp<T>::run(c[2 * np], af, bf[0], bf[1]);
      MmaOp<T>::run(c[2 * np + 1], af, bf[2], bf[3]);
    }
  }
}

// Warp product C[16 x 8 ND] += W B, W the fp32 16 x (8 NT) fragment `w` rounded to T, B rows
// 0..8 NT of a row-major tile (k along the column).
template <typename T, int LDS, int NT, int ND>
__device__ __forceinline__ void warp_wb(float (&c)[ND][4], const float (&w)[NT][4], const T* b, int lane) {
#pragma unroll
  for (int ks = 0; ks < NT / 2; ++ks) {
    unsigned a[4];
    c_to_a<T, NT>(a, w, ks);
#pragma unroll
    for (int np = 0; np < ND / 2; ++np) {
      unsigned bf[4];
      frag_b<LDS>(bf, b, np, ks, lane);
      MmaOp<T>::run(c[2 * np], a, bf[0], bf[1]);
      MmaOp<T>::run(c[2 * np + 1], a, bf[2], bf[3]);
    }
  }
}

// cp.async of rows [r0, r0 + nvalid) x columns [0, ncols) of a row-major matrix with row length
// ncols into a ROWS x LDS tile; the rest of the ROWS x D tile is zero-filled. ncols % 8 == 0.
// Unrolled: each thread copies 16-byte pieces at a fixed column, every THREADS / (D / 8) rows.
template <int ROWS, int D, int THREADS, typename T>
__device__ __forceinline__ void tile_async(T* dst, const T* src, long long r0, int nvalid, int ncols,
                                           int tid) {
  constexpr int CPR = D / 8, LDS = D + 8;
  if constexpr (THREADS % CPR == 0 && ROWS % (THREADS / CPR) == 0) {
    constexpr int RSTEP = THREADS / CPR;
    const int rr = tid / CPR, cc = (tid % CPR) * 8;
    const bool col_ok = cc < ncols;
    const T* from = src + (r0 + rr) * ncols + cc;
    const long long step = (long long)RSTEP * ncols;
    const unsigned to = tile_addr<LDS>(dst, rr, cc);
#pragma unroll
    for (int i = 0; i < ROWS / RSTEP; ++i) {
      const bool ok = col_ok && rr + i * RSTEP < nvalid;
      cp_async16(to + (unsigned)(i * RSTEP * LDS * sizeof(T)), ok ? from : src, ok);
      from += step;
    }
  } else {
    for (int x = tid; x < ROWS * CPR; x += THREADS) {
      const int r = x / CPR, cc = (x % CPR) * 8;
      const bool ok = r < nvalid && cc < ncols;
      cp_async16(dst + r * LDS + cc, ok ? src + (r0 + r) * ncols + cc : src, ok);
    }
  }
}

// One step of a walk: indices [c0, c0 + nvalid) of the other axis (nvalid is 0 for a chunk wholly
// past n), mask mi (-1: full block), chunk c of its block, segment seg of the walk.
struct Chunk {
  long long c0;
  int nvalid, mi, c, seg;
};

// The walk over the stored blocks of one block row (block column of the transposed form), each cut
// into chunks of CW (64 or 128) along its other axis, in nseg segments one after another: segment
// s holds the stored blocks [ptr[s * stride], ptr[s * stride + 1]) (the query heads of a kv head's
// group in the dk/dv kernel; one segment elsewhere). next() gives the chunks in order, with no division per
// step and few live registers (two pointers and two counters advance); call it at most total()
// times.
template <int CW = 64>
struct ChunkCursor {
  const int* idx0;         // block index along the other axis, per stored block
  const int* mask_index0;  // per stored block
  const long long* ptr;    // segment s's range at ptr[s * stride]
  long long stride;
  int nseg, cpb, blen, n;  // segments; chunks per block, ceil(blen / CW); block length; extent
  const int* idx;          // the current stored block's entries
  const int* mi;
  int left, seg, c;        // blocks left in the segment (the current one included); chunk in block

  __device__ __forceinline__ ChunkCursor(const int* idx_, const int* mask_index_,
                                         const long long* ptr_, long long stride_, int nseg_,
                                         int blen_, int n_)
      : idx0(idx_), mask_index0(mask_index_), ptr(ptr_), stride(stride_), nseg(nseg_),
        cpb((blen_ + CW - 1) / CW), blen(blen_), n(n_), idx(idx_), mi(mask_index_), seg(-1), c(0) {
    enter_next_segment();
  }
  // the number of chunks, which the kernels keep in an int: one segment (a block row or column)
  // has at most n / CW chunks plus one per stored block, and the G segments of the dk/dv kernel
  // (a kv head's query heads) stay below 2^31 chunks for any Q that fits in device memory
  __device__ __forceinline__ long long total() const {
    long long t = 0;
    for (int s = 0; s < nseg; ++s) t += (ptr[s * stride + 1] - ptr[s * stride]) * cpb;
    return t;
  }
  __device__ __forceinline__ Chunk next() {
    Chunk ch;
    ch.mi = *mi;
    const long long start = (long long)*idx * blen;
    ch.c0 = start + (long long)c * CW;
    ch.nvalid = (int)max(0LL, min((long long)CW, min(start + blen, (long long)n) - ch.c0));
    ch.c = c;
    ch.seg = seg;
    if (++c == cpb) {
      c = 0;
      ++idx;
      ++mi;
      if (--left == 0) enter_next_segment();
    }
    return ch;
  }

 private:
  // move to the next segment that holds blocks (stay at the end when none is left)
  __device__ __forceinline__ void enter_next_segment() {
    left = 0;
    while (left == 0 && seg + 1 < nseg) {
      ++seg;
      const long long b0 = ptr[seg * stride];
      left = (int)(ptr[seg * stride + 1] - b0);
      idx = idx0 + b0;
      mi = mask_index0 + b0;
    }
  }
};

// The K and V tiles (BN x D, LDS = D + 8 per row) of the walk's next chunk into buffer buf of sK
// and sV: keys [c0, c0 + nvalid) of kb (row length d) and vb (row length dv). Returns the chunk.
template <int BN, int D, int THREADS, typename T>
__device__ __forceinline__ Chunk load_kv_chunk(ChunkCursor<>& walk, T* sK, T* sV, int buf,
                                               const T* kb, const T* vb, int d, int dv, int tid) {
  constexpr int LDS = D + 8;
  const Chunk ch = walk.next();
  tile_async<BN, D, THREADS>(sK + buf * BN * LDS, kb, ch.c0, ch.nvalid, d, tid);
  tile_async<BN, D, THREADS>(sV + buf * BN * LDS, vb, ch.c0, ch.nvalid, dv, tid);
  return ch;
}

// 2^x on the MUFU unit, subnormal results flushed to zero (exp2f adds a rescaling around it for
// them). p = 2^(s - m) below 2^-126 against a row sum >= 1 is far below every tolerance.
__device__ __forceinline__ float ex2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// The packed mask words of rows row and row + 8 (of a block of `rows` rows) for the 32 W columns
// of chunk c: mw[hh][w] covers columns 32 w.. of the chunk. Full blocks (mi < 0) give all ones.
template <int W>
__device__ __forceinline__ void chunk_mask(unsigned (&mw)[2][W], const unsigned* __restrict__ mbits,
                                           int mi, int row, int rows, int words, int c) {
#pragma unroll
  for (int hh = 0; hh < 2; ++hh)
#pragma unroll
    for (int w = 0; w < W; ++w) {
      const int r = row + 8 * hh, wi = c * W + w;
      mw[hh][w] = mi < 0 ? 0xffffffffu
                  : (r < rows && wi < words) ? __ldg(mbits + ((long long)mi * rows + r) * words + wi)
                                             : 0u;
    }
}

// Writes of shared memory through the generic proxy (cp.async, st.shared) made visible to the
// async proxy, through which wgmma reads its shared-memory operands: by each writing thread before
// the barrier that precedes the reads, or by each reading thread after the mbarrier wait that
// orders the writes before it (bsr_forward_wgmma's 3-stage schedule).
__device__ __forceinline__ void fence_proxy_async() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

// Double buffering over the steps of a walk: issue step t + 1's loads (load(its buffer)) before
// waiting for step t's, then a barrier, after which step t's buffer (t & 1) is ready (to wgmma as
// well when ASYNC_PROXY).
template <bool ASYNC_PROXY = false, typename Load>
__device__ __forceinline__ void await_step(Load& load, int t, int total) {
  if (t + 1 < total) {
    load((t + 1) & 1);
    cp_async_commit();
    cp_async_wait<1>();
  } else {
    cp_async_wait<0>();
  }
  if constexpr (ASYNC_PROXY) fence_proxy_async();
  __syncthreads();
}

}  // namespace sparse_ref
