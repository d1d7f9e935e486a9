"""The example images that ship with the project.

Images in and out of the page go through the service's own codec (:mod:`service.codecs.image`).
"""

from __future__ import annotations

from pathlib import Path

import gradio as gr

__all__ = ["ASSETS", "example_labels", "example_paths", "local_example", "start_with"]

ASSETS = Path(__file__).resolve().parent.parent / "assets"


def example_paths() -> list[str]:
    """The project's example images (see ``service/ui/make_examples.py``), sorted by name."""
    return sorted(str(p) for p in ASSETS.glob("*.png"))


def example_labels() -> list[str]:
    """The examples' names, in :func:`example_paths` order (their buttons' accessible names)."""
    return [Path(p).stem for p in example_paths()]


def local_example(image: gr.Image) -> gr.Image:
    """``image`` with an API example that is one of our own files, by name. Gradio's own is a picture on
    GitHub, which ``Client.view_api()`` would show, and nothing of the page may point outside the server.
    Set on the instance: a subclass of a Gradio component makes Gradio write a ``.pyi`` beside its module."""
    name = Path(example_paths()[0]).name
    payload = {"path": name, "orig_name": name, "meta": {"_type": "gradio.FileData"}}
    vars(image)["example_payload"] = lambda: payload
    vars(image)["example_value"] = lambda: name
    return image


def start_with(blocks: gr.Blocks, source: gr.Image, image: str) -> None:
    """Put ``image`` in ``source`` when the page loads, unless the user got there first.

    A queued load event, not a starting value: a starting value would become the API's default input,
    whose URL Gradio swaps for an outside one, and an unqueued event gets file URLs without the mount
    path. Its answer can land after an upload or an example picked on a slow connection or a busy server.
    So the answer goes into a hidden image, and a browser-side step copies it into ``source`` only if
    ``source`` is still empty when it lands. (Gradio's ``cancels=`` cannot help: it cannot cancel an event
    that has not been given its queue id yet, and the page still applied the answer.)"""
    start = gr.Image(None, type="filepath", format="png", visible=False)
    blocks.load(lambda: image, None, start, api_visibility="private")
    start.change(
        None,
        [start, source],
        [source],
        js="(start, current) => current ?? start",
        api_visibility="private",
    )
