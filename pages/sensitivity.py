"""The Sensitivity page: one layer at a time, and a plan for a budget. What it draws lives in prunekit/app/views/sensitivity.py."""

from prunekit.app.views import sensitivity

sensitivity.page()
