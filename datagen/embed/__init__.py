"""Sentence embeddings for dedup, selection and novelty: the encoder and its cache (encode), the static fallback
model (static), and Ray actors that encode in parallel (ray_actors)."""
