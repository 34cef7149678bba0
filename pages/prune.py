"""The Prune page: global against local pruning at one sparsity. What it draws lives in prunekit/app/views/prune.py."""

from prunekit.app.views import prune

prune.page()
