"""The Streamlit viewer (`hms app`)."""
