"""The ingest Lambda: S3 events from SQS -> rows of the uploads ledger (a Delta table)."""
