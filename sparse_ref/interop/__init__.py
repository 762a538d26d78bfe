"""Interoperability with other sparse-attention systems (each submodule imports its peer lazily).

* :mod:`sparse_ref.interop.torch`: ``attention`` as a differentiable torch op (CPU and CUDA,
  ``torch.compile``), FlexAttention ``BlockMask`` and ``mask_mod`` to and from patterns, torch
  sparse CSR.
* :mod:`sparse_ref.interop.jax`: ``attention`` as a ``jax.custom_vjp`` (``jit``, ``grad``,
  ``vmap``).
* :mod:`sparse_ref.interop.deepspeed`: DeepSpeed's block-sparse layout builders
  (``FixedSparsityConfig``, ``VariableSparsityConfig``, ``BigBirdSparsityConfig``,
  ``BSLongformerSparsityConfig``, ``LocalSlidingWindowSparsityConfig``) reimplemented in NumPy,
  equal to DeepSpeed's ``make_layout`` bit for bit, with ``to_pattern``.
"""

__all__: list[str] = []
