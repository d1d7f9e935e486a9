"""What the page teaches (issue 13): the method guide beside each picker, the Compare tab's views (lp's
stated display scale, global results as numbers, zoomed crop, difference from avg) and the Tensor tab's
walk through one window. References are torch's own ops and the seed's closed form."""

from __future__ import annotations

import math
from typing import Any

import gradio as gr
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import poolcore
from service.ui.guide import guide_markdown
from service.ui.handlers import Runtime
from service.ui.imaging import ASSETS
from service.ui.page import SEED_MATRIX, build_blocks
from service.ui.tiles import channel_values, display_scale, tile
from service.ui.walkthrough import explain, parse_cell

from .test_ui import _call, _value, event, helper, reference_tensor

SEED = torch.tensor(SEED_MATRIX)


@pytest.fixture(scope="module")
def blocks() -> gr.Blocks:
    return build_blocks(Runtime(device=lambda: "cpu", setting=lambda name: None))


def _by_id(blocks: gr.Blocks) -> dict[str | None, Any]:
    return {b.elem_id: b for b in blocks.blocks.values() if getattr(b, "elem_id", None)}


# ---- the guide --------------------------------------------------------------------------------------------
def test_guide_beside_each_picker_renders_the_registry(blocks: gr.Blocks) -> None:
    by_id = _by_id(blocks)
    for tab, method in (("image", poolcore.methods()[0]), ("tensor", "stochastic")):
        guide = by_id[f"{tab}-guide"]
        spec = poolcore.get_spec(method)
        assert guide.value == guide_markdown(method)
        assert f"$${spec.guide.formula}$$" in guide.value  # rendered as display maths by the page
        assert {"left": "$$", "right": "$$", "display": True} in guide.latex_delimiters
    text = guide_markdown("stochastic")
    assert "Zeiler & Fergus 2013" in text and "**Train and eval.**" in text and "**When to pick it.**" in text


def test_guide_follows_the_method_picker(blocks: gr.Blocks) -> None:
    outputs = helper(blocks, "image-guide", image_method="gem")
    assert _value(outputs[0]) == guide_markdown("gem") and "Radenović" in _value(outputs[0])


# ---- compare views ----------------------------------------------------------------------------------------
def test_lp_tile_is_scaled_by_a_stated_factor_not_clamped() -> None:
    """Sum-form Lp of an image in [0, 1] mostly exceeds 1; the tile divides by n^(1/p) and says so."""
    x = reference_tensor(ASSETS / "gradient.png")
    out = poolcore.pool(x, "lp", kernel_size=4, dims=2)
    assert float((out >= 1).float().mean()) > 0.75  # the old tile: 78% white
    scale = display_scale("lp", {"kernel_size": 4, "p": 2.0})
    assert scale == pytest.approx(4.0)  # (16 inputs)^(1/2)
    picture, notes = tile("lp", out, {"kernel_size": 4, "p": 2.0}, "pooled")
    pixels = np.asarray(picture, dtype=np.float64) / 255
    expected = (out / 4.0).clamp(0, 1).permute(1, 2, 0).numpy()
    np.testing.assert_allclose(pixels, expected, atol=1 / 255)
    assert float((pixels >= 1.0).mean()) < 0.05
    assert any("÷ 4" in note for note in notes)
    assert display_scale("lp", {"kernel_size": (2, 3), "p": 3.0}) == pytest.approx(6 ** (1 / 3))
    assert display_scale("lp", {"kernel_size": 4, "p": math.inf}) == 1.0
    assert display_scale("gem", {"kernel_size": 4, "p": 3.0}) == 1.0


def test_global_results_show_their_numbers() -> None:
    x = reference_tensor(ASSETS / "cells.png")
    out = poolcore.pool(x, "global_avg", dims=2)
    picture, notes = tile("global_avg", out, {"output_size": 1}, "pooled")
    means = x.mean(dim=(1, 2)).tolist()
    assert channel_values(out) == " ".join(f"{n} {v:.3f}" for n, v in zip("RGB", means, strict=True))
    assert channel_values(out) in notes
    assert picture.size == (32, 32)  # a swatch, not a 1-pixel square
    assert np.asarray(picture)[0, 0].tolist() == [round(v * 255) for v in means]


def test_zoomed_crop_and_difference_from_avg() -> None:
    x = reference_tensor(ASSETS / "cells.png")
    avg, top = F.avg_pool2d(x, 2), F.max_pool2d(x, 2)
    picture, notes = tile("max", top, {"kernel_size": 2}, "zoomed crop")
    h, w = top.shape[-2:]
    assert picture.size == (8, 8) and f"centre 8×8 of {h}×{w}" in notes
    top_left = ((h - 8) // 2, (w - 8) // 2)
    crop = top[:, top_left[0] : top_left[0] + 8, top_left[1] : top_left[1] + 8]
    np.testing.assert_allclose(np.asarray(picture) / 255, crop.permute(1, 2, 0).numpy(), atol=1 / 255)
    picture, notes = tile("max", top, {"kernel_size": 2}, "difference from avg", avg)
    diff = top - avg
    gain = 0.5 / float(diff.abs().max())
    np.testing.assert_allclose(
        np.asarray(picture) / 255, (0.5 + gain * diff).permute(1, 2, 0).numpy(), atol=1 / 255
    )
    assert any(note.startswith("max − avg, ×") for note in notes)
    _, notes = tile("avg", avg, {"kernel_size": 2}, "difference from avg", avg)
    assert "the reference" in notes[0]


def test_compare_tab_views_through_the_page(blocks: gr.Blocks) -> None:
    image = str(ASSETS / "cells.png")
    for view in ("pooled", "zoomed crop", "difference from avg"):
        gallery, text, _ = event(blocks, "compare", compare_input=image, compare_view=view)
        labels = {item[1].split(" · ")[0]: item[1] for item in _value(gallery)}
        assert set(labels) == set(poolcore.methods()), view
        assert "R " in labels["global_avg"] and "G " in labels["global_max"]
        assert "÷ 4" in labels["lp"]
        if view == "zoomed crop":
            assert "centre 8×8" in labels["max"]
        if view == "difference from avg":
            assert "max − avg" in labels["max"] and "adaptive_max − adaptive_avg" in labels["adaptive_max"]
    _, text, _ = event(blocks, "compare", compare_input=image, compare_view="sideways")
    assert "view must be one of" in text


# ---- one window, by hand ----------------------------------------------------------------------------------
def test_walkthrough_writes_out_the_seed_example() -> None:
    out = poolcore.pool(SEED[None], "stochastic", kernel_size=3, dims=2)[0]
    text = explain(SEED, "stochastic", {"kernel_size": 3}, out, (0, 0), "eval")
    assert "Σa² / Σa = 16.52 / 10 = 1.652" in text
    assert text.count("class='in-window'") == 9


def test_walkthrough_names_the_drawn_position_and_its_probability() -> None:
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]])  # distinct values: the draw is readable from the output
    generator = torch.Generator().manual_seed(3)
    out = poolcore.pool(x[None], "stochastic", kernel_size=2, training=True, generator=generator, dims=2)[0]
    y = float(out[0, 0])
    r, c = divmod(x.flatten().tolist().index(y), 2)
    text = explain(x, "stochastic", {"kernel_size": 2}, out, (0, 0), "train")
    assert "p = a / Σa = a / 10 = [0.1, 0.2, 0.3, 0.4]" in text
    assert f"drawn: a[{r},{c}] = {y:g} (p = {y / 10:g})" in text
    assert text.count("class='in-window drawn'") == 1  # the drawn cell is marked on the input


def test_walkthrough_says_which_lambda_mixed_drew() -> None:
    x = torch.tensor([[1.0, 2.0], [3.0, 6.0]])  # max 6, mean 3
    for lam, value in ((1, 6.0), (0, 3.0)):
        text = explain(x, "mixed", {"kernel_size": 2}, torch.tensor([[value]]), (0, 0), "train")
        assert f"λ drawn = {lam}" in text
    text = explain(x, "mixed", {"kernel_size": 2, "p_max": 0.25}, torch.tensor([[3.75]]), (0, 0), "eval")
    assert "= 0.25·6 + 0.75·3 = 3.75" in text


def test_walkthrough_highlights_the_chosen_window() -> None:
    x = torch.arange(1.0, 17.0).reshape(4, 4)
    out = F.avg_pool2d(x[None], 3, 1)[0]
    text = explain(x, "avg", {"kernel_size": 3, "stride": 1}, out, (1, 0), "eval")
    assert "rows 1–3, cols 0–2" in text and f"= {float(out[1, 0]):.4g}" in text
    lp = poolcore.pool(x[None], "lp", kernel_size=2, p=2.0, dims=2)[0]
    text = explain(x, "lp", {"kernel_size": 2}, lp, (0, 1), "eval")
    assert f"(Σ|a|^p)^(1/p) = ({3**2 + 4**2 + 7**2 + 8**2:g})^(1/2) = {float(lp[0, 1]):.4g}" in text
    with pytest.raises(ValueError, match=r"outside the 2×2 output"):
        parse_cell("2,0", (2, 2))
    with pytest.raises(ValueError, match=r"two integers"):
        parse_cell("a", (2, 2))


def test_tensor_tab_is_not_empty_on_first_load(blocks: gr.Blocks) -> None:
    """The page starts with the example window pooled and explained, not an empty table and blank plot:
    the tab's load event (run when the page loads, not when the app is built) fills them."""
    load = next(
        f
        for f in blocks.fns.values()
        if f.fn is not None
        and any(trigger == "load" for _, trigger in f.targets)
        and f.outputs
        and f.outputs[0].elem_id == "tensor-output"
    )
    table, info, _seed, last = _call(load)
    assert _value(table) == [[pytest.approx(1.652, abs=1e-3)]]
    assert "**output** 1×1×1" in _value(info)
    walk, probabilities, plot = helper(blocks, "tensor-walk", state=last, tensor_cell="0,0")
    assert "16.52 / 10 = 1.652" in walk
    assert "p = a / Σa" in _value(probabilities)
    assert _value(plot) is not None and plot.get("visible", True)


def test_walkthrough_through_the_page_follows_the_picked_cell(blocks: gr.Blocks) -> None:
    rows = [[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0], [9.0, 10.0, 11.0, 12.0], [13.0, 14.0, 15.0, 16.0]]
    outputs = event(
        blocks, "pool_tensor", tensor_input=rows, tensor_method="max", tensor_param_kernel_size="2"
    )
    assert _value(outputs[0]) == [[6.0, 8.0], [14.0, 16.0]]
    walk, probabilities, plot = helper(blocks, "tensor-walk", state=outputs[3], tensor_cell="1,0")
    assert "y = max(a) = 14" in walk and "rows 2–3, cols 0–1" in walk
    assert _value(probabilities) is None and plot.get("visible") is False


def test_walkthrough_reads_the_drawn_position_from_the_index() -> None:
    # Equal values: the output alone cannot say which was drawn; the operator's index can.
    x = torch.full((2, 2), 2.0)
    generator = torch.Generator().manual_seed(5)
    out, index = poolcore.stochastic_pool(
        x[None], 2, dims=2, training=True, generator=generator, return_indices=True
    )
    r, c = divmod(int(index[0, 0, 0]), 2)
    text = explain(x, "stochastic", {"kernel_size": 2}, out[0], (0, 0), "train", indices=index[0])
    assert f"drawn: a[{r},{c}] = {float(out[0, 0, 0]):g}" in text
    assert text.count("class='in-window drawn'") == 1
    assert "equal values" in explain(x, "stochastic", {"kernel_size": 2}, out[0], (0, 0), "train")


def test_walkthrough_follows_mixed_eval_rule() -> None:
    """eval_rule="frequent" without training history: p_max decides the branch (issue 19, item 2)."""
    x = torch.tensor([[1.0, 2.0], [3.0, 6.0]])  # max 6, mean 3
    params = {"kernel_size": 2, "p_max": 0.75, "eval_rule": "frequent"}
    text = explain(x, "mixed", params, torch.tensor([[6.0]]), (0, 0), "eval")
    assert "eval_rule = frequent: p_max = 0.75 is above 0.5, so y = max(a) = 6" in text
    params = {"kernel_size": 2, "p_max": 0.25, "eval_rule": "frequent"}
    text = explain(x, "mixed", params, torch.tensor([[3.0]]), (0, 0), "eval")
    assert "p_max = 0.25 is below 0.5, so y = mean(a) = 3" in text
