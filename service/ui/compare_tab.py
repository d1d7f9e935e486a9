"""The Compare tab: every registered method on one input, side by side, in three views (pooled, zoomed
crop, difference from avg; see :mod:`.tiles`). Its button is the public endpoint ``/compare``."""

from __future__ import annotations

import base64
import html
import io
import time
from typing import Any

import gradio as gr
from PIL import Image

import poolcore

from . import snippets
from .controls import parse_text
from .handlers import PageError, Runtime, compare_params, pool_image
from .imaging import example_labels, example_paths, local_example, start_with
from .panel import PRIVATE, api_function, base_url, parse_seed, seed_text, shape_text
from .tiles import VIEWS, caption, display_scale, reference_of, shared_gain, tile

__all__ = ["START_VIEW", "compare_tab"]

# The view the tab opens on: single windows, large enough to see how each method summarises them.
START_VIEW = "zoomed crop"


def _calls(
    kernel_text: str, output_text: str, mode: str, seed: int | str | None
) -> dict[str, dict[str, Any]]:
    """Each method's request parameters for one shared window."""
    k = parse_text(kernel_text) if kernel_text.strip() else None
    o = parse_text(output_text) if output_text.strip() else None
    out = {}
    for method in poolcore.methods():
        spec = poolcore.get_spec(method)
        params = compare_params(method, k, o)
        out[method] = snippets.request_params(
            params, mode if spec.takes_training else "eval", seed if spec.random else None
        )
    return out


def _compare(
    runtime: Runtime,
    image: str | None,
    kernel_text: Any,
    output_text: Any,
    mode: Any,
    seed: Any,
    view_name: Any,
) -> list[Any]:
    """The public ``/compare``: (tile, caption) pairs, a summary, and the calls as run (for the snippet)."""
    kernel_text = "4" if kernel_text is None else str(kernel_text)
    output_text = "16" if output_text is None else str(output_text)
    mode = mode or "eval"
    view_name = view_name or VIEWS[0]
    if view_name not in VIEWS:
        return [[], f"**Error 422**: view must be one of {', '.join(VIEWS)} (got {view_name!r})", {}]
    try:
        seed_value = parse_seed(seed)
    except PageError as error:
        return [[], error.markdown(), _calls(kernel_text, output_text, mode, seed_text(seed))]
    problems: list[tuple[str, str]] = []
    used_calls = _calls(kernel_text, output_text, mode, seed_value)
    results: dict[str, Any] = {}
    for method, request_params in used_calls.items():
        params = {k: v for k, v in request_params.items() if k not in ("mode", "seed")}
        spec = poolcore.get_spec(method)
        try:
            res = pool_image(
                runtime,
                image,
                method,
                params,
                mode=mode if spec.takes_training else "eval",
                seed=seed_value,
            )
        except PageError as error:
            problems.append((method, error.markdown()))
            if error.status == 400:
                break
            continue
        drawn = res.outcome.params.get("seed")
        if drawn is not None:
            request_params["seed"] = drawn
        results[method] = res.outcome
    items: list[tuple[Image.Image, str]] = []
    gain = None
    if view_name == "difference from avg":
        gain = shared_gain(
            [
                display(method, outcome) - display(reference_of(method), results[reference_of(method)])
                for method, outcome in results.items()
                if reference_of(method) in results
                and results[reference_of(method)].output.shape == outcome.output.shape
            ]
        )
    for method, outcome in results.items():
        reference = results.get(reference_of(method))
        picture, notes = tile(
            method,
            outcome.output,
            outcome.params,
            view_name,
            None if reference is None else reference.output,
            gain,
        )
        label = caption([method, shape_text(outcome.output.shape), f"{outcome.elapsed_ms:.2f} ms", *notes])
        items.append((picture, label))
    text = f"{len(items)} of {len(used_calls)} methods ran"
    text += " — problems:\n" + "\n".join(_grouped(problems)) if problems else "."
    return [items, text, used_calls]


def _grouped(problems: list[tuple[str, str]]) -> list[str]:
    """One line per distinct message, naming every method that got it (a kernel of 0 is one mistake, not
    one per method)."""
    by_message: dict[str, list[str]] = {}
    for method, message in problems:
        # The same mistake names each method in its message: said once, for all of them.
        shared = message.replace(f"for '{method}'", "for these methods")
        by_message.setdefault(shared, []).append(f"`{method}`")
    return [f"- {', '.join(methods)}: {message}" for message, methods in by_message.items()]


def _cached_image(path: str, attempts: int = 50) -> Image.Image:
    """A gallery image from Gradio's cache, read whole. Gradio names a cached image by its content's hash
    and writes it in place every time an event produces that content (``save_pil_to_cache``), so another
    event that pools the same picture at the same moment can leave it truncated for a moment: seen as
    "cannot identify image file" in a test that uploaded while the tab's own run was answering. Read
    again for up to half a second; a file that stays broken raises as before."""
    for _ in range(attempts - 1):
        try:
            return _read_image(path)
        except OSError:  # truncated or empty while it is rewritten (PIL's UnidentifiedImageError too)
            time.sleep(0.01)
    return _read_image(path)


def _read_image(path: str) -> Image.Image:
    with Image.open(path) as picture:
        picture.load()
        return picture.copy()


def tiles_html(items: Any) -> str:
    """The gallery's (image, caption) pairs as figures, each caption below its image."""
    figures = []
    for item in items or []:
        picture, label = (item[0], item[1]) if isinstance(item, (list, tuple)) else (item.image, item.caption)
        if not isinstance(picture, Image.Image):
            picture = _cached_image(str(getattr(picture, "path", picture)))
        stream = io.BytesIO()
        picture.save(stream, format="PNG")
        data = base64.b64encode(stream.getvalue()).decode()
        method, *rest = str(label).split(" · ")
        name = html.escape(method)
        notes = "<br>".join(html.escape(r) for r in rest)
        figures.append(
            f"<figure class='tile'><img src='data:image/png;base64,{data}' "
            f"alt='{name}: {html.escape(label)}'>"
            f"<figcaption><b>{name}</b><br>{notes}</figcaption></figure>"
        )
    return f"<div class='tiles'>{''.join(figures)}</div>"


def display(method: str, outcome: Any) -> Any:
    """A result as its tile shows it (lp divided by its stated scale), for the shared difference gain."""
    return outcome.output.float() / display_scale(method, outcome.params)


def compare_tab(blocks: gr.Blocks, origin: gr.Textbox, runtime: Runtime) -> None:
    any_training = any(poolcore.get_spec(m).takes_training for m in poolcore.methods())
    any_random = any(poolcore.get_spec(m).random for m in poolcore.methods())
    with gr.Row(elem_classes=["pool-row"]):
        with gr.Column(scale=1, min_width=300):
            gr.Markdown(
                "Every registered method on one input. Methods with sliding windows use **kernel_size**; "
                "adaptive presets use **output_size**; global presets pool everything to one value per "
                "channel, shown as a swatch with its numbers. **zoomed crop** shows single windows; "
                "**difference from avg** shows where a method departs from the average."
            )
            kernel = gr.Textbox(
                "4",
                label="kernel_size",
                info="an int or one per dim, e.g. 2,3",
                elem_id="compare-kernel_size",
            )
            output = gr.Textbox(
                "16",
                label="output_size",
                info="for adaptive presets; null keeps that size",
                elem_id="compare-output_size",
            )
            with gr.Row():
                mode = gr.Radio(
                    ["eval", "train"],
                    value="eval",
                    label="Mode",
                    visible=any_training,
                    elem_id="compare-mode",
                )
                seed = gr.Textbox(
                    value="",
                    label="Seed",
                    placeholder="random",
                    max_lines=1,
                    visible=any_random,
                    info="blank: drawn per run",
                    elem_id="compare-seed",
                )
            view = gr.Radio(list(VIEWS), value=START_VIEW, label="View", elem_id="compare-view")
            run = gr.Button("Pool with every method", variant="primary", elem_id="compare-run")
        # Nothing empty on first load: the cells example (bright peaks on black, where max, mean and the
        # power means part ways; on a smooth gradient every method looks the same), compared when the page
        # loads (not while the app is built: every registered operator runs here).
        start_image = next((p for p in example_paths() if "cells" in p), example_paths()[0])
        with gr.Column(scale=2, elem_classes=["pool-views"]):
            source = local_example(
                gr.Image(
                    None,
                    label="Input",
                    type="filepath",
                    image_mode=None,
                    format="png",
                    height=240,
                    sources=["upload", "clipboard"],
                    elem_id="compare-input",
                    alt_text="the input image",
                    elem_classes=["pool-view", "compare-source"],
                )
            )
            gr.Examples(
                [[p] for p in example_paths()],
                inputs=[source],
                label="Example images",
                example_labels=example_labels(),
            )
            # The tiles as the page shows them: figures with their captions below (Gradio's gallery puts
            # captions over the images, or hides them). The gallery is what the API returns: (image,
            # caption) pairs.
            tiles = gr.HTML(elem_id="compare-tiles")
            gallery = gr.Gallery(
                visible=False,
                label="Pooled by every method (true size, shown upscaled with nearest neighbour)",
                columns=5,
                object_fit="contain",
                format="png",
                height="auto",
                elem_id="compare-gallery",
            )
            summary = gr.Markdown(label="Summary", elem_id="compare-info")
    used = gr.State({})  # the calls as run, seeds included, for the snippet (a State is not in the API)
    with gr.Accordion("API snippet: the same calls over HTTP", open=True):
        snippet = gr.Markdown(elem_id="compare-snippet", elem_classes=["snippet"])

    def run_fn(
        image: str | None, kernel_text: Any, output_text: Any, mode: Any, seed: Any, view_name: Any
    ) -> list[Any]:
        return _compare(runtime, image, kernel_text, output_text, mode, seed, view_name)

    def snippet_fn(base: str, kernel_text: str, output_text: str, mode: str, seed: Any) -> str:
        return snippets.compare_snippet(
            base_url(base), _calls(kernel_text, output_text, mode or "eval", seed_text(seed))
        )

    def used_snippet_fn(base: str, calls: dict[str, dict[str, Any]]) -> Any:
        return snippets.compare_snippet(base_url(base), calls) if calls else gr.update()

    names = ["image", "kernel_size", "output_size", "mode", "seed", "view"]
    doc = "Pool an image with every method; returns (image, caption) tiles and a summary."
    event = run.click(
        api_function(run_fn, names, doc),
        [source, kernel, output, mode, seed, view],
        [gallery, summary, used],
        api_name="compare",
    )
    event.then(used_snippet_fn, [origin, used], snippet, **PRIVATE).then(
        tiles_html, [gallery], tiles, **PRIVATE
    )
    # A new view or input shows at once: the tiles never stand for another view than the one selected.
    changed = gr.on(
        [view.change, source.change],
        run_fn,
        [source, kernel, output, mode, seed, view],
        [gallery, summary, used],
        api_visibility="private",
    )
    changed.then(used_snippet_fn, [origin, used], snippet, **PRIVATE).then(
        tiles_html, [gallery], tiles, **PRIVATE
    )
    # The starting input is put in on load (see start_with); its change event compares it.
    start_with(blocks, source, start_image)
    gr.on(
        [origin.change, kernel.change, output.change, mode.change, seed.change],
        snippet_fn,
        [origin, kernel, output, mode, seed],
        snippet,
        **PRIVATE,
    )
