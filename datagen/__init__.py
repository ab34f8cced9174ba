"""datagen: declarative synthetic-dataset curation and distillation-data generation."""

__version__ = "0.1.0"
