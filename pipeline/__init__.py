"""Thin glue between the `lifelong` library and DVC stages, Ray and MLflow: one module per stage."""
