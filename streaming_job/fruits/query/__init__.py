"""Stage 5, reading the tables: ``result`` (what a query returns, and its text and JSON forms),
``sql`` (Spark SQL) and ``store`` (the JVM-free ``FeatureStore``: delta-rs, DuckDB, similar
images, labels, status)."""
