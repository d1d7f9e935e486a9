"""How the page looks: the theme (colours chosen for WCAG AA contrast) and the page's own CSS."""

from __future__ import annotations

import gradio as gr

__all__ = ["CSS", "THEME"]

# Gradio's bundled font plus system fallbacks: nothing is fetched from a font CDN. The default theme's
# secondary text, placeholders and the accent on white fall below WCAG AA's 4.5:1 contrast (axe-core's
# color-contrast rule): these darker neutrals and a darker orange keep text readable.
THEME = gr.themes.Default(
    primary_hue=gr.themes.colors.orange,
    neutral_hue=gr.themes.colors.gray,
    font=[gr.themes.LocalFont("Source Sans Pro"), "ui-sans-serif", "system-ui", "sans-serif"],
    font_mono=[gr.themes.LocalFont("IBM Plex Mono"), "ui-monospace", "Consolas", "monospace"],
).set(
    body_text_color_subdued="*neutral_600",
    block_info_text_color="*neutral_600",
    block_label_text_color="*neutral_700",
    block_title_text_color="*neutral_800",
    input_placeholder_color="*neutral_500",
    button_primary_background_fill="*primary_700",
    button_primary_background_fill_hover="*primary_800",
    button_primary_text_color="white",
    checkbox_label_text_color="*neutral_800",
    link_text_color="*secondary_700",
    link_text_color_visited="*secondary_800",
)

# Input and output fill the same box; the browser upscales small outputs with nearest neighbour, so each
# pooling window shows as one block while the image keeps its true pixel size.
CSS = """
.pool-view img { width: 100% !important; height: 300px !important; max-height: 300px !important;
                 object-fit: contain; image-rendering: pixelated; }
.compare-source img { height: 200px !important; max-height: 200px !important; }
/* Text blocks grow with their text: a block that scrolls must be focusable (axe's
   scrollable-region-focusable), and Gradio's pending state briefly makes these scroll. */
#image-info, #compare-info, #tensor-info, #image-guide, #tensor-guide { overflow: visible !important; }
/* Gradio's progress text ("processing | 0.4s") is grey on white at 3.2:1: darker. */
.meta-text, .meta-text-center, .progress-text { color: #4b5563 !important; }
/* Compare tiles: five a row, the caption below its image, long captions wrap. */
#compare-tiles .tiles { display: grid; grid-template-columns: repeat(auto-fill, minmax(150px, 1fr));
    gap: 12px; }
#compare-tiles figure { margin: 0; }
#compare-tiles img { width: 100%; aspect-ratio: 1; object-fit: contain; image-rendering: pixelated;
    border: 1px solid #767676; box-sizing: border-box;
    background: #f3f4f6; }
#compare-tiles figcaption { font-size: 0.85em; line-height: 1.3; overflow-wrap: anywhere; margin-top: 4px; }
/* A row of controls whose every control is hidden (a global method has no window) takes no room: without
   this its empty flex box still adds the column's gap, a blank band above the guide. */
.pool-controls > .row:not(:has(.block)) { display: none; }
/* A display formula wider than its column scrolls inside it instead of being cut off. */
.katex-display { overflow-x: auto; overflow-y: hidden; padding-bottom: 2px; }
/* On a phone the columns stack: the image comes first, the controls after it. */
@media (max-width: 640px) { .pool-row { flex-direction: column; } .pool-views { order: -1; } }
/* Snippets scroll inside their box instead of widening the page. */
.snippet pre, .snippet code { white-space: pre-wrap !important; overflow-wrap: anywhere; }
.snippet pre { max-width: 100%; overflow-x: auto; }
/* Prism's token colours on the code blocks' grey fall below 4.5:1 (axe color-contrast): darker ones. */
body:not(.dark) .prose .token.string, body:not(.dark) .prose .token.builtin,
body:not(.dark) .prose .token.attr-value, body:not(.dark) .prose .token.char { color: #116329 !important; }
body:not(.dark) .prose .token.function,
body:not(.dark) .prose .token.class-name { color: #8a1538 !important; }
body:not(.dark) .prose .token.parameter, body:not(.dark) .prose .token.variable { color: #7c2d12 !important; }
body:not(.dark) .prose .token.keyword, body:not(.dark) .prose .token.atrule { color: #0b4f8a !important; }
body:not(.dark) .prose .token.number, body:not(.dark) .prose .token.boolean,
body:not(.dark) .prose .token.constant { color: #6b21a8 !important; }
body:not(.dark) .prose .token.comment { color: #4b5563 !important; }
body:not(.dark) .prose .token.operator,
body:not(.dark) .prose .token.punctuation { color: #374151 !important; }
.prob-table, .window-table { border-collapse: collapse; margin: 0 1em 0.6em 0; display: inline-table; }
.prob-table td, .window-table td { border: 1px solid #767676; padding: 2px 6px; text-align: right;
    font-family: monospace; }
.prob-table caption, .window-table caption { font-size: 0.85em; text-align: left; }
.window-table td.in-window { background: #0b4f8a; color: #fff; font-weight: bold; }
.window-table td.drawn { outline: 3px solid #b45309; outline-offset: -3px; }
"""
