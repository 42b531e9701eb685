"""Training: the fit loop (feature cache, scratch), models, jobs, the run store and presets."""
