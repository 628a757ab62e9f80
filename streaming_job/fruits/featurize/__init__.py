"""The worker side of the featurizer: what Spark's Python workers import to turn uploads into rows.

- ``images``: bytes -> the model's input, or a quarantine ``Reason``;
- ``fetch``: an upload's bytes from S3, patient with outages;
- ``model``: the compiled MobileNetV2 run by LiteRT (``Featurizer``);
- ``batch``: the pandas UDF's body, ``featurize_batches``.

``build`` is the driver's: it reads the weights and compiles the model with TensorFlow, or loads a
compiled ``.tflite`` as it is (``load_model``). The rest
imports numpy, Pillow, pandas, boto3 and LiteRT only (``tests/test_import_boundaries.py``).
"""
