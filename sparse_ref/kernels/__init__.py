"""Numba CPU kernels: private plain loops over raw CSR/BSR index arrays (see DESIGN.md section 6)."""
