"""The Methods page: when and how to prune, side by side. What it draws lives in prunekit/app/views/methods.py."""

from prunekit.app.views import methods

methods.page()
