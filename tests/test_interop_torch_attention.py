"""sparse_ref.interop.torch.attention: the differentiable torch op (autograd, torch.compile, CUDA).

The op must give exactly what :func:`sparse_ref.attention` / :func:`sparse_ref.attention_backward`
give on the same data (it only moves tensors), pass ``gradcheck`` in float64 (also through
``lse`` and per-batch patterns), train a toy model exactly like SDPA with the same mask, and
compile with ``fullgraph=True`` as one opaque custom op. CUDA tests are marked ``gpu``.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch (the torch extra) is not installed")

import sparse_ref  # noqa: E402
from sparse_ref import patterns  # noqa: E402
from sparse_ref.backends import cupy as gpu  # noqa: E402
from sparse_ref.interop import _torch_op  # noqa: E402
from sparse_ref.interop.torch import attention  # noqa: E402
from sparse_ref.pattern import Pattern  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")

N = 40


def _qkv(dtype=torch.float64, B=2, H=4, H_kv=2, n=N, d=8, dv=6, grad=True, device="cpu"):
    g = torch.Generator().manual_seed(0)
    shapes = ((B, H, n, d), (B, H_kv, n, d), (B, H_kv, n, dv))
    return [
        torch.randn(s, generator=g, dtype=torch.float64).to(dtype).to(device).requires_grad_(grad)
        for s in shapes
    ]


def _with_empty_rows(n: int) -> Pattern:
    mask = np.random.default_rng(3).random((n, n)) < 0.2
    mask[::7] = False  # rows with no keys: out = 0, lse = -inf, no gradient
    return Pattern.from_dense(mask)


PATTERNS = {
    "causal_window": patterns.causal_sliding_window(N, 6),
    "block_form": patterns.sliding_window(N, 4, 4).with_block_form(8),
    "empty_rows": _with_empty_rows(N),
}


# ------------------------------------------------------------------------------------- gradcheck
# small shapes: gradcheck calls the op twice per input entry
SMALL = {"B": 1, "H": 2, "H_kv": 1, "n": 12, "d": 4, "dv": 3}
SMALL_PATTERNS = {
    "causal_window": patterns.causal_sliding_window(12, 4),
    "block_form": patterns.sliding_window(12, 2, 3).with_block_form(4),
    "empty_rows": _with_empty_rows(12),
}


@pytest.mark.parametrize("name", sorted(SMALL_PATTERNS))
def test_gradcheck_float64(name) -> None:
    p = SMALL_PATTERNS[name]
    q, k, v = _qkv(**SMALL)
    assert torch.autograd.gradcheck(lambda q, k, v: attention(q, k, v, p), (q, k, v))


def test_gradcheck_through_lse_and_out_together() -> None:
    p = SMALL_PATTERNS["causal_window"]
    q, k, v = _qkv(**SMALL)
    w = torch.randn(1, 2, 12, dtype=torch.float64)

    def f(q, k, v):
        out, lse = attention(q, k, v, p, return_lse=True, scale=0.7)
        return out.sum() + (w * lse).sum()

    assert torch.autograd.gradcheck(f, (q, k, v))
    # lse alone: out gets no gradient (None, not zeros, reaches the backward)
    lse_only = lambda q, k, v: attention(q, k, v, p, return_lse=True)[1]  # noqa: E731
    assert torch.autograd.gradcheck(lse_only, (q, k, v))


def test_gradcheck_softcap_and_per_batch_patterns() -> None:
    pats = [SMALL_PATTERNS["causal_window"], SMALL_PATTERNS["empty_rows"]]
    q, k, v = _qkv(**{**SMALL, "B": 2})
    assert torch.autograd.gradcheck(
        lambda q, k, v: attention(q, k, v, pats, softcap=2.5), (q, k, v)
    )


def test_lse_gradient_with_softcap_is_refused() -> None:
    q, k, v = _qkv()
    _, lse = attention(q, k, v, PATTERNS["causal_window"], softcap=3.0, return_lse=True)
    with pytest.raises(NotImplementedError, match="softcap"):
        lse.sum().backward()


# ---------------------------------------------------------------- same numbers as the NumPy API
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_equals_attention_and_attention_backward(dtype) -> None:
    p = PATTERNS["causal_window"]
    q, k, v = _qkv(dtype)
    out, lse = attention(q, k, v, p, return_lse=True)
    assert out.dtype == dtype and out.shape == (2, 4, N, 6)
    assert lse.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    dout = torch.randn(out.shape, dtype=torch.float64).to(dtype)
    out.backward(dout)
    ct = torch.float64 if dtype == torch.float64 else torch.float32  # 16-bit: float32 compute
    arrays = [x.detach().to(ct).numpy() for x in (q, k, v)]
    ref_out, ref_lse = sparse_ref.attention(*arrays, p, return_lse=True)
    ref = sparse_ref.attention_backward(*arrays, p, dout.to(ct).numpy())
    assert torch.equal(out, torch.from_numpy(ref_out).to(dtype))
    assert torch.equal(lse, torch.from_numpy(ref_lse))
    for x, g in zip((q, k, v), ref):
        assert x.grad.dtype == dtype
        assert torch.equal(x.grad, torch.from_numpy(g).to(dtype))


def test_ranks_and_no_grad_inputs() -> None:
    p = PATTERNS["causal_window"]
    q, k, v = _qkv(grad=False, B=1, H=1, H_kv=1)
    out4 = attention(q, k, v, p)
    assert not out4.requires_grad
    assert torch.equal(attention(q[0], k[0], v[0], p), out4[0])
    assert torch.equal(attention(q[0, 0], k[0, 0], v[0, 0], p), out4[0, 0])


def test_bad_inputs() -> None:
    p = PATTERNS["causal_window"]
    q, k, v = _qkv(grad=False)
    with pytest.raises(TypeError, match="mixed dtypes"):
        attention(q, k.float(), v, p)
    with pytest.raises(TypeError, match="q must be float64"):
        attention(q.int(), k.int(), v.int(), p)
    with pytest.raises(TypeError, match="k must be a torch.Tensor"):
        attention(q, k.numpy(), v, p)
    with pytest.raises(TypeError, match="sparse_ref.Pattern"):
        attention(q, k, v, "causal")
    with pytest.raises(TypeError, match=r"pattern\[1\]"):
        attention(q, k, v, [p, None])
    with pytest.raises(ValueError, match="pattern has shape"):
        attention(q, k, v, patterns.causal(N + 1))
    with pytest.raises(ValueError, match="softcap"):
        attention(q, k, v, p, softcap=-1.0)
    with pytest.raises(TypeError, match="return_lse"):
        attention(q, k, v, p, return_lse=1)


def test_registry_forgets_old_patterns_with_a_clear_error(monkeypatch) -> None:
    monkeypatch.setattr(_torch_op, "_REGISTRY_SIZE", 2)
    q, k, v = _qkv(grad=False)
    key = _torch_op.register(patterns.causal_sliding_window(N, 2))
    for w in (3, 4):
        _torch_op.register(patterns.causal_sliding_window(N, w))
    with pytest.raises(RuntimeError, match="no pattern is registered"):
        torch.ops.sparse_ref.attention(q, k, v, key, 0.5, None)


# ------------------------------------------------------------------------------- a toy model
class _Layer(torch.nn.Module):
    def __init__(self, dim: int, heads: int, kv_heads: int, attend) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.attend = heads, kv_heads, attend
        self.head_dim = dim // heads
        self.qkv = torch.nn.Linear(dim, (heads + 2 * kv_heads) * self.head_dim)
        self.proj = torch.nn.Linear(dim, dim)

    def forward(self, x):
        B, n, _ = x.shape
        hd = self.head_dim
        q, k, v = self.qkv(x).split([self.heads * hd, self.kv_heads * hd, self.kv_heads * hd], -1)
        q = q.view(B, n, self.heads, hd).transpose(1, 2)
        k = k.view(B, n, self.kv_heads, hd).transpose(1, 2)
        v = v.view(B, n, self.kv_heads, hd).transpose(1, 2)
        y = self.attend(q, k, v).transpose(1, 2).reshape(B, n, -1)
        return x + self.proj(torch.tanh(y))


def _model(attend, seed=0):
    torch.manual_seed(seed)
    layers = [_Layer(16, 4, 2, attend) for _ in range(2)]
    return torch.nn.Sequential(*layers).double()


def test_two_layer_model_trains_like_sdpa_with_the_same_mask() -> None:
    n = 64
    p = patterns.causal_sliding_window(n, 9)
    mask = torch.from_numpy(p.to_dense())

    def ours(q, k, v):
        return attention(q, k, v, p)

    def sdpa(q, k, v):
        return torch.nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, enable_gqa=True
        )

    models = [_model(ours), _model(sdpa)]
    opts = [torch.optim.SGD(m.parameters(), lr=0.1) for m in models]
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, n, 16, generator=g, dtype=torch.float64)
    target = torch.randn(2, n, 16, generator=g, dtype=torch.float64)
    losses, first_grads = [], None
    for _ in range(3):
        step = []
        for m, opt in zip(models, opts):
            opt.zero_grad()
            loss = ((m(x) - target) ** 2).mean()
            loss.backward()
            step.append((loss.item(), [prm.grad.clone() for prm in m.parameters()]))
            opt.step()
        (l0, g0), (l1, g1) = step
        assert l0 == pytest.approx(l1, rel=1e-12)
        for a, b in zip(g0, g1):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
        losses.append(l0)
        first_grads = first_grads or g1
    assert losses[-1] < losses[0]  # it trains
    # the same model with another pattern gets other gradients: the comparison above can fail
    other = _model(lambda q, k, v: attention(q, k, v, patterns.causal(n)))
    ((other(x) - target) ** 2).mean().backward()
    assert not torch.allclose(next(other.parameters()).grad, first_grads[0])


# ------------------------------------------------------------------------------- torch.compile
def _loss(q, k, v, p):
    out, lse = attention(q, k, v, p, return_lse=True)
    return (out * out).sum() + lse.sum()


def _eager_grads(q, k, v, p):
    xs = [x.detach().clone().requires_grad_() for x in (q, k, v)]
    loss = _loss(*xs, p)
    loss.backward()
    return loss.detach(), [x.grad for x in xs]


def _check_compiled(fn, q, k, v, p) -> None:
    xs = [x.detach().clone().requires_grad_() for x in (q, k, v)]
    loss = fn(*xs, p)
    loss.backward()
    ref_loss, ref_grads = _eager_grads(q, k, v, p)
    assert torch.equal(loss.detach(), ref_loss)
    for x, g in zip(xs, ref_grads):
        assert torch.equal(x.grad, g)


def test_compiles_fullgraph_as_one_custom_op() -> None:
    torch._dynamo.reset()
    from torch._dynamo.testing import CompileCounterWithBackend

    counts = CompileCounterWithBackend("aot_eager")
    fn = torch.compile(_loss, fullgraph=True, backend=counts)
    q, k, v = _qkv(torch.float32)
    _check_compiled(fn, q, k, v, PATTERNS["causal_window"])
    assert counts.frame_count == 1  # one graph, no break
    ops = [
        str(node.target)
        for gm in counts.graphs
        for node in gm.graph.nodes
        if node.op == "call_function"
    ]
    assert "sparse_ref.attention.default" in ops
    # another pattern (and a per-batch list) retraces instead of reusing the first key
    _check_compiled(fn, q, k, v, PATTERNS["empty_rows"])
    _check_compiled(fn, q, k, v, [PATTERNS["empty_rows"], PATTERNS["block_form"]])
    _check_compiled(fn, q, k, v, [PATTERNS["block_form"], PATTERNS["empty_rows"]])


@pytest.mark.slow
def test_compiles_with_inductor_in_reasonable_time() -> None:
    torch._dynamo.reset()
    fn = torch.compile(_loss, fullgraph=True)
    q, k, v = _qkv(torch.float32)
    start = time.perf_counter()
    _check_compiled(fn, q, k, v, PATTERNS["causal_window"])
    seconds = time.perf_counter() - start
    assert seconds < 300, f"compiling took {seconds:.0f} s"


# ------------------------------------------------------------------------------------- CUDA
needs_cuda = pytest.mark.skipif(
    not (torch.cuda.is_available() and gpu.is_available()),
    reason="needs a CUDA GPU with CuPy and a CUDA build of torch",
)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_cuda_matches_the_cupy_backend_and_the_cpu(dtype) -> None:
    p = PATTERNS["causal_window"]
    q, k, v = _qkv(dtype, device="cuda")
    out, lse = attention(q, k, v, p, return_lse=True)
    assert out.device == q.device and out.dtype == dtype
    dout = torch.randn_like(out)
    out.backward(dout)
    # the same CuPy kernels called directly, on the compute dtype the op uses
    ct = dtype if dtype != torch.bfloat16 else torch.float32
    import cupy

    arrays = [cupy.from_dlpack(x.detach().to(ct).contiguous()) for x in (q, k, v)]
    ref_out, ref_lse = sparse_ref.attention(*arrays, p, backend="cupy", return_lse=True)
    assert torch.equal(out, torch.from_dlpack(ref_out).to(dtype))
    assert torch.equal(lse, torch.from_dlpack(ref_lse))
    ref = sparse_ref.attention_backward(
        *arrays, p, cupy.from_dlpack(dout.to(ct).contiguous()), backend="cupy"
    )
    for x, g in zip((q, k, v), ref):
        assert x.grad.dtype == dtype and x.grad.device == q.device
        assert torch.equal(x.grad, torch.from_dlpack(g).to(dtype))
    # and the CPU op agrees within the dtype's rounding
    cpu = attention(*(x.detach().cpu() for x in (q, k, v)), p)
    tol = {torch.float64: 1e-12, torch.float32: 1e-5}.get(dtype, 2e-2)
    torch.testing.assert_close(out.cpu().float(), cpu.float(), rtol=tol, atol=tol)


@pytest.mark.gpu
@needs_cuda
def test_cuda_gradcheck_float64() -> None:
    q, k, v = _qkv(**SMALL, device="cuda")
    p = SMALL_PATTERNS["empty_rows"]
    assert torch.autograd.gradcheck(lambda q, k, v: attention(q, k, v, p), (q, k, v))


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_cuda_gradient_through_lse_matches_the_cpu(dtype) -> None:
    p = PATTERNS["empty_rows"]
    grads = []
    for device in ("cuda", "cpu"):
        q, k, v = _qkv(dtype, device=device)
        out, lse = attention(q, k, v, p, return_lse=True)
        (out.float().sum() + torch.where(lse.isfinite(), lse, 0).sum()).backward()
        grads.append([x.grad.cpu().float() for x in (q, k, v)])
    tol = 1e-4 if dtype == torch.float32 else 5e-2
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)
