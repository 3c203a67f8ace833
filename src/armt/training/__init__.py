"""Training on the Hugging Face Trainer: config, curriculum, metrics."""
