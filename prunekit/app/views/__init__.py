"""The app's pages, each a ``page()`` that reads as a list of panels (the top-level pages/ files call them)."""

import streamlit as st


def intro(title: str, explanation: str, label: str = "What am I looking at?") -> None:
    """A page's title and, folded under ``label``, what it shows and how to read it."""
    st.title(title)
    with st.expander(label):
        st.markdown(explanation)
