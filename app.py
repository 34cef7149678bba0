"""prunekit: a browser lab for neural-network pruning. Run with ``./dev app``."""

import streamlit as st

import glue

st.set_page_config(page_title="prunekit", page_icon="✂️", layout="wide")
glue.sidebar()
pages = [
    st.Page("app_pages/model.py", title="Model", icon="🔎", default=True, url_path="model"),
    st.Page("app_pages/prune.py", title="Prune", icon="✂️", url_path="prune"),
    st.Page("app_pages/importance.py", title="Filter importance", icon="🌡️", url_path="importance"),
    st.Page("app_pages/sensitivity.py", title="Sensitivity", icon="📉", url_path="sensitivity"),
    st.Page("app_pages/tradeoffs.py", title="Trade-offs", icon="⚖️", url_path="tradeoffs"),
]
page = st.navigation(pages)
glue.show_notices()
page.run()
glue.sync_query()
