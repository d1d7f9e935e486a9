"""The Gradio Blocks page: a header and three tabs, each in its own module.

- :mod:`.image_tab`: one method on an image (public endpoint ``/pool_image``);
- :mod:`.compare_tab`: every method on one image, in three views (``/compare``);
- :mod:`.tensor_tab`: one method on a small matrix, one window worked by hand (``/pool_tensor``).

The controls they share are in :mod:`.panel`, the look in :mod:`.theme`. Every button calls
:mod:`.handlers`, which call ``run_pool`` in process: the page never makes HTTP calls to its own server.
"""

from __future__ import annotations

import gradio as gr

from .compare_tab import compare_tab
from .handlers import Runtime
from .image_tab import image_tab
from .tensor_tab import SEED_MATRIX, tensor_tab
from .theme import CSS, THEME

__all__ = ["CSS", "SEED_MATRIX", "THEME", "build_blocks"]


def build_blocks(runtime: Runtime) -> gr.Blocks:
    """The whole page; handlers read the device and limits from ``runtime`` when they run."""
    with gr.Blocks(title="poolserve", analytics_enabled=False) as blocks:
        gr.Markdown(
            "# poolserve\nPooling shrinks an image or feature map by summarising each small window with one "
            "number: the largest value, the mean, or something in between. Try each method from the papers "
            "on your own image, compare them side by side, and see one window computed step by step."
        )
        # The browser's own origin, for the snippets; filled in by the page itself on load.
        origin = gr.Textbox(visible=False, elem_id="origin")
        blocks.load(None, None, origin, js="() => window.location.origin")
        with gr.Tabs():
            with gr.Tab("Image", id="image"):
                image_tab(blocks, origin, runtime)
            with gr.Tab("Compare", id="compare"):
                compare_tab(blocks, origin, runtime)
            with gr.Tab("Tensor", id="tensor"):
                tensor_tab(blocks, origin, runtime)
    return blocks
