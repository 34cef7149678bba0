"""The Filter importance page: which filters each criterion keeps. What it draws lives in prunekit/app/views/importance.py."""

from prunekit.app.views import importance

importance.page()
