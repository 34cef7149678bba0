"""prunekit: an honest, fast engine for exploring neural-network pruning.

The engine never imports streamlit; the app binds to it through ``prunekit_app.glue``.
"""

__version__ = "0.1.0"
