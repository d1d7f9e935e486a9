"""The Image tab: one method on an uploaded or example image, the pooled image at its true size, and the
same call over HTTP. Its button is the public endpoint ``/pool_image``."""

from __future__ import annotations

from typing import Any

import gradio as gr

import poolcore

from . import snippets
from .handlers import PageError, Runtime, pool_image
from .imaging import example_labels, example_paths
from .panel import PRIVATE, ControlPanel, api_function, base_url, outcome_markdown, parse_seed, seed_text

__all__ = ["IMAGE_WINDOW", "image_tab"]

# Starting values for window fields that have no default of their own (adaptive presets require one).
IMAGE_WINDOW = {"kernel_size": "4", "output_size": "16"}


def image_tab(origin: gr.Textbox, runtime: Runtime) -> None:
    panel = ControlPanel("image", IMAGE_WINDOW)
    default = poolcore.methods()[0]
    with gr.Row():
        with gr.Column(scale=1, min_width=300):
            panel.render(default)
            with gr.Row():
                run = gr.Button("Pool", variant="primary", elem_id="image-run")
                again = gr.Button("Sample again", visible=False, elem_id="image-again")
            panel.render_guide(default)

        def run_fn(image: str | None, *args: Any) -> list[Any]:
            *controls, mode, seed = args
            method, params = panel.read(controls)
            mode = mode or "eval"
            try:
                res = pool_image(runtime, image, method, params, mode=mode, seed=parse_seed(seed))
            except PageError as error:
                return [None, error.markdown(), "" if seed is None else str(seed)]
            used = res.outcome.params.get("seed")
            return [
                res.image,
                outcome_markdown(res.input_shape, res.outcome),
                str(used) if used is not None else ("" if seed is None else str(seed)),
            ]

        # Nothing empty on first load: the first example, pooled with the starting controls.
        start_image = example_paths()[0]
        start = run_fn(start_image, *(c.value for c in panel.inputs()), "eval", "")
        with gr.Column(scale=2):
            with gr.Row(equal_height=True):
                # The file as uploaded (image_mode=None: Gradio converts nothing), for the service's codec.
                source = gr.Image(
                    start_image,
                    label="Input",
                    type="filepath",
                    image_mode=None,
                    format="png",
                    sources=["upload", "clipboard"],
                    height=360,
                    elem_id="image-input",
                    alt_text="the input image",
                    elem_classes=["pool-view"],
                )
                result = gr.Image(
                    start[0],
                    label="Output (true size, shown upscaled with nearest neighbour)",
                    type="pil",
                    format="png",
                    interactive=False,
                    height=360,
                    elem_id="image-output",
                    alt_text="the pooled image",  # the name of Gradio's fullscreen button around it
                    elem_classes=["pool-view"],
                )
            info = gr.Markdown(
                start[1],
                label="Summary",
                elem_id="image-info",
            )
            gr.Examples(
                [[p] for p in example_paths()],
                inputs=[source],
                label="Example images",
                example_labels=example_labels(),  # the buttons' accessible names (axe: button-name)
            )
    with gr.Accordion("API snippet: the same call over HTTP", open=True):
        snippet = gr.Markdown(elem_id="image-snippet", elem_classes=["snippet"])

    def again_fn(image: str | None, *args: Any) -> list[Any]:
        return run_fn(image, *args[:-1], None)

    def snippet_fn(base: str, mode: str, seed: Any, *args: Any) -> str:
        method, params = panel.read(args)
        return snippets.image_snippet(
            base_url(base), method, snippets.request_params(params, mode or "eval", seed_text(seed))
        )

    names = ["image", *panel.input_names(), "mode", "seed"]
    inputs = [source, *panel.inputs(), panel.mode, panel.seed]
    outputs = [result, info, panel.seed]
    run.click(
        api_function(
            run_fn, names, "Pool an image with one method; returns the pooled image, a summary, the seed."
        ),
        inputs,
        outputs,
        api_name="pool_image",
    )
    again.click(again_fn, inputs, outputs, api_name="sample_image", api_visibility="private")
    panel.wire(again)
    gr.on(
        [origin.change, *panel.changes()],
        snippet_fn,
        [origin, panel.mode, panel.seed, *panel.inputs()],
        snippet,
        **PRIVATE,
    )
