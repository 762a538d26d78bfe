"""``sparse_ref.checks``: the one structure checker of token CSR and the block form, and the
parameter checks. Each broken rule is named, with the head and (block) row where it broke."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sparse_ref import checks
from sparse_ref.checks import BLOCK_WORDS, CSR_WORDS, check_compressed


def _ip(*heads: list[int]) -> np.ndarray:
    return np.array(heads, dtype=np.int64)


def _ix(*keys: int) -> np.ndarray:
    return np.array(keys, dtype=np.int64)


# (indptr, indices, n_cols, CSR message, block-form message): one broken rule per row
BROKEN = [
    (_ip([1, 1, 2]), _ix(0), 3, r"indptr\[0\] must be 0, got 1", r"indptr\[0\] must be 0, got 1"),
    (
        _ip([0, 1, 2], [3, 3, 3]),
        _ix(0, 1, 2),
        3,
        r"indptr of head 1 must start where head 0 ends, at 2, got 3",
        r"indptr of head 1 must start where head 0 ends, at 2, got 3",
    ),
    (
        _ip([0, 2, 1]),
        _ix(0),
        3,
        r"indptr must be non-decreasing: indptr\[2\] = 1 < indptr\[1\] = 2 \(row 1\)",
        r"indptr must start at 0 and be non-decreasing \(head 0, block row 1\): indptr\[0, 2\] = 1",
    ),
    (
        _ip([0, 1, 1], [1, 0, 1]),
        _ix(0),
        3,
        r"indptr must be non-decreasing: indptr\[1, 1\] = 0 < indptr\[1, 0\] = 1 \(head 1, row 0\)",
        r"\(head 1, block row 0\)",
    ),
    (
        _ip([0, 1, 1]),
        _ix(0, 1),
        3,
        r"indptr\[-1\] = 1 must equal len\(indices\) = 2",
        r"indptr\[-1\] = 1 must equal len\(indices\) = 2",
    ),
    (
        _ip([0, 1, 2]),
        _ix(0, 3),
        3,
        r"indices out of range: row 1 has key 3, expected 0 <= key < n_k = 3",
        r"block column out of range: block row 1 has 3, expected 0 <= block column < nbk = 3",
    ),
    (
        _ip([0, 0, 2]),
        _ix(1, 1),
        3,
        r"strictly increasing within each row \(sorted, no duplicates\); row 1 is not. Pass sort=True"
        r" to sort and deduplicate",
        r"strictly increasing within each block row; block row 1 is not. Pass sort=True to sort and"
        r" merge",
    ),
]


@pytest.mark.parametrize(("indptr", "indices", "n_cols", "csr", "block"), BROKEN)
def test_each_broken_rule_is_named_with_its_row(indptr, indices, n_cols, csr, block):
    with pytest.raises(ValueError, match=csr):
        check_compressed(indptr, indices, n_cols, words=CSR_WORDS)
    with pytest.raises(ValueError, match=block):
        check_compressed(indptr, indices, n_cols, words=BLOCK_WORDS)
    with pytest.raises(ValueError, match=r"^head 0: "):
        check_compressed(indptr, indices, n_cols, where="head 0: ")


def test_cheap_check_sees_only_endpoints():
    decreasing, out_of_range, unsorted = BROKEN[2], BROKEN[5], BROKEN[6]
    for indptr, indices, n_cols, *_ in (decreasing, out_of_range, unsorted):
        assert check_compressed(indptr, indices, n_cols, full_check=False)
    with pytest.raises(ValueError, match="must equal len"):
        check_compressed(_ip([0, 1, 1]), _ix(0, 1), 3, full_check=False)


def test_unsorted_rows_are_reported_when_sorting_is_allowed():
    assert not check_compressed(_ip([0, 2, 2]), _ix(2, 1), 3, require_sorted=False)
    assert check_compressed(_ip([0, 2, 3]), _ix(1, 2, 0), 3, require_sorted=False)


@given(st.lists(st.lists(st.integers(0, 9), max_size=6), min_size=1, max_size=5), st.data())
def test_canonical_rows_pass_and_a_decrease_within_a_row_fails(rows, data):
    rows = [sorted(set(r)) for r in rows]
    indptr = _ip([0, *np.cumsum([len(r) for r in rows]).tolist()])
    indices = np.array([k for r in rows for k in r], dtype=np.int64)
    assert check_compressed(indptr, indices, 10)
    long_rows = [i for i, r in enumerate(rows) if len(r) >= 2]
    if long_rows:
        row = data.draw(st.sampled_from(long_rows))
        pos = int(indptr[0, row])
        swapped = indices.copy()
        swapped[[pos, pos + 1]] = swapped[[pos + 1, pos]]
        with pytest.raises(ValueError, match=f"row {row} is not"):
            check_compressed(indptr, swapped, 10)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: checks.check_int(True, "n"), TypeError, "n must be an int, got bool True"),
        (lambda: checks.check_int(2.0, "n"), TypeError, "n must be an int, got float 2.0"),
        (lambda: checks.check_nonneg_int(-1, "left"), ValueError, "left must be >= 0, got -1"),
        (lambda: checks.check_pos_int(0, "stride"), ValueError, "stride must be >= 1, got 0"),
        (lambda: checks.check_bool(1, "causal"), TypeError, "causal must be a bool, got int 1"),
        (lambda: checks.check_choice("x", "align", ("a", "b")), ValueError, "'a', 'b', got 'x'"),
        (lambda: checks.check_index_list([3], "g", 3), ValueError, r"3 is not in \[-3, 3\)"),
        (lambda: checks.check_index_list("01", "g", 3), TypeError, "1-D sequence of ints"),
        (lambda: checks.check_shape((2, -1)), ValueError, "non-negative ints, got"),
        (lambda: checks.check_block((2, 0)), ValueError, r"block\[1\] \(bk\) must be >= 1"),
        (lambda: checks.integer_array([1.5], "indices"), TypeError, "integer dtype, got float64"),
        (lambda: checks.integer_array([[1]], "indices"), ValueError, r"1-D, got shape \(1, 1\)"),
    ],
)
def test_parameter_checks_name_the_parameter(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_parameter_checks_normalise_to_plain_python():
    assert type(checks.check_int(np.int16(3), "n")) is int
    assert checks.check_block(4) == (4, 4) and checks.check_block([2, 3]) == (2, 3)
    assert checks.block_param((4, 4)) == 4 and checks.block_param((2, 3)) == [2, 3]
    assert checks.check_index_list([-1, 0, 0], "g", 5).tolist() == [0, 4]
    assert checks.resolve_n_k(3, None) == (3, 3)
    assert checks.integer_array([], "indices").dtype == np.int64
