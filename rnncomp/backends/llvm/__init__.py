"""LLVM for this CPU: the JIT and its cache, builder idioms, vector math, GEMM kernels."""
from .. import lazy_submodules

__getattr__ = lazy_submodules(__name__)
