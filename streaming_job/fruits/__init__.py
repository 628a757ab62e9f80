"""Fruits! image-feature pipeline: the Spark jobs and the local tooling around them."""
