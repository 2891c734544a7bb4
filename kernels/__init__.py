"""Triton kernels with plain PyTorch references (see each module)."""

from __future__ import annotations

from typing import NoReturn

# Functions of the Hugging Face package that transformers imports (its classes are caught by their capitals).
_HUB_NAMES = frozenset({"get_kernel", "get_local_kernel", "has_kernel", "kernelize", "register_kernel_mapping",
                        "use_kernel_forward_from_hub", "use_kernel_mapping", "replace_kernel_forward_from_hub"})


def __getattr__(name: str) -> NoReturn:
    """A name this package lacks: explain the one known cause, a clash with Hugging Face ``kernels``.

    transformers >= 5.25 requires the Hugging Face ``kernels`` distribution, which installs a top-level
    package also called ``kernels``. Whichever of the two is imported first shadows the other, and
    transformers then asks this package for names of its own (e.g. ``CUDAProperties``, ``get_kernel``).
    Other missing names stay an ``AttributeError``, so ``hasattr`` probes keep working.
    """
    if name not in _HUB_NAMES and not name[:1].isupper():  # no submodule here has such a name
        raise AttributeError(name)  # probes, and submodules not imported yet (``from kernels import rope``)
    raise ImportError(
        f"servegym's kernels package has no {name!r}: something expected the Hugging Face 'kernels' package, "
        "whose import name clashes with servegym's kernels/. Install transformers<5.25 and remove the other "
        "package (pip uninstall kernels), as pyproject.toml pins.")
