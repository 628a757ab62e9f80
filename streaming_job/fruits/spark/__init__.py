"""Spark's side of the pipeline: the session (``session``), its jars (``jars``), the tables' DDL and
writes (``tables``, ``schema``) and their maintenance (``maintenance``). Nothing Spark-free imports it."""
