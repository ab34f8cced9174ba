"""Curation stages: filters, dedup and selection over stored rows."""
