"""prunekit: an honest, fast engine for exploring neural-network pruning.

Layers, each importing only those before it: ``core`` (the engine), ``models`` (zoo, data, training),
``deploy`` (latency, export, recovery), ``service`` (evaluation workers, store, Ray), ``app`` (the
Streamlit lab, the only part that imports streamlit) and ``cli``.
"""

__version__ = "0.1.0"
