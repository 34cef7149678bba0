"""The server of an installed prunekit (``prunekit app`` without a checkout): the same ``st.App`` as the
checkout's top-level ``app.py``. Started by :func:`prunekit.app.entry.run`; never imported by the package."""

import streamlit as st

from prunekit.app.channel import routes
from prunekit.app.entry import MAIN, lifespan

app = st.App(MAIN, lifespan=lifespan, routes=routes())
