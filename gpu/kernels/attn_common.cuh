// Shared helpers for the sparse-ref CUDA kernels (no standard headers: builds with NVRTC and nvcc).
//
// Element types: float, double, and the 16-bit tags f16_t / bf16_t (raw bits; CuPy has no bf16
// dtype, so the host passes uint16 views). Accumulator types: float (f32/f16/bf16), double (f64).
#pragma once

namespace sparse_ref {

struct f16_t { unsigned short x; };
struct bf16_t { unsigned short x; };

template <typename A, typename B> struct is_same { static constexpr bool value = false; };
template <typename A> struct is_same<A, A> { static constexpr bool value = true; };

// ---------------------------------------------------------------- math per accumulator type
template <typename A> struct num;
template <> struct num<float> {
  static __device__ __forceinline__ float inf() { return __int_as_float(0x7f800000); }
  static __device__ __forceinline__ float exp_(float x) { return expf(x); }
  static __device__ __forceinline__ float log_(float x) { return logf(x); }
  static __device__ __forceinline__ float tanh_(float x) { return tanhf(x); }
  static __device__ __forceinline__ float max_(float a, float b) { return fmaxf(a, b); }
};
template <> struct num<double> {
  static __device__ __forceinline__ double inf() { return __longlong_as_double(0x7ff0000000000000LL); }
  static __device__ __forceinline__ double exp_(double x) { return exp(x); }
  static __device__ __forceinline__ double log_(double x) { return log(x); }
  static __device__ __forceinline__ double tanh_(double x) { return tanh(x); }
  static __device__ __forceinline__ double max_(double a, double b) { return fmax(a, b); }
};

// ---------------------------------------------------------------- conversions
template <typename A> __device__ __forceinline__ A load_acc(const float* p) { return (A)*p; }
template <typename A> __device__ __forceinline__ A load_acc(const double* p) { return (A)*p; }
template <typename A> __device__ __forceinline__ A load_acc(const f16_t* p) {
  float f;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(p->x));
  return (A)f;
}
template <typename A> __device__ __forceinline__ A load_acc(const bf16_t* p) {
  return (A)__uint_as_float(((unsigned)p->x) << 16);
}

__device__ __forceinline__ void store_val(float* p, float x) { *p = x; }
__device__ __forceinline__ void store_val(double* p, double x) { *p = x; }
__device__ __forceinline__ void store_val(f16_t* p, float x) {
  unsigned short h;
  asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(x));
  p->x = h;
}
__device__ __forceinline__ void store_val(bf16_t* p, float x) {
  unsigned short h;
  asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(h) : "f"(x));
  p->x = h;
}

// two floats -> packed 16-bit pair, `lo` in the low half (the lower k / column index)
template <typename T> __device__ __forceinline__ unsigned pack2(float lo, float hi);
template <> __device__ __forceinline__ unsigned pack2<bf16_t>(float lo, float hi) {
  unsigned r;
  asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
  return r;
}
template <> __device__ __forceinline__ unsigned pack2<f16_t>(float lo, float hi) {
  unsigned r;
  asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
  return r;
}

// ---------------------------------------------------------------- vectors and async copies
template <typename A, int N> struct alignas(sizeof(A) * N) VecN { A v[N]; };

__device__ __forceinline__ unsigned smem_addr(const void* p) {
  unsigned a;
  asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(a) : "l"(p));
  return a;
}
// 16-byte global->shared copy to shared address saddr (smem_addr); zero-fills when !valid (gmem
// must still be a valid address)
__device__ __forceinline__ void cp_async16(unsigned saddr, const void* gmem, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(saddr), "l"(gmem),
               "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool valid) {
  cp_async16(smem_addr(smem), gmem, valid);
}
// 4-byte global->shared copy (always valid source)
__device__ __forceinline__ void cp_async4(void* smem, const void* gmem) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(smem_addr(smem)), "l"(gmem));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> __device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ float shfl_xor(float x, int m) { return __shfl_xor_sync(0xffffffffu, x, m); }
__device__ __forceinline__ double shfl_xor(double x, int m) { return __shfl_xor_sync(0xffffffffu, x, m); }

static constexpr int BIG_INDEX = 0x7fffffff;

// The planes of query head `head` of batch element `batch` under GQA: bh indexes the (B, H) planes
// of q, dout, out, lse and dq; bhk the (B, Hkv) planes of k and v of its kv head head / (H / Hkv).
struct HeadPlanes {
  long long bh, bhk;
  __device__ __forceinline__ HeadPlanes(int batch, int head, int H, int Hkv)
      : bh((long long)batch * H + head), bhk((long long)batch * Hkv + head / (H / Hkv)) {}
};

// The offsets of row `row` in a pattern's indptr of P planes of nrows + 1 int64 offsets each (CSR
// rows or block rows); one plane serves every head when P == 1.
__device__ __forceinline__ const long long* row_offsets(const long long* indptr, int P, int head,
                                                        int nrows, int row) {
  return indptr + (long long)(P == 1 ? 0 : head) * (nrows + 1) + row;
}

// The rows a CTA owns in a kernel over a block form (forward, backward dq) or its transpose
// (backward dk/dv). blockIdx.x runs over (sub-tile, head) with heads fastest; each block row is
// `subs` sub-tiles of BM rows, and block rows come in `order` (each head's block rows sorted by
// stored blocks, heaviest first, so the longest CTAs start first); blockIdx.y is the batch
// element. order has one row of nb entries per head, or one for all heads when planes == 1.
// Rows [row0, row0 + nrows) of block row `brow`; nrows <= 0 (uniform over the CTA): nothing to do.
template <int BM>
struct BlockRowTile {
  int head, batch, nb, sub, brow, row0, nrows;
  __device__ __forceinline__ BlockRowTile(const int* __restrict__ order, int heads, int planes,
                                          int n, int blen, int subs) {
    head = blockIdx.x % heads;
    batch = blockIdx.y;
    nb = (n + blen - 1) / blen;
    const int rest = blockIdx.x / heads;
    sub = rest % subs;
    brow = order[(long long)(planes == 1 ? 0 : head) * nb + rest / subs];
    row0 = brow * blen + sub * BM;
    nrows = min(BM, min(brow * blen + blen, n) - row0);
  }
};

}  // namespace sparse_ref
