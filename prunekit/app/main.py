"""prunekit: a browser lab for neural-network pruning. ``streamlit run app.py`` (the checkout's top level) or
``./dev app`` serves it; this is the script every session runs: the sidebar, then the page asked for.

The page files are the top-level ``pages/`` folder (inside the package once installed). They are listed here by
``st.navigation`` rather than found by Streamlit's older ``pages/``-beside-the-main-script convention: this
script's own folder has no ``pages/``, so a direct link to any page runs through this script and its sidebar.
"""

import streamlit as st

from prunekit.app import server_state, session_state, sidebar
from prunekit.shipped import folder

PAGES = folder("pages")

PAGE_LIST = [
    st.Page(PAGES / "model.py", title="Model", icon="🔎", default=True, url_path="model"),
    st.Page(PAGES / "prune.py", title="Prune", icon="✂️", url_path="prune"),
    st.Page(PAGES / "importance.py", title="Filter importance", icon="🌡️", url_path="importance"),
    st.Page(PAGES / "sensitivity.py", title="Sensitivity", icon="📉", url_path="sensitivity"),
    st.Page(PAGES / "tradeoffs.py", title="Trade-offs", icon="⚖️", url_path="tradeoffs"),
    st.Page(PAGES / "forget.py", title="Forgetting", icon="🧩", url_path="forget"),
    st.Page(PAGES / "methods.py", title="Methods", icon="🧪", url_path="methods"),
]

st.set_page_config(page_title="prunekit", page_icon="✂️", layout="wide")
with server_state.turns().turn():  # runs take turns: a room's reruns queue instead of starving each other
    sidebar.sidebar()
    page = st.navigation(PAGE_LIST)
    sidebar.show_notices()
    if not sidebar.loading_panel():  # the session's model is ready
        with session_state.reported("This page cannot be shown"):  # typed errors only: a bug fails loudly
            page.run()
    session_state.sync_query()
