"""Dashboard pages through Streamlit's AppTest (no browser)."""

import pytest

pytestmark = pytest.mark.slow  # every test opens a page through AppTest

TIMEOUT = 120


@pytest.fixture
def app(open_page):
    return open_page("app.py", timeout=TIMEOUT)


def test_home_links_to_predict(app):
    assert "ConvScope" in app.title[0].value


def test_predict_sample_photo(app):
    app.switch_page("pages/predict.py").run()
    assert not app.exception and not app.error
    assert app.selectbox(key="backbone").value == "efficientnet_lite0"
    (heading,) = app.subheader
    assert heading.value.startswith("Chelsea the cat: ") and "cat" in heading.value.split(":")[1].lower()
    assert any("Prediction took" in c.value for c in app.caption)
    assert any("As the network sees it: 224×224 px" in str(image.proto) for image in app.get("image"))
    badges = [m.value for m in app.markdown if "badge[" in m.value]
    assert len(badges) == 1 and "Egyptian cat" in badges[0]  # one tile, with its answer


def test_predict_two_samples_and_top_k(app):
    app.switch_page("pages/predict.py").run()
    app.multiselect(key="samples").set_value(["chelsea", "coffee"]).run()
    app.slider(key="top_k").set_value(3).run()
    assert not app.exception
    badges = [m.value for m in app.markdown if "badge[" in m.value]
    assert len(badges) == 2 and "espresso" in badges[1]  # a tile per image
    app.selectbox(key="closer").set_value(1).run()  # look closer at the second
    (heading,) = app.subheader
    assert heading.value.startswith("A cup of coffee: espresso")
    (chart,) = app.get("plotly_chart")
    assert '"y":[' in chart.proto.spec and chart.proto.spec.count("%") >= 3  # top 3 bars


def test_no_image_selected_shows_a_hint(app):
    app.switch_page("pages/predict.py").run()
    app.multiselect(key="samples").set_value([]).run()
    assert not app.exception and "Pick images above" in app.info[0].value


def test_unusable_backbones_are_listed_with_reasons(app):
    app.switch_page("pages/predict.py").run()
    names = app.selectbox(key="backbone").options
    assert all("TF Hub" not in n and "scratch" not in n for n in names)
    greyed = " ".join(m.value for m in app.markdown)
    assert "AlexNet" in greyed and "no ImageNet head" in greyed
