"""Running the pipeline on one machine: the AWS emulator (``emulator``, moto's server), the
Lambda's local event source mapping (``ingest``), the app's uploads (``upload``) and the demo
(``demo``). Development and demo tooling: the pipeline itself never imports it."""
