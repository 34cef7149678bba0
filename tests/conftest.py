"""Test-wide settings: results go to a throw-away store, and the app's evaluation service runs one
worker without background curve filling (a test that checks the curve turns it on)."""

import os
import tempfile

os.environ["PRUNEKIT_CACHE_DIR"] = tempfile.mkdtemp(prefix="prunekit-test-cache-")
os.environ.setdefault("PRUNEKIT_WORKERS", "1")
os.environ.setdefault("PRUNEKIT_CURVE_FILL", "0")
