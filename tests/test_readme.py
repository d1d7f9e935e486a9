"""Run the python blocks of the README's "poolcore: the seed's five sections as code" and "poolcore in
your model" sections.

A block is skipped only when it needs a method or a ``poolcore``/``poolcore.nn`` name that is not
registered on this branch yet (stochastic pooling lands from another branch); any other error fails.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import poolcore

README = Path(__file__).resolve().parents[1] / "README.md"
SECTION = "## poolcore: the seed's five sections as code"
MODELS = "## poolcore in your model"


def _blocks(title: str = SECTION) -> list[str]:
    text = README.read_text(encoding="utf-8")
    start = text.index(title)
    end = text.find("\n## ", start + len(title))
    section = text[start : end if end != -1 else len(text)]
    return re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)


BLOCKS = _blocks()
MODEL_BLOCKS = _blocks(MODELS)


def test_the_section_has_five_examples() -> None:
    assert len(BLOCKS) == 5


@pytest.mark.parametrize("index", range(len(BLOCKS)), ids=lambda i: f"block{i + 1}")
def test_readme_block_runs(index: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    code = compile(BLOCKS[index], f"README.md block {index + 1}", "exec")
    try:
        exec(code, {"__name__": "__readme__"})
    except poolcore.UnknownMethodError as error:
        pytest.skip(f"needs a method not registered yet: {error}")
    except AttributeError as error:
        if error.obj in (poolcore, poolcore.nn) and not hasattr(error.obj, error.name or ""):
            pytest.skip(f"needs poolcore name {error.name!r}, not on this branch yet")
        raise


def test_models_section_swaps_trains_exports_and_compiles() -> None:
    """One block: replace_pooling, training, ONNX export run in onnxruntime, torch.compile."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    assert len(MODEL_BLOCKS) == 1
    for word in ("replace_pooling", "backward", "torch.onnx.export", "InferenceSession", "torch.compile"):
        assert word in MODEL_BLOCKS[0], word
    exec(compile(MODEL_BLOCKS[0], "README.md poolcore in your model", "exec"), {"__name__": "__readme__"})
