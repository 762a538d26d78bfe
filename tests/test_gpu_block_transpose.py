"""The transposed block form that the GPU dk/dv kernels walk (``bsr_transpose_host``), on the host:
no GPU needed. Expanding it must give the pattern's transposed mask, block column by block column."""

from __future__ import annotations

import numpy as np
import pytest
from block_cases import STRUCTURES

from sparse_ref import Pattern
from sparse_ref.backends.cupy.backward_mma import _unpack_masks, bsr_transpose_host
from sparse_ref.backends.cupy.metadata import pack_masks


def expand_transposed(pattern: Pattern, block: int) -> tuple[np.ndarray, np.ndarray]:
    """``(P, n_k, n_q)`` dense mask from the transposed form of ``pattern``'s block form, and the
    per-head block counts it reports."""
    blk, ip, cols, mi, masks = pattern.stacked_bsr(block=(block, block))
    n_q, n_k = pattern.shape
    mbits = pack_masks(np.asarray(masks).reshape(-1, block, block))
    t_ptr, t_rows, t_mi, t_bits, counts = bsr_transpose_host(blk, ip, cols, mi, mbits, n_k)
    t_masks = _unpack_masks(t_bits, block)
    nbq, nbk = -(-n_q // block), -(-n_k // block)
    dense = np.zeros((ip.shape[0], nbk * block, nbq * block), dtype=bool)
    for p in range(ip.shape[0]):
        assert t_ptr[p, 0] == ip[p, 0] and t_ptr[p, -1] == ip[p, -1]
        for bj in range(nbk):
            lo, hi = t_ptr[p, bj], t_ptr[p, bj + 1]
            assert hi - lo == counts[p, bj]
            assert np.all(np.diff(t_rows[lo:hi]) > 0)  # block rows ascend, no duplicates
            for e in range(lo, hi):
                tile = np.ones((block, block), bool) if t_mi[e] < 0 else t_masks[t_mi[e]]
                r = t_rows[e] * block
                dense[p, bj * block : bj * block + block, r : r + block] = tile
    return dense[:, :n_k, :n_q], counts


@pytest.mark.parametrize("block", [16, 32, 128])
@pytest.mark.parametrize("name", sorted(STRUCTURES))
def test_matches_pattern_transpose(name: str, block: int) -> None:
    pattern = STRUCTURES[name](block)
    dense, counts = expand_transposed(pattern, block)
    assert np.array_equal(dense[0], pattern.to_dense().T)
    assert counts.sum() == pattern.stacked_bsr(block=(block, block))[2].size


def test_per_head_patterns() -> None:
    masks = np.random.default_rng(4).random((3, 70, 45)) < 0.2
    masks[1, :, 10:] = False  # a head with empty block columns
    pattern = Pattern.from_dense(masks).with_block_form(16)
    dense, _ = expand_transposed(pattern, 16)
    assert np.array_equal(dense, np.swapaxes(masks, 1, 2))


def test_mask_shape_is_checked() -> None:
    ip = np.zeros((1, 2), dtype=np.int64)
    empty = np.zeros(0, dtype=np.int32)
    with pytest.raises(ValueError, match="mbits"):
        bsr_transpose_host((16, 16), ip, empty, empty, np.zeros((1, 8, 1), np.uint32), 16)
