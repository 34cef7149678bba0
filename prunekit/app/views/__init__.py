"""One file per page, run by Streamlit (not named pages/: that would turn on its legacy multipage routing)."""
