"""Storage and AWS access without Spark: boto3 clients (``aws``), the Delta tables through delta-rs
and Arrow (``lake``), and what changed in a table between two versions (``changes``).

Nothing here imports pyspark; the JVM-free store, the Spark jobs' drivers and the workers share it.
"""
