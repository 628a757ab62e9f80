"""Errors of the ingest Lambda. Each message says what to do about it."""


class IngestError(Exception):
    """Base class of the ingest Lambda's errors."""


class ConfigurationError(IngestError):
    """The Lambda's environment is incomplete or inconsistent."""


class MalformedMessage(IngestError):
    """An SQS message is not an S3 event notification (directly or inside an SNS envelope).

    Only the record that carries it fails; after the queue's maxReceiveCount it moves to the
    dead-letter queue, where it can be inspected.
    """


class ManifestWriteError(IngestError):
    """The manifest could not be written; the whole batch is reported failed and will be redelivered."""
