"""Reading a spec's sources: local files (files) and Hugging Face datasets (hub)."""
