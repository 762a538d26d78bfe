// Hopper warpgroup tensor-core helpers (sm_90a only: wgmma.mma_async) for bsr_forward_wgmma.cu:
// 128-byte swizzled shared-memory tiles filled by cp.async, their matrix descriptors, and the
// wgmma shapes the forward uses, with fp32 accumulation.
//
// Swizzled tiles. A tile of ROWS rows x 128 16-bit columns is two panels of ROWS x 64 columns,
// panel p holding columns 64 p .. 64 p + 63, ROWS * 128 bytes each and 1024-byte aligned. Row r of
// a panel is 128 bytes at r * 128, and its 16-byte piece j (columns 8 j .. 8 j + 7 of the panel)
// sits at piece j ^ (r % 8): the hardware's 128-byte swizzle, which spreads the eight rows that one
// wgmma row group reads over all 32 banks.
//
// Descriptors (PTX ISA, "Matrix Descriptor Format"): start address >> 4 in bits 0-13, leading
// byte offset >> 4 in bits 16-29, stride byte offset >> 4 in bits 32-45, swizzle mode in bits
// 62-63 (1: 128-byte). For an operand read along its rows (K-major: Q and K in S = Q K^T) the
// stride byte offset is the distance of two 8-row groups (1024 bytes) and the leading one is unused;
// the k-th 16-column step starts 32 k bytes into the panel, the swizzle being applied to the final
// address. For an operand read across its rows (MN-major: V in O = P V, its columns the N
// dimension) the leading byte offset is the distance of the two panels and the stride byte offset
// that of two 8-row (8-key) groups.
//
// Accumulator layout (m64nNk16): warp w of the warpgroup holds rows 16 w .. 16 w + 15, laid out as
// mma.sync.m16n8k16's C fragment repeated over the N / 8 n-tiles; a register A operand is each
// warp's 16 x 16 A fragment of mma.sync. So fragment_softmax.cuh and mma_common.cuh's c_to_a
// apply as they are.
#pragma once
#include "mma_common.cuh"

namespace sparse_ref {

// byte offset of 16-byte piece `piece` (columns 8 piece ..) of row r in a swizzled ROWS-row tile
template <int ROWS>
__device__ __forceinline__ unsigned sw128_offset(int r, int piece) {
  return (unsigned)((piece >> 3) * ROWS * 128 + r * 128 + (((piece & 7) ^ (r & 7)) << 4));
}

// cp.async of rows [r0, r0 + nvalid) x columns [0, ncols) of a row-major matrix with row length
// ncols into the swizzled ROWS x 128 tile at shared address dst; the rest of the tile is zero-filled.
// ncols % 8 == 0. Each thread copies a fixed piece every THREADS / 16 rows (a multiple of 8, so the
// swizzle of its pieces does not change and their offsets are constants).
template <int ROWS, int THREADS, typename T>
__device__ __forceinline__ void tile_async_sw128(unsigned dst, const T* src, long long r0, int nvalid,
                                                 int ncols, int tid) {
  constexpr int PIECES = 16, RSTEP = THREADS / PIECES;
  static_assert(THREADS % PIECES == 0 && RSTEP % 8 == 0 && ROWS % RSTEP == 0, "tile shape");
  const int rr = tid / PIECES, piece = tid % PIECES;
  const bool col_ok = piece * 8 < ncols;
  const T* from = src + (r0 + rr) * ncols + piece * 8;
  const long long step = (long long)RSTEP * ncols;
  const unsigned to = dst + sw128_offset<ROWS>(rr, piece);
#pragma unroll
  for (int i = 0; i < ROWS / RSTEP; ++i) {
    const bool ok = col_ok && rr + i * RSTEP < nvalid;
    cp_async16(to + (unsigned)(i * RSTEP * 128), ok ? from : src, ok);
    from += step;
  }
}

// matrix descriptor of a 128-byte swizzled operand at shared address saddr
__device__ __forceinline__ unsigned long long sw128_desc(unsigned saddr, unsigned leading_bytes,
                                                         unsigned stride_bytes) {
  return (unsigned long long)((saddr & 0x3ffffu) >> 4) |
         ((unsigned long long)(leading_bytes >> 4) << 16) |
         ((unsigned long long)(stride_bytes >> 4) << 32) | (1ull << 62);
}

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() {
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
template <int N> __device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// Keeps the compiler from moving reads or writes of accumulator registers across a wgmma wait.
template <int N>
__device__ __forceinline__ void wgmma_hold(float (&d)[N][4]) {
#pragma unroll
  for (int i = 0; i < N; ++i)
#pragma unroll
    for (int e = 0; e < 4; ++e) asm volatile("" : "+f"(d[i][e])::"memory");
}

// mbarriers in shared memory (8 bytes each, at shared address bar): the 3-stage forward's
// warpgroups hand K and V buffers to each other through them instead of a CTA-wide barrier per
// step. A phase completes once `count` arrivals came; waits name the phase by its parity.
__device__ __forceinline__ void mbar_init(unsigned bar, unsigned count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_arrive(unsigned bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
// one arrival once every cp.async this thread issued so far has landed
__device__ __forceinline__ void mbar_arrive_on_copies(unsigned bar) {
  asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(bar) : "memory");
}
// blocks until the phase of parity `parity` has completed
__device__ __forceinline__ void mbar_wait(unsigned bar, unsigned parity) {
  unsigned done;
  do {
    asm volatile("{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
                 "selp.u32 %0, 1, 0, p;\n}\n"
                 : "=r"(done)
                 : "r"(bar), "r"(parity)
                 : "memory");
  } while (!done);
}

#define SR_F4(d, j) "+f"(d[j][0]), "+f"(d[j][1]), "+f"(d[j][2]), "+f"(d[j][3])
#define SR_F32(d) SR_F4(d, 0), SR_F4(d, 1), SR_F4(d, 2), SR_F4(d, 3), SR_F4(d, 4), SR_F4(d, 5), \
                  SR_F4(d, 6), SR_F4(d, 7)
#define SR_F64(d) SR_F32(d), SR_F4(d, 8), SR_F4(d, 9), SR_F4(d, 10), SR_F4(d, 11), SR_F4(d, 12), \
                  SR_F4(d, 13), SR_F4(d, 14), SR_F4(d, 15)
#define SR_D32 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, " \
               "%18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}"
#define SR_D64 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, " \
               "%18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, " \
               "%34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, " \
               "%50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}"

// ss: D[64 x 8 NT] = A B^T (+ D when accumulate) for NT = 8 or 16 (m64n64k16, m64n128k16), A
// (64 x 16) and B (8 NT x 16) K-major in shared memory. rs_n128: D[64 x 128] += A B, A (64 x 16)
// in registers, B (16 x 128) MN-major.
#define SR_WGMMA_SS(TY, NT, N, DREGS, DOUT, IA, IB, IP)                                           \
  static __device__ __forceinline__ void ss(float (&d)[NT][4], unsigned long long a,              \
                                            unsigned long long b, int accumulate) {               \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %" #IP ", 0;\n"                                 \
                 "wgmma.mma_async.sync.aligned.m64n" #N "k16.f32." TY "." TY " " DREGS            \
                 ", %" #IA ", %" #IB ", p, 1, 1, 0, 0;\n}\n"                                       \
                 : DOUT(d)                                                                         \
                 : "l"(a), "l"(b), "r"(accumulate));                                               \
  }
#define SR_WGMMA(TY)                                                                                \
  SR_WGMMA_SS(TY, 8, 64, SR_D32, SR_F32, 32, 33, 34)                                               \
  SR_WGMMA_SS(TY, 16, 128, SR_D64, SR_F64, 64, 65, 66)                                             \
  static __device__ __forceinline__ void rs_n128(float (&d)[16][4], const unsigned (&a)[4],       \
                                                 unsigned long long b) {                           \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"                                      \
                 "wgmma.mma_async.sync.aligned.m64n128k16.f32." TY "." TY " " SR_D64              \
                 ", {%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"                                  \
                 : SR_F64(d)                                                                       \
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(1));                    \
  }

template <typename T> struct Wgmma;
template <> struct Wgmma<bf16_t> { SR_WGMMA("bf16") };
template <> struct Wgmma<f16_t> { SR_WGMMA("f16") };

#undef SR_WGMMA
#undef SR_WGMMA_SS
#undef SR_D64
#undef SR_D32
#undef SR_F64
#undef SR_F32
#undef SR_F4

}  // namespace sparse_ref
