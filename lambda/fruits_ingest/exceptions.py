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


class InvalidField(IngestError):
    """A record of an S3 event has a field outside the ledger's contract (a forged or garbled
    event). The record is skipped and counted (``RecordsSkipped``, reason ``invalid_field``) and
    logged with this message; the other records of its message and batch go on."""

    def __init__(self, name: str, why: str) -> None:
        super().__init__(f"field {name}: {why}")
        self.field = name


class LedgerWriteError(IngestError):
    """The batch's rows could not be appended to the uploads ledger; the whole batch is reported
    failed and will be redelivered."""


class LedgerLayoutError(LedgerWriteError):
    """The table at the ledger's location is not laid out as this version writes it (its columns or
    its partitioning differ: an older version created it). Nothing is appended (the batch fails as
    for any ledger write error); the message says how to start a new ledger."""
