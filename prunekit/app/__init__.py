"""The Streamlit app: the only part of prunekit that imports streamlit."""
