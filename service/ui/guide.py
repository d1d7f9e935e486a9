"""The method guide beside each method picker: the registry's :class:`poolcore.Guide` as Markdown, with
the formula between ``$$`` for the page's LaTeX rendering (``gr.Markdown(latex_delimiters=...)``)."""

from __future__ import annotations

import poolcore

__all__ = ["LATEX_DELIMITERS", "guide_markdown"]

# Display maths only: a lone "$" in running text (prices, shell) must stay text.
LATEX_DELIMITERS: list[dict[str, str | bool]] = [{"left": "$$", "right": "$$", "display": True}]


def guide_markdown(method: str) -> str:
    """What ``method`` computes, where it comes from, when to pick it and what train mode changes."""
    spec = poolcore.get_spec(method)
    guide = spec.guide
    preset = f" A preset of `{spec.base}`." if spec.base else ""
    parts = [f"**{spec.name}**: {spec.description}{preset}"]
    if guide.formula:
        parts.append(f"$${guide.formula}$$")
    if guide.use:
        parts.append(f"**When to pick it.** {guide.use}")
    parts.append(f"**Train and eval.** {guide.training}")
    if guide.paper:
        parts.append(f"**Paper.** {guide.paper}")
    return "\n\n".join(parts)
