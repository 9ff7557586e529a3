"""A task's outputs as one mime bundle: what its cell shows and what the notebook saves.

A task's cell holds one display output, made when the cell submits the task and
updated in place by its display id. That is the one kind of output every client
keeps: JupyterLab applies an update to a display in any earlier cell, and a
headless client (nbclient, papermill) applies an update sent while a later cell
runs to the display it made earlier; outputs *appended* to a cell that has
finished are dropped by headless clients. So everything the task produced, in
order, is merged into that one display:

- ``text/html``: the status line, then each stream as preformatted text (stderr
  shaded), each display as its HTML (a DataFrame's table), images inline as
  ``data:`` URIs, LaTeX as math for the page to typeset, Markdown as its text, and
  each traceback;
- ``text/plain``: the same as text, for viewers that show only text.

Colour codes (a traceback's) are dropped in both: a saved file reads the same in
every viewer.

Widgets cannot be merged into HTML: they are shown as displays of their own (see
:class:`~ipytasks.views.CellView`). Streams are windows (start and end) and only
the first and last displays of a task that shows very many are kept, so a refresh
costs about the same whatever the task printed.
"""

from __future__ import annotations

import base64
import html
import json
import re
from typing import Any

from .output import _Stream

__all__ = ("WIDGET_MIME", "merge", "is_widget")

WIDGET_MIME = "application/vnd.jupyter.widget-view+json"

#: A task that shows more displays than this keeps its first and last ones.
MAX_DISPLAYS = 40

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[@-_]")

# Monospace and tight as a notebook's own stream output, also where the page's styles for
# HTML outputs (nbconvert's, a code host's) would set a text font and wide lines.
_PRE_STYLE = (
    "margin:0;border:0;white-space:pre-wrap;word-break:break-word;line-height:1.3;"
    "font-family:var(--jp-code-font-family,SFMono-Regular,Menlo,Consolas,monospace);"
    "font-size:var(--jp-code-font-size,13px)"
)
_PRE = f'<pre style="{_PRE_STYLE};padding:1px 0;background:none">{{}}</pre>'
_PRE_SHADED = f'<pre style="{_PRE_STYLE};padding:1px 2px;background:rgba(255,0,0,.08)">{{}}</pre>'
_IMAGE_TYPES = ("image/png", "image/jpeg", "image/gif")


def is_widget(item: dict[str, Any] | _Stream) -> bool:
    """Whether ``item`` displays a widget (which no static bundle can hold)."""
    return isinstance(item, dict) and WIDGET_MIME in item.get("data", ())


def merge(outputs: list[dict[str, Any] | _Stream], note: str) -> tuple[str, str]:
    """``(text, html)`` of ``outputs`` in order; ``note`` fills the gap of a long stream."""
    plain: list[str] = []
    rich: list[str] = []
    for item in _bounded(outputs):
        if isinstance(item, _Stream):
            text = _strip_ansi(item.shown_text(note))
            plain.append(text)
            template = _PRE_SHADED if item.name == "stderr" else _PRE
            rich.append(template.format(_escape(text)))
        elif isinstance(item, str):  # a note of ours
            plain.append(item + "\n")
            rich.append(_PRE.format(_escape(item)))
        elif item.get("output_type") == "error":
            text = "\n".join(item.get("traceback") or ()) or f"{item['ename']}: {item['evalue']}"
            text = _strip_ansi(text)
            plain.append(text + "\n")
            rich.append(_PRE_SHADED.format(_escape(text)))
        elif not is_widget(item):
            data = item.get("data") or {}
            shown = data.get("text/plain")
            if shown is not None:
                plain.append(_strip_ansi(_text(shown)) + "\n")
            rich.append(_display_html(data, item.get("metadata") or {}))
    return "".join(plain), "".join(rich)


def _bounded(outputs: list[dict[str, Any] | _Stream]) -> list[Any]:
    displays = [i for i, o in enumerate(outputs) if isinstance(o, dict) and not is_widget(o)]
    if len(displays) <= MAX_DISPLAYS:
        return list(outputs)
    keep_first = MAX_DISPLAYS // 2
    dropped = set(displays[keep_first : len(displays) - (MAX_DISPLAYS - keep_first)])
    shown: list[Any] = []
    for i, item in enumerate(outputs):
        if i in dropped:
            if not shown or not isinstance(shown[-1], str):
                shown.append(f"… {len(dropped)} displays left out here "
                             "(the dashboard's Output shows them all) …")
            continue
        shown.append(item)
    return shown


def _display_html(data: dict[str, Any], metadata: dict[str, Any]) -> str:
    if "text/html" in data:
        return f"<div>{_text(data['text/html'])}</div>"
    if "image/svg+xml" in data:
        svg = _text(data["image/svg+xml"]).encode()
        return _img("image/svg+xml", base64.b64encode(svg).decode(), metadata)
    for mime in _IMAGE_TYPES:
        if mime in data:
            return _img(mime, _text(data[mime]).replace("\n", ""), metadata.get(mime, metadata))
    if "text/latex" in data:
        return f"<div>{_escape(_text(data['text/latex']))}</div>"
    if "text/markdown" in data:
        return f'<div style="white-space:pre-wrap">{_escape(_text(data["text/markdown"]))}</div>'
    if "application/json" in data:
        return _PRE.format(_escape(json.dumps(data["application/json"], indent=1)))
    if "text/plain" in data:
        return _PRE.format(_escape(_strip_ansi(_text(data["text/plain"]))))
    return ""


def _img(mime: str, b64: str, metadata: Any) -> str:
    size = ""
    if isinstance(metadata, dict):
        for key in ("width", "height"):
            if isinstance(metadata.get(key), (int, float)):
                size += f' {key}="{metadata[key]}"'
    return f'<div><img src="data:{mime};base64,{b64}"{size}></div>'


def _text(value: Any) -> str:
    # nbformat allows a mime value to be a list of lines.
    return "".join(value) if isinstance(value, list) else str(value)


def _escape(text: str) -> str:
    return html.escape(text, quote=False)


def _strip_ansi(text: str) -> str:
    return _ANSI.sub("", text) if "\x1b" in text else text
