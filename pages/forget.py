"""The Forgetting page: what the pruned model forgets. What it draws lives in prunekit/app/views/forget.py."""

from prunekit.app.views import forget

forget.page()
