"""Models and data: the zoo, the bundled architectures and their assets, uploaded checkpoints, training."""
