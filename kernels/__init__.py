"""Triton kernels of t2i_fast, installed as the subpackage `t2i_fast.kernels`.

Importing a module here imports Triton; t2i_fast.backends does so only when the Triton backend is
asked for. dynamic_memory and word_region implement the kernels of csrc/ops.cpp with the same
signatures; _common holds what they share.
"""
