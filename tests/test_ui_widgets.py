"""Pure helpers of ui/widgets.py, without a page."""

import pytest

from ui import widgets


def _snap(epoch: int, batch: int, *, start: int = 48, epochs: int = 58, batches: int = 10) -> dict:
    progress = {"stage": "training", "epoch": epoch, "batch": batch, "batches": batches}
    return {"status": "running", "progress": progress, "epochs": epochs, "start_epoch": start}


def test_finetune_progress_starts_at_zero_and_counts_its_own_epochs():
    # The first report of a fine-tune of a 48-epoch parent: epoch 48 (the parent's), batch 0.
    done, where = widgets.training_progress(_snap(48, 0))
    assert done == 0.0
    assert where.startswith("Epoch 1/10 of this fine-tune (49/58")
    done, where = widgets.training_progress(_snap(49, 5))  # half of its first epoch
    assert done == 0.05
    assert "batch 5/10" in where
    done, _ = widgets.training_progress(_snap(58, 10))  # the last epoch's end
    assert done == 1.0


def test_scratch_progress_is_unchanged():
    assert widgets.training_progress(_snap(0, 0, start=0, epochs=5)) == (0.0, "Epoch 1/5 · batch 0/10")
    done, where = widgets.training_progress(_snap(2, 5, start=0, epochs=5))
    assert done == 0.3 and where == "Epoch 2/5 · batch 5/10"
    done, _ = widgets.training_progress(_snap(3, 0, start=0, epochs=5))  # resumed after 3 epochs
    assert done == 0.6


@pytest.mark.slow
def test_job_progress_renders_a_finetunes_first_report():
    """The bar itself: Streamlit refuses a negative value ("StreamlitValueOutOfRangeError -0.1")."""
    from streamlit.testing.v1 import AppTest

    def script():
        from ui import widgets

        snap = {
            "status": "running",
            "epochs": 58,
            "start_epoch": 48,
            "progress": {"stage": "training", "epoch": 48, "batch": 0, "batches": 10},
        }
        widgets.job_progress(snap)

    at = AppTest.from_function(script, default_timeout=60).run()
    assert not at.exception, at.exception


@pytest.mark.slow
def test_features_read_from_the_cache_are_not_shown_as_computed():
    """The Train page said "Computing backbone features: 300 of 300" when all 300 came from the cache."""
    from streamlit.testing.v1 import AppTest

    def script():
        import streamlit as st

        from ui import widgets

        for cached in (True, False):
            progress = {"stage": "features", "message": "Computing backbone features", "done": 300, "total": 300}
            widgets.job_progress({"status": "running", "progress": {**progress, "cached": cached}})
            st.divider()

    at = AppTest.from_function(script, default_timeout=60).run()
    assert not at.exception, at.exception
    texts = [str(p.proto.text) for p in at.get("progress")]
    assert texts == ["Backbone features: 300 from the cache", "Computing backbone features: 300 of 300"]
