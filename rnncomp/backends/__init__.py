"""The backends: ``numpy`` (the oracle), ``native`` (LLVM, this CPU), ``ptx`` (CUDA).

Submodules load on first use (``rc.backends.llvm.jit``, ``rc.backends.native`` ...): a
plain ``import rnncomp`` loads no llvmlite until a native or PTX model is built.
"""
import importlib


def lazy_submodules(package: str):
    """A module ``__getattr__`` that imports ``package``'s submodules when first named."""
    def __getattr__(name):
        try:
            return importlib.import_module(f"{package}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{package}.{name}":
                raise
            raise AttributeError(f"module {package!r} has no attribute {name!r}") from None
    return __getattr__


__getattr__ = lazy_submodules(__name__)
