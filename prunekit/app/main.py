"""prunekit: a browser lab for neural-network pruning. Run with ``./dev app``."""

import streamlit as st

from prunekit.app import session_state, sidebar

st.set_page_config(page_title="prunekit", page_icon="✂️", layout="wide")
sidebar.sidebar()
pages = [
    st.Page("views/model.py", title="Model", icon="🔎", default=True, url_path="model"),
    st.Page("views/prune.py", title="Prune", icon="✂️", url_path="prune"),
    st.Page("views/importance.py", title="Filter importance", icon="🌡️", url_path="importance"),
    st.Page("views/sensitivity.py", title="Sensitivity", icon="📉", url_path="sensitivity"),
    st.Page("views/tradeoffs.py", title="Trade-offs", icon="⚖️", url_path="tradeoffs"),
    st.Page("views/forget.py", title="Forgetting", icon="🧩", url_path="forget"),
]
page = st.navigation(pages)
sidebar.show_notices()
page.run()
session_state.sync_query()
