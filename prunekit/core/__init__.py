"""The pruning engine: profile a model, score its weights, allocate sparsity, apply masks, evaluate.

Knows nothing of the bundled models, the evaluation service or the app (they import it, never the reverse).
"""
