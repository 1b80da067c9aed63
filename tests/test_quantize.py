"""The quantization schemes of `model.quantize` (issue 33): one table, refusals, and for every
scheme quantize → train a step → merge on the backend that runs it (tiny model)."""
from __future__ import annotations

import pytest

from conftest import ROOT

from common.quantize import NAMES, RECOMMENDED, SCHEMES, resolve, schemes_of, table_markdown


def test_docs_show_the_scheme_table():
    assert table_markdown() in (ROOT / "docs" / "variants.md").read_text()


def test_every_scheme_runs_on_one_backend_and_4bit_is_the_recommended_one():
    assert set(schemes_of("mlx")) | set(schemes_of("torch")) == set(SCHEMES) and NAMES[0] == "4bit"
    assert not set(schemes_of("mlx")) & set(schemes_of("torch"))
    assert resolve("4bit", "mlx").name == RECOMMENDED["mlx"] == "mlx-nvfp4"
    assert resolve("4bit", "torch").settings == {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4",
                                                 "bnb_4bit_use_double_quant": True}
    assert resolve("mlx-affine-4-g64", "mlx").settings == {"mode": "affine", "bits": 4, "group_size": 64}
    assert [SCHEMES[n].bits for n in ("mlx-mxfp8", "mlx-affine-8-g64", "int8", "nf4")] == [8, 8, 8, 4]
