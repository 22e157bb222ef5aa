"""Draw the module and extension icon (Resources/Icons/SegMate.png, 128 x 128) with Pillow.

An axial chest slice in the organs' own colours (organ table): lungs, trachea, esophagus, aorta,
spinal cord in its vertebra. Drawn at 4x and downsampled for smooth edges.

    .venv/bin/python SegMateSlicer/Utilities/make_icon.py
"""
from __future__ import annotations

import json
from pathlib import Path

from PIL import Image, ImageDraw

MODULE_DIR = Path(__file__).resolve().parents[1]
ICON = MODULE_DIR / "Resources" / "Icons" / "SegMate.png"
SCALE = 4


def organColours() -> dict[str, tuple[int, int, int, int]]:
    table = json.loads((MODULE_DIR.parent / "Resources" / "organs.json").read_text(encoding="utf-8"))
    return {o["key"]: (*o["color"], 255) for o in table["organs"]}


def drawIcon(path: Path = ICON, size: int = 128) -> Path:
    colours = organColours()
    width = size * SCALE
    image = Image.new("RGBA", (width, width), (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)

    def box(x0, y0, x1, y1):
        return [x0 * SCALE, y0 * SCALE, x1 * SCALE, y1 * SCALE]

    draw.rounded_rectangle(box(2, 2, size - 2, size - 2), radius=24 * SCALE, fill=(28, 52, 84, 255))
    draw.ellipse(box(14, 26, 114, 106), fill=(62, 88, 120, 255), outline=(200, 215, 230, 255), width=3 * SCALE)
    draw.ellipse(box(24, 36, 58, 92), fill=colours["right_lung"])  # patient's right on the image left
    draw.ellipse(box(70, 36, 104, 92), fill=colours["left_lung"])
    draw.ellipse(box(57, 40, 71, 54), fill=colours["trachea"])
    draw.ellipse(box(60, 60, 72, 72), fill=colours["esophagus"])
    draw.ellipse(box(70, 62, 84, 76), fill=colours["aorta"])
    draw.ellipse(box(57, 84, 71, 98), fill=(120, 130, 140, 255))  # vertebra
    draw.ellipse(box(61, 88, 67, 94), fill=colours["spinal_cord"])
    image.resize((size, size), Image.LANCZOS).save(path)
    return path


if __name__ == "__main__":
    print(drawIcon())
