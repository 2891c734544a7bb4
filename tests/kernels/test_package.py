"""The kernels package names the clash with Hugging Face ``kernels`` instead of failing obscurely."""

from __future__ import annotations

import pytest


def test_a_missing_name_explains_the_hugging_face_clash() -> None:
    with pytest.raises(ImportError, match="Hugging Face 'kernels'.*transformers<5.25"):
        from kernels import CUDAProperties  # noqa: F401 - a name of the other package


def test_submodules_still_import_by_from_import() -> None:
    from kernels import norm

    assert norm.__name__ == "kernels.norm"


def test_other_missing_names_stay_attribute_errors() -> None:
    import kernels

    assert not hasattr(kernels, "no_such_helper")  # hasattr probes see an AttributeError, not the clash
    with pytest.raises(ImportError, match="Hugging Face 'kernels'"):
        from kernels import get_kernel  # noqa: F401
