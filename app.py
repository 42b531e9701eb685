"""ConvScope: router and shared sidebar. Run with `streamlit run app.py`."""

import streamlit as st

from ui import runtime

runtime.keep_keras_state()  # shared models: Streamlit must not clear Keras's state after every rerun
st.set_page_config(page_title="ConvScope", page_icon="🔬", layout="wide")

pages = [
    st.Page("pages/home.py", title="Home", icon="🏠", default=True),
    st.Page("pages/datasets.py", title="Dataset Explorer", icon="🗂️"),
    st.Page("pages/train.py", title="Train", icon="🏋️"),
    st.Page("pages/import_model.py", title="Import a model", icon="📥"),
    st.Page("pages/finetune.py", title="Fine-tune", icon="🎚️"),
    st.Page("pages/predict.py", title="Predict", icon="🔮"),
    st.Page("pages/evaluate.py", title="Evaluate", icon="📊"),
    st.Page("pages/runs.py", title="Runs", icon="🗃️"),
    st.Page("pages/inside.py", title="Inside the network", icon="🔍"),
]
pg = st.navigation(pages)
st.sidebar.caption("ConvScope · transfer learning and CNN insight")
pg.run()
