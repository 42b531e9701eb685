"""Landing page: what ConvScope does and where to start."""

import streamlit as st

st.title("🔬 ConvScope")
st.markdown(
    """
Train image classifiers on pretrained backbones and look inside convolutional
networks, in the browser.

**Start here:** open **Predict** to classify your own photos with
EfficientNet-Lite0, an ImageNet network that ships with ConvScope and works
offline. Everything the dashboard does is also scriptable: `python -m engine --help`.
"""
)
st.page_link("pages/predict.py", label="Classify an image", icon="🔮")
