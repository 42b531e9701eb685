"""Copy the README's pictures from the story test's screenshots (tests/test_story.py).

CONVSCOPE_STORY_SHOTS=/tmp/shots .venv/bin/python -m pytest tests/test_story.py -s
.venv/bin/python docs/story_pictures.py /tmp/shots      # writes docs/datasets.png, docs/train.png, ...

Each screenshot is cut to the part the README talks about (the top `keep` pixels), scaled to `width` and
stored with at most 256 colours, so the pictures stay small.
"""

import sys
from pathlib import Path

from PIL import Image

DOCS = Path(__file__).resolve().parent
# README picture: (the test's step name, pixels kept from the top of the 1300 px wide screenshot, width)
PICTURES = {
    "datasets.png": ("datasets", 1500, 1000),
    "train.png": ("train-finished", 1380, 1000),
    "finetune.png": ("finetune", 4000, 900),
    "predict.png": ("predict-test-split", 1500, 1000),
    "evaluate.png": ("evaluate", 2100, 1000),
    "runs.png": ("runs", 1500, 1000),
    "inside.png": ("inside-gradcam", 2200, 1000),
    "channels_view.png": ("inside-channel", 3000, 1000),
}


def picture(shot: Path, keep: int, width: int) -> Image.Image:
    """The top `keep` pixels of a screenshot, `width` pixels wide, in 256 colours (octree keeps small bright areas)."""
    with Image.open(shot) as image:
        image = image.convert("RGB")
        image = image.crop((0, 0, image.width, min(keep, image.height)))
        height = round(image.height * width / image.width)
        image = image.resize((width, height), Image.LANCZOS)
        return image.quantize(256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)


def main(folder: str) -> None:
    shots = Path(folder)
    for name, (step, keep, width) in PICTURES.items():
        found = sorted(shots.glob(f"[0-9][0-9]-{step}.png"))
        if not found:
            sys.exit(f"no screenshot of step {step!r} in {shots}: run tests/test_story.py first")
        out = DOCS / name
        picture(found[-1], keep, width).save(out, optimize=True)
        print(f"{out.name}: {out.stat().st_size // 1024} KB from {found[-1].name}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
