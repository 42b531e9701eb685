"""Draw docs/channels.png: what eight channels of EfficientNet-Lite0 look for, early, middle and late.

PYTHONPATH=. .venv/bin/python docs/channels_picture.py   # about 80 s on 2 cores; cached afterwards
"""

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from engine.explain import Explainable, featurevis

ROWS = {
    "block2b_expand_activation": "early: colours, edges, stripes",
    "block4a_expand_activation": "middle: textures, repeated parts",
    "block6d_expand_activation": "late: fur, eyes, faces, object parts",
}
LABEL = 230  # px of text left of each row


def main() -> None:
    model = Explainable.from_backbone("efficientnet_lite0")
    rows = []
    for layer, words in ROWS.items():
        pictures = featurevis.visualize(model, layer, list(range(8)), featurevis.Settings())
        strip = np.concatenate([p.image for p in pictures], axis=1)
        canvas = Image.new("RGB", (LABEL + strip.shape[1], strip.shape[0] + 4), "white")
        canvas.paste(Image.fromarray(strip), (LABEL, 2))
        draw = ImageDraw.Draw(canvas)
        draw.text((6, 48), layer, fill=(20, 20, 20))
        draw.text((6, 64), words, fill=(90, 90, 90))
        draw.text((6, 80), "channels 0-7, 256 steps, 128 px", fill=(90, 90, 90))
        rows.append(np.asarray(canvas))
    out = Path(__file__).with_name("channels.png")
    Image.fromarray(np.concatenate(rows, axis=0)).save(out)
    print(f"written {out}")


if __name__ == "__main__":
    main()
