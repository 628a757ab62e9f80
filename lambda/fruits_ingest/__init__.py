"""The ingest Lambda: S3 events from SQS -> manifests on S3."""
