"""The Image tab: one method on an uploaded or example image, the pooled image at its true size, and the
same call over HTTP. Its button is the public endpoint ``/pool_image``."""

from __future__ import annotations

from typing import Any

import gradio as gr

import poolcore

from ..codecs.image import to_image
from . import snippets
from .handlers import PageError, Runtime, pool_image
from .imaging import example_labels, example_paths, local_example, start_with
from .panel import PRIVATE, ControlPanel, api_function, base_url, outcome_markdown, parse_seed, seed_text
from .tiles import channel_values, display_scale, is_global

__all__ = ["IMAGE_WINDOW", "STALE", "image_tab"]

# Starting values for window fields that have no default of their own (adaptive presets require one).
IMAGE_WINDOW = {"kernel_size": "4", "output_size": "16"}
# Shown above the summary once a control changed since the result was computed.
STALE = "**Out of date**: the settings changed since this result. Press **Pool** to pool again."


def image_tab(blocks: gr.Blocks, origin: gr.Textbox, runtime: Runtime) -> None:
    panel = ControlPanel("image", IMAGE_WINDOW)
    default = poolcore.methods()[0]
    with gr.Row(elem_classes=["pool-row"]):
        with gr.Column(scale=1, min_width=300, elem_classes=["pool-controls"]):
            panel.render(default)
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
            summary = outcome_markdown(res.input_shape, res.outcome)
            picture = res.image
            if is_global(res.outcome.output[0] if res.outcome.output.dim() == 4 else res.outcome.output):
                summary += f"\n\nOne value per channel: {channel_values(res.outcome.output)}"
            scale = display_scale(res.outcome.method, res.outcome.params)
            if scale != 1.0:
                # Sum-form lp grows with the window (n^(1/p) times a flat input): shown divided by it, as
                # Compare shows it, instead of clamped to white. The numbers over HTTP are not divided.
                picture = to_image(res.outcome.output / scale)
                summary += f"\n\nShown ÷ n^(1/p) = ÷ {scale:.3g}: the sum form grows with the window."
            return [picture, summary, str(used) if used is not None else ("" if seed is None else str(seed))]

        # Nothing empty on first load: the first example, pooled with the starting controls when the page
        # loads (not while the app is built, which must stay cheap).
        start_image = example_paths()[0]
        with gr.Column(scale=2, elem_classes=["pool-views"]):
            with gr.Row(equal_height=True):
                # The file as uploaded (image_mode=None: Gradio converts nothing), for the service's codec.
                source = local_example(
                    gr.Image(
                        None,
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
                )
                result = gr.Image(
                    None,
                    label="Output (true size)",
                    type="pil",
                    format="png",
                    interactive=False,
                    height=360,
                    elem_id="image-output",
                    alt_text="the pooled image",  # the name of Gradio's fullscreen button around it
                    elem_classes=["pool-view"],
                )
            with gr.Row():
                run = gr.Button("Pool", variant="primary", elem_id="image-run")
                again = gr.Button("Sample again", visible=False, elem_id="image-again")
            info = gr.Markdown(
                "",
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
    # A new image or method pools again at once; any other change marks the result out of date, so the
    # page never shows a result as if it were for settings it was not computed with.
    # The first example is put in on load (see start_with); its change event pools it.
    start_with(blocks, source, start_image)
    source.change(run_fn, inputs, outputs, api_visibility="private")
    panel.method_changed.then(run_fn, inputs, outputs, api_visibility="private")
    gr.on(
        [c.input for c in [*panel.inputs()[1:], panel.mode, panel.seed]],  # type: ignore[attr-defined]
        _mark_stale,
        info,
        info,
        **PRIVATE,
    )
    gr.on(
        [origin.change, *panel.changes()],
        snippet_fn,
        [origin, panel.mode, panel.seed, *panel.inputs()],
        snippet,
        **PRIVATE,
    )


def _mark_stale(summary: str | None) -> str:
    summary = summary or ""
    return summary if summary.startswith(STALE) else f"{STALE}\n\n{summary}"
