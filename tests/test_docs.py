"""The README's pictures exist, and the channel picture shows Lite0's early and late channels."""

import re
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def test_every_picture_the_readme_shows_exists():
    readme = (ROOT / "README.md").read_text()
    pictures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", readme)
    assert "docs/channels.png" in pictures and "docs/channels_view.png" in pictures
    for rel in pictures:
        with Image.open(ROOT / rel) as image:
            assert image.format == "PNG" and min(image.size) >= 200, rel


def test_the_channel_picture_has_an_early_and_a_late_row():
    from docs.channels_picture import ROWS

    layers = list(ROWS)
    assert layers[0].startswith("block2") and layers[-1].startswith("block6")  # early and late in Lite0
    with Image.open(ROOT / "docs" / "channels.png") as image:
        assert image.height >= len(layers) * 128 and image.width >= 8 * 128


def test_the_story_test_makes_every_readme_screenshot():
    """Each README picture is drawn by channels_picture.py or copied from the story test by story_pictures.py."""
    from docs.story_pictures import PICTURES

    readme = (ROOT / "README.md").read_text()
    shown = {Path(p).name for p in re.findall(r"!\[[^\]]*\]\(docs/([^)]+)\)", readme)}
    assert shown - {"channels.png"} == set(PICTURES)
    story = (ROOT / "tests" / "test_story.py").read_text()
    for step, _, _ in PICTURES.values():
        assert f'shot(page, "{step}")' in story, step
