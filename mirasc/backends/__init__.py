"""Backends that run a compiled spec's generated module: `triton` launches the Triton kernels (the torch module
carries its own autograd Function)."""
