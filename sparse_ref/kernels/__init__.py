"""Numba CPU kernels: private plain loops over raw CSR/BSR index arrays (DESIGN.md §6)."""
