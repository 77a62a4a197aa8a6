"""Placeholder pictures for mock results: an SVG drawn from the image's name.

The mock generator returns URLs on an ``.invalid`` host, which no browser can load. So the
demo can show *something* that is visibly tied to the result, the app draws a small
abstract picture whose colours and shapes derive from the name (the mock's request
fingerprint): the same prompt always shows the same picture.
"""

from __future__ import annotations

import hashlib
import re
from html import escape

SIZE = 512
#: What a placeholder name may look like (it becomes part of a URL path and of the SVG).
NAME = re.compile(r"^[A-Za-z0-9_-]{1,80}$")


def draw_placeholder(name: str) -> str:
    """An SVG document (512x512) for ``name``; deterministic."""
    digest = hashlib.sha256(name.encode("utf-8")).digest()
    hue = digest[0] * 360 // 256
    hue2 = (hue + 40 + digest[1] % 120) % 360
    shapes = []
    for i in range(6):
        b = digest[2 + i * 4 : 6 + i * 4]
        cx, cy = b[0] * SIZE // 256, b[1] * SIZE // 256
        r = 30 + b[2] * 90 // 256
        h = (hue + b[3]) % 360
        shapes.append(
            f'<circle cx="{cx}" cy="{cy}" r="{r}" fill="hsl({h},70%,60%)" fill-opacity="0.55"/>'
        )
    label = escape(name[:12])
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{SIZE}" height="{SIZE}" '
        f'viewBox="0 0 {SIZE} {SIZE}">'
        '<defs><linearGradient id="g" x1="0" y1="0" x2="1" y2="1">'
        f'<stop offset="0" stop-color="hsl({hue},65%,35%)"/>'
        f'<stop offset="1" stop-color="hsl({hue2},65%,20%)"/>'
        "</linearGradient></defs>"
        f'<rect width="{SIZE}" height="{SIZE}" fill="url(#g)"/>'
        + "".join(shapes)
        + f'<text x="24" y="{SIZE - 28}" font-family="sans-serif" font-size="22" '
        f'fill="white" fill-opacity="0.85">mock image · {label}</text>'
        "</svg>"
    )
