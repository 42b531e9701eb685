"""Dataset health: likely label mistakes, outliers, near-duplicates and leaks across splits.

`analysis.analyse` scores every image with a linear head that never saw it (K-fold on
cached backbone features) and hands the scores to cleanlab; `explain.head_model` is that
head on the backbone, for where the model looked. Fixing is engine.data.corrections.
"""
