"""The Model page: where a model's parameters and compute live. What it draws lives in prunekit/app/views/model.py."""

from prunekit.app.views import model

model.page()
