"""The Trade-offs page: recipes against sparsity and speedup. What it draws lives in prunekit/app/views/tradeoffs.py."""

from prunekit.app.views import tradeoffs

tradeoffs.page()
