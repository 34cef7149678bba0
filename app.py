"""prunekit, the browser lab for neural-network pruning: ``streamlit run app.py`` (or ``./dev app``).

The app's script and its pages live in the package (``prunekit/app/main.py`` lists ``pages/``); this file is
the server: that script, warmed up (engine imported, default model loaded, workers started) before the first
session arrives.
"""

import streamlit as st

from prunekit.app.channel import routes
from prunekit.app.entry import MAIN, lifespan

app = st.App(MAIN, lifespan=lifespan, routes=routes())
