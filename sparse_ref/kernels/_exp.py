"""A vectorisable ``exp`` for the Numba kernels (float32 and float64).

``math.exp`` inside a Numba loop becomes a call to libm that LLVM cannot vectorise (Numba uses
Intel SVML only when ``icc_rt`` is installed), and the softmax spends most of its non-GEMM time
there. ``fast_exp`` is the classic Cody-Waite reduction plus a polynomial, written with integer bit
operations so LLVM turns a loop of calls into SIMD code:

    x = n * ln2 + r,  |r| <= ln2 / 2,   exp(x) = 2**n * P(r)

``n`` is rounded with the 1.5 * 2**mantissa_bits "magic number" (no float -> int conversion, which
is undefined for NaN in LLVM), and ``2**n`` is built from exponent bits in two halves so subnormal
results come out right. Special values follow IEEE: ``exp(-inf) = 0``, ``exp(+inf) = inf``,
``exp(nan) = nan``. Accuracy: about 1 ulp (float32: the Cephes degree-5 minimax polynomial,
float64: Taylor to degree 13), inside the DESIGN §9 tolerance by a wide margin; the error is
tested against ``np.exp`` in ``tests/test_kernels_bsr_forward.py``.

The functions are compiled without ``reassoc`` on purpose: reassociation would cancel the
magic-number rounding and merge the two halves of the Cody-Waite constant.
"""

from __future__ import annotations

import numba
from llvmlite import ir
from numba import types
from numba.extending import intrinsic, overload

__all__ = ["fast_exp"]

_FLAGS = {"contract"}  # FMA contraction only: no reassociation, no nnan/ninf


@intrinsic
def _bits(typingctx, x):  # type: ignore[no-untyped-def]
    """Reinterpret a float32/float64 as int32/int64 (LLVM bitcast)."""
    if x == types.float32:
        sig, width = types.int32(x), 32
    elif x == types.float64:
        sig, width = types.int64(x), 64
    else:
        return None

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        return builder.bitcast(args[0], ir.IntType(width))

    return sig, codegen


@intrinsic
def _float_from_bits(typingctx, i):  # type: ignore[no-untyped-def]
    """Reinterpret an int32/int64 as float32/float64 (LLVM bitcast)."""
    if i == types.int32:
        sig, llty = types.float32(i), ir.FloatType()
    elif i == types.int64:
        sig, llty = types.float64(i), ir.DoubleType()
    else:
        return None

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        return builder.bitcast(args[0], llty)

    return sig, codegen


@numba.njit(fastmath=_FLAGS, cache=True)
def _exp32(x):  # type: ignore[no-untyped-def]
    f = numba.float32
    i = numba.int32
    xc = x
    if xc < f(-104.0):  # below the smallest subnormal: handled by the select at the end
        xc = f(-104.0)
    if xc > f(88.8):
        xc = f(88.8)
    magic = f(12582912.0)  # 1.5 * 2**23: adding it rounds to an integer in the low mantissa bits
    t = xc * f(1.44269504088896341) + magic
    n = _bits(t) - _bits(magic)  # exact integer n = round(x / ln2)
    nf = t - magic
    r = xc - nf * f(0.693359375)  # ln2 split in two (Cody-Waite) so r is exact
    r = r - nf * f(-2.12194440e-4)
    p = f(1.9875691500e-4)  # Cephes expf minimax polynomial
    p = p * r + f(1.3981999507e-3)
    p = p * r + f(8.3334519073e-3)
    p = p * r + f(4.1665795894e-2)
    p = p * r + f(1.6666665459e-1)
    p = p * r + f(5.0000001201e-1)
    p = p * r * r + r + f(1.0)
    half = n >> 1  # 2**n = 2**half * 2**(n - half): both factors stay normal numbers
    s1 = _float_from_bits(i((half + 127) << 23))  # Numba widens int32 arithmetic: narrow back
    s2 = _float_from_bits(i((n - half + 127) << 23))
    y = p * s1 * s2
    if x < f(-104.0):
        y = f(0.0)
    if x > f(88.8):
        y = x * f(3.0e38)  # inf (x finite above the range, or +inf)
    return y


@numba.njit(fastmath=_FLAGS, cache=True)
def _exp64(x):  # type: ignore[no-untyped-def]
    i = numba.int64
    xc = x
    if xc < -746.0:
        xc = -746.0
    if xc > 709.8:
        xc = 709.8
    magic = 6755399441055744.0  # 1.5 * 2**52
    t = xc * 1.4426950408889634 + magic
    n = _bits(t) - _bits(magic)
    nf = t - magic
    r = xc - nf * 0.6931471803691238  # ln2 hi (exact times any |n| < 2**11)
    r = r - nf * 1.9082149292705877e-10  # ln2 lo
    p = 1.0 / 6227020800.0  # Taylor to degree 13
    p = p * r + 1.0 / 479001600.0
    p = p * r + 1.0 / 39916800.0
    p = p * r + 1.0 / 3628800.0
    p = p * r + 1.0 / 362880.0
    p = p * r + 1.0 / 40320.0
    p = p * r + 1.0 / 5040.0
    p = p * r + 1.0 / 720.0
    p = p * r + 1.0 / 120.0
    p = p * r + 1.0 / 24.0
    p = p * r + 1.0 / 6.0
    p = p * r + 0.5
    p = p * r + 1.0
    p = p * r + 1.0
    half = n >> 1
    s1 = _float_from_bits(i((half + 1023) << 52))
    s2 = _float_from_bits(i((n - half + 1023) << 52))
    y = p * s1 * s2
    if x < -746.0:
        y = 0.0
    if x > 709.8:
        y = x * 1.0e308
    return y


def fast_exp(x):  # type: ignore[no-untyped-def]
    """``exp(x)`` for a float32 or float64 scalar inside Numba code (see the module docstring)."""
    raise NotImplementedError("fast_exp is only callable from Numba-compiled code")


@overload(fast_exp, jit_options={"fastmath": _FLAGS})
def _fast_exp_impl(x):  # type: ignore[no-untyped-def]
    if x == types.float32:
        return lambda x: _exp32(x)
    if x == types.float64:
        return lambda x: _exp64(x)
    return None
