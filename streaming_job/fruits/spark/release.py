"""The one declaration of the stack: the EMR release infra/ deploys, and what it implies here.

The jobs run on EMR Serverless with the release's own Spark and Delta jars; the tests and the
demo run on the pyspark and delta-spark that ``pyproject.toml`` pins. Both must be the same Spark
minor version and the same Delta version, so they are declared once, here:

- ``infra/`` deploys ``EMR_RELEASE``;
- ``pyproject.toml`` pins ``pyspark`` to a ``SPARK_MINOR`` release and ``delta-spark`` to
  ``DELTA_VERSION``; ``spark/jars.py`` resolves the Delta jar of that version for local runs;
- ``tests/test_release.py`` fails when any of them drifts from this file.

Example::

    from fruits.spark.release import DELTA_VERSION, EMR_RELEASE
    # 'emr-spark-8.2.0' ships Spark 4.1.3 and Delta 4.2.0

Limitations: the local pyspark is 4.1.1, not the release's 4.1.3: delta-spark 4.2.0 on PyPI
accepts pyspark up to 4.1.1. Patch releases of one minor version share their APIs and formats.
"""

from __future__ import annotations

# EMR release -> (Spark minor version, Delta version) it ships, from AWS's release notes.
RELEASES = {
    "emr-spark-8.0.0": ("4.0", "4.0.0"),  # Spark 4.0.2
    "emr-spark-8.2.0": ("4.1", "4.2.0"),  # Spark 4.1.3
}
EMR_RELEASE = "emr-spark-8.2.0"
SPARK_MINOR, DELTA_VERSION = RELEASES[EMR_RELEASE]
SCALA_VERSION = "2.13"
# The jobs' Python: the release's interpreter runs the packed environment (spark/bundle.py), whose
# wheels are for this version; pyproject's requires-python is the same (tests/test_release.py).
# Assumed, not yet seen on EMR: Spark 4.1 needs Python 3.10 or newer and Amazon Linux 2023 packages
# python3.11 beside its system 3.9 (infra/README.md says to check it on the first deployment).
PYTHON_VERSION = "3.11"
PYTHON_EXECUTABLE = f"python{PYTHON_VERSION}"
