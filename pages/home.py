"""Landing page: what ConvScope does and where to start."""

import streamlit as st

from ui import router

router.ensure_routed()
st.title("🔬 ConvScope")
st.markdown(
    """
Train image classifiers on pretrained backbones and look inside convolutional
networks, in the browser.

**Start here:**
- **Dataset Explorer**: open the built-in shapes set, your own zip of class
  folders, a server folder or a TensorFlow Datasets set; see the class balance,
  samples, every skipped file and why, augmentations, and whether the classes
  separate in a pretrained network's feature space.
- **Train**: train a classifier on the data you chose, from the bundled
  EfficientNet-Lite0 (features computed once and cached, so a run takes
  seconds) or a small CNN from scratch; watch the loss and accuracy curves
  live, stop, resume, and find every run again. Classic tutorial recipes are
  one click away.
- **Fine-tune**: unfreeze the top of a trained run's backbone, with advice,
  a learning-rate finder and a map of what trains.
- **Predict**: classify your own photos (many at once, or the camera) with
  EfficientNet-Lite0, an ImageNet network that ships with ConvScope and works
  offline, or with a model you trained.
- **Evaluate**: how good a trained model is per class, which classes it
  confuses and why (a click on a confusion cell shows those images with their
  Grad-CAMs), and whether its confidence can be trusted (calibration).
- **Import a model**: bring the `.keras` file from your own notebook (the
  transfer-learning tutorial's model, say) with its labels; ConvScope checks
  it, loads it safely, tells which preprocessing it expects, and then every
  page works on it like on a run trained here.
- **Runs**: every run in one table; rename, delete, compare side by side, and
  a bake-off of several backbones on the same data.
- **Inside the network**: every layer's feature maps, the first layer's
  filters, a walk from edges to objects, where the network looked for any
  class (Grad-CAM, Grad-CAM++, Layer-CAM, Score-CAM, Eigen-CAM, CAM, gradients,
  SmoothGrad, Integrated Gradients, occlusion), checks that say how far to
  trust each map, and what each channel looks for: its feature visualisation
  and the images of your data where it fires most.

Everything the dashboard does is also scriptable: `python -m engine --help`.
"""
)
st.page_link("pages/datasets.py", label="Explore a dataset", icon="🗂️")
st.page_link("pages/train.py", label="Train a classifier", icon="🏋️")
st.page_link("pages/predict.py", label="Classify an image", icon="🔮")
st.page_link("pages/evaluate.py", label="Evaluate a trained model", icon="📊")
st.page_link("pages/import_model.py", label="Import your own Keras model", icon="📥")
st.page_link("pages/runs.py", label="Compare runs", icon="🗃️")
st.page_link("pages/inside.py", label="Look inside the network", icon="🔍")
