"""The Spark jobs' entry point on EMR Serverless: ``spark-submit fruits_job.py <fruits arguments>``.

infra/ starts it with ``stream --trigger "30 seconds"``, ``pca refit`` or ``maintain``; it is the
``fruits`` command, run by the driver that spark-submit started (so the session keeps the release's
master, jars and ``--conf``: ``fruits.spark.session``). ``make emr-artifacts`` copies it to
``build/emr/``.
"""

from fruits.cli import main

if __name__ == "__main__":
    main()
