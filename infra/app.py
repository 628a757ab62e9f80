"""CDK entry point: ``cdk synth`` / ``cdk deploy`` (or ``make synth``) run this.

Context (``-c key=value``): ``stage`` (default ``dev``), ``region`` (default ``eu-west-3``),
``emrRelease``, ``refitSchedule``, ``maintainSchedule`` (default ``rate(1 day)``), ``startStream``
(``true`` once the job's artifacts are uploaded), ``alarmEmail``, ``apiConcurrency`` (the HTTP API's
reserved concurrency, default 50; 0 for none).
"""

from __future__ import annotations

import os

import aws_cdk as cdk

from fruits_infra import FruitsStack, StageConfig

app = cdk.App()
config = StageConfig.from_context(app.node)
FruitsStack(
    app,
    f"fruits-{config.stage}",
    config=config,
    env=cdk.Environment(account=os.environ.get("CDK_DEFAULT_ACCOUNT"), region=config.region),
)
app.synth()
