"""One stage of the pipeline on AWS: what ``fruits.local.emulator.provision`` creates locally, plus the
Lambda, the Spark jobs on EMR Serverless, the scheduled PCA refit and table maintenance, and the
alarms.

Every name derives from the stage (``fruits-<stage>-...``); the region defaults to eu-west-3 (Paris)
for EU data residency. Each component gets its own role with only what it uses:

- the ingest Lambda receives and deletes from its queue and reads and writes the uploads ledger
  (``tables/uploads/``) only;
- the Spark jobs read ``uploads/`` and ``artifacts/``, and read and write ``tables/``;
- the scheduler may start job runs on this application, passing the job role, and nothing more;
- the HTTP API (``fruits.api``, a container-image Lambda behind a function URL with IAM auth) reads
  ``tables/`` and nothing else; callers need the ``ApiInvokePolicy`` the stack outputs.

Example::

    app = cdk.App()
    FruitsStack(app, "fruits-dev", config=StageConfig(stage="dev"))
    app.synth()
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import aws_cdk as cdk
import jsii
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as cw_actions
from aws_cdk import aws_emrserverless as emrs
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_lambda_event_sources as sources
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_s3_notifications as s3n
from aws_cdk import aws_scheduler as scheduler
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from aws_cdk import aws_sqs as sqs
from aws_cdk import custom_resources as cr
from constructs import Construct

from fruits.spark.bundle import ARTIFACTS, ENTRY_POINT, ENVIRONMENT, MODEL_DIR, MODEL_FILE
from fruits.spark.release import EMR_RELEASE, PYTHON_EXECUTABLE

# The Lambda's package is the one source of these facts; the local event source mapping uses them too.
from fruits_ingest.config import (
    APP_PREFIX,
    BATCH_SIZE,
    BATCHING_WINDOW_SECONDS,
    LEDGER_TABLE,
    MAX_CONCURRENCY,
    MAX_RECEIVE_COUNT,
    METRICS_NAMESPACE,
    UPLOAD_PREFIX,
    IngestConfig,
)

ROOT = Path(__file__).resolve().parents[2]
LAMBDA_DIR = ROOT / "lambda"

# Labelled reference photos, and the app's users' photos: both are featurized.
UPLOADS, TABLES = (UPLOAD_PREFIX, APP_PREFIX), "tables/"
# Delta as the release ships it (EMR Serverless's documented way to turn Delta on): no Maven.
EMR_DELTA_JARS = ",".join(f"/usr/share/aws/delta/lib/{jar}.jar" for jar in ("delta-spark", "delta-storage"))
# Delta's single-driver S3 log store, named rather than left to the release's default: each table
# has one committing driver at a time (README, Table maintenance): the stream commits `features`
# and `quarantine` under its lease, the refit and `fruits maintain` the PCA tables under the refit's
# lease, and Spark only reads the uploads ledger (delta-rs writes it, with S3's conditional put). So
# no commit service (S3DynamoDBLogStore and its DynamoDB table) is needed, and the stream's reads of
# the ledger list its log from a version (delta.enableFastS3AListFrom), not whole.
LOG_STORE = "io.delta.storage.S3SingleDriverLogStore"
# Dynamic allocation, stated: on (EMR Serverless's default), 1 to 3 executors of 4 vCPU, so the
# driver's 4 vCPU and the executors fit the application's 16 vCPU; a lost executor's micro-batch
# is recomputed from its reliable checkpoint (fruits.stream.job), never from executor-local state.
DYNAMIC_ALLOCATION = {
    "spark.dynamicAllocation.enabled": "true",
    "spark.dynamicAllocation.minExecutors": "1",
    "spark.dynamicAllocation.maxExecutors": "3",
    "spark.executor.cores": "4",
}
# What fruits.spark.session sets in code for a local session, passed to the cluster as --conf: the
# stream's tables see a new version every micro-batch.
CLUSTER_TUNING = {"spark.databricks.delta.snapshotPartitions": "8"}
# The checkov checks make synth skips, per resource (CloudFormation Metadata, where checkov reads
# them), each with its reason; infra/README.md lists them. Everything else must pass. Keys are the
# stack's construct ids (a trailing * matches CDK's generated ids).
CHECKOV_SKIPS: dict[str, dict[str, str]] = {
    "AccessLogs": {
        "CKV_AWS_18": "the access-log bucket itself: logging it would log its own log deliveries",
        "CKV_AWS_21": "append-only logs that expire after 90 days: versions would add nothing",
    },
    "Uploads": {"CKV_AWS_27": "encrypted with SSE-SQS (SqsManagedSseEnabled), which this check does not see"},
    "DeadLetters": {"CKV_AWS_27": "encrypted with SSE-SQS (SqsManagedSseEnabled), which this check does not see"},
    "Ingest": {
        "CKV_AWS_116": "invoked by its SQS event source: failures go to the queue's dead-letter queue",
        "CKV_AWS_117": "reaches S3 and SQS only: a VPC would add NAT or endpoints and no protection",
        "CKV_AWS_115": "bounded by the event source's MaximumConcurrency instead (MAX_CONCURRENCY)",
        "CKV_AWS_173": "its environment holds bucket names and prefixes, no secret (encrypted at rest by AWS)",
    },
    "Api": {
        "CKV_AWS_116": "invoked synchronously through its function URL: the caller sees every failure",
        "CKV_AWS_117": "reaches S3 only: a VPC would add NAT or endpoints and no protection",
        "CKV_AWS_173": "its environment holds bucket names and paths, no secret (encrypted at rest by AWS)",
    },
    "ApiLogs": {
        "CKV_AWS_158": "log lines hold keys, statuses and timings, no photo or secret; encrypted by CloudWatch"
    },
    "IngestLogs": {"CKV_AWS_158": "log lines hold object keys and counts, no photo or secret; encrypted by CloudWatch"},
    "NotificationHandlerLogs": {"CKV_AWS_158": "CDK's handler logs the notification it configures, no data"},
    "BucketNotificationsHandler*": {
        "CKV_AWS_116": "CDK's handler, invoked synchronously by CloudFormation at deployment",
        "CKV_AWS_117": "CDK's handler, calls the S3 API only, at deployment",
        "CKV_AWS_115": "CDK's handler, runs at deployment only",
    },
}
LAMBDA_TIMEOUT = cdk.Duration.seconds(60)
# The API: memory buys CPU on Lambda (2 GB is over one vCPU); /tmp holds the similarity index's
# local copy (about 0.4-0.8 GB per million rows).
API_MEMORY_MB, API_TMP_GB = 2048, 4
API_IMAGE_MODEL = f"/var/task/{MODEL_DIR}/{MODEL_FILE}"  # where infra/api/Dockerfile copies the model
# AWS's advice for an SQS event source: visibility at least 6x the function timeout.
QUEUE_VISIBILITY = cdk.Duration.seconds(6 * 60)


@jsii.implements(cdk.ILocalBundling)
class LambdaPackage:
    """The Lambda's code as ``make lambda-zip`` builds it: ``lambda/fruits_ingest`` and the wheels
    ``lambda/requirements.txt`` pins (Powertools, deltalake, arro3-core) for the Python 3.11 x86_64
    runtime, from PyPI, without Docker. About 146 MB unzipped, under Lambda's 250 MB."""

    def try_bundle(self, output_dir: str, *args: object, **kwargs: object) -> bool:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--quiet",
                "--target",
                output_dir,
                "--platform",
                "manylinux2014_x86_64",
                "--only-binary=:all:",
                "--python-version",
                "3.11",
                "-r",
                str(LAMBDA_DIR / "requirements.txt"),
            ],
            check=True,
        )
        shutil.copytree(
            LAMBDA_DIR / "fruits_ingest",
            Path(output_dir) / "fruits_ingest",
            ignore=shutil.ignore_patterns("__pycache__"),
        )
        return True


def lambda_code() -> lambda_.Code:
    """``LambdaPackage`` at synth; Docker (the runtime's build image) only where it cannot run."""
    image = lambda_.Runtime.PYTHON_3_11.bundling_image
    return lambda_.Code.from_asset(
        str(LAMBDA_DIR),
        bundling=cdk.BundlingOptions(
            image=image,
            local=LambdaPackage(),
            command=[
                "bash",
                "-c",
                "pip install -r requirements.txt -t /asset-output && cp -r fruits_ingest /asset-output",
            ],
        ),
    )


@dataclass(frozen=True)
class StageConfig:
    stage: str = "dev"
    region: str = "eu-west-3"
    # The release the local stack is pinned to (fruits.spark.release, checked by tests/test_release.py).
    emr_release: str = EMR_RELEASE
    refit_schedule: str = "rate(1 hour)"
    maintain_schedule: str = "rate(1 day)"  # the PCA tables' VACUUM, the ledger's sort (fruits maintain)
    start_stream: bool = False
    alarm_email: str | None = None
    # Requests the API may serve at once (reserved concurrency); 0: none reserved, for an account
    # whose concurrency quota is still the new-account 10 (Lambda keeps 100 unreserved).
    api_concurrency: int = 50

    def __post_init__(self) -> None:
        if self.emr_release != EMR_RELEASE:
            raise ValueError(
                f"emrRelease {self.emr_release!r}: the jobs are built and tested for {EMR_RELEASE} "
                f"(streaming_job/fruits/spark/release.py); change it there, with the pins in pyproject.toml"
            )

    @classmethod
    def from_context(cls, node: Construct | object) -> StageConfig:
        get = node.try_get_context  # type: ignore[attr-defined]
        return cls(
            stage=get("stage") or cls.stage,
            region=get("region") or cls.region,
            emr_release=get("emrRelease") or cls.emr_release,
            refit_schedule=get("refitSchedule") or cls.refit_schedule,
            maintain_schedule=get("maintainSchedule") or cls.maintain_schedule,
            start_stream=str(get("startStream")).lower() == "true",
            alarm_email=get("alarmEmail"),
            api_concurrency=int(get("apiConcurrency") or cls.api_concurrency),
        )

    def name(self, suffix: str) -> str:
        return f"fruits-{self.stage}-{suffix}"


class FruitsStack(cdk.Stack):
    def __init__(self, scope: Construct, construct_id: str, *, config: StageConfig, **kwargs: object) -> None:
        super().__init__(scope, construct_id, **kwargs)
        # Access logs are delivered under a bucket policy (no ACLs: every bucket is owner-enforced).
        self.node.set_context("@aws-cdk/aws-s3:serverAccessLogsUseBucketPolicy", True)
        self.config = config
        self.bucket = self._bucket()
        self.dead_letters, self.queue = self._queues()
        # Every upload: the Lambda picks the images out by suffix, in any case (S3's suffix filter
        # is case-sensitive and would miss .JPG and .Jpeg).
        for prefix in UPLOADS:
            self.bucket.add_event_notification(
                s3.EventType.OBJECT_CREATED,
                s3n.SqsDestination(self.queue),
                s3.NotificationKeyFilter(prefix=prefix),
            )
        self.ingest = self._ingest_lambda()
        self.application, self.job_role = self._spark()
        self._jobs()
        self.api, self.api_url, self.api_invoke = self._api()
        self._alarms()
        self._notification_handler_logs()
        self._checkov_skips()
        cdk.CfnOutput(self, "BucketName", value=self.bucket.bucket_name)
        cdk.CfnOutput(self, "QueueUrl", value=self.queue.queue_url)
        cdk.CfnOutput(self, "ApplicationId", value=self.application.attr_application_id)
        cdk.CfnOutput(self, "JobRoleArn", value=self.job_role.role_arn)
        cdk.CfnOutput(self, "ApiUrl", value=self.api_url.url)
        cdk.CfnOutput(self, "ApiInvokePolicyArn", value=self.api_invoke.managed_policy_arn)

    def _notification_handler_logs(self) -> None:
        """CDK's bucket-notification handler would log to a group it never declares, kept forever:
        declare it, with a retention, before the notification first invokes the handler."""
        resources = [r for r in self.node.find_all() if isinstance(r, cdk.CfnResource)]
        handler = next(
            r
            for r in resources
            if r.cfn_resource_type == "AWS::Lambda::Function" and "BucketNotificationsHandler" in r.node.path
        )
        group = logs.CfnLogGroup(
            self, "NotificationHandlerLogs", log_group_name=f"/aws/lambda/{handler.ref}", retention_in_days=30
        )
        group.apply_removal_policy(cdk.RemovalPolicy.DESTROY)
        for notification in (r for r in resources if r.cfn_resource_type == "Custom::S3BucketNotifications"):
            notification.node.add_dependency(group)

    def _checkov_skips(self) -> None:
        """Each skip in ``CHECKOV_SKIPS`` on the resources of the construct it names (and only
        those): checkov reads them from the template's Metadata."""
        for resource in self.node.find_all():
            if not isinstance(resource, cdk.CfnResource):
                continue
            if len(resource.node.scopes) < 3:
                continue
            construct = resource.node.scopes[2]
            own = construct.node.default_child or construct  # a construct's own resource, or one made directly
            if own.node.path != resource.node.path:
                continue  # not its policies, roles or mappings
            owner = resource.node.scopes[2].node.id
            for name, skips in CHECKOV_SKIPS.items():
                if owner == name or (name.endswith("*") and owner.startswith(name[:-1])):
                    resource.add_metadata("checkov", {"skip": [{"id": k, "comment": v} for k, v in skips.items()]})

    # --- storage and events -------------------------------------------------------------------

    def _bucket(self) -> s3.Bucket:
        # Server access logs: who read, wrote or deleted which photo, kept 90 days.
        access_logs = s3.Bucket(
            self,
            "AccessLogs",
            bucket_name=f"{self.config.name('access-logs')}-{cdk.Aws.ACCOUNT_ID}",
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            encryption=s3.BucketEncryption.S3_MANAGED,
            enforce_ssl=True,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            lifecycle_rules=[s3.LifecycleRule(id="expire-access-logs", expiration=cdk.Duration.days(90))],
            removal_policy=cdk.RemovalPolicy.RETAIN,
        )
        return s3.Bucket(
            self,
            "Images",
            bucket_name=f"{self.config.name('images')}-{cdk.Aws.ACCOUNT_ID}",
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            encryption=s3.BucketEncryption.S3_MANAGED,
            enforce_ssl=True,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            # An overwritten or deleted photo stays recoverable for 30 days. The stream reads only
            # a key's current object: an old version is never featurized (README, Reliability).
            versioned=True,
            server_access_logs_bucket=access_logs,
            server_access_logs_prefix="images/",
            lifecycle_rules=[
                s3.LifecycleRule(
                    id="abort-incomplete-uploads", abort_incomplete_multipart_upload_after=cdk.Duration.days(7)
                ),
                s3.LifecycleRule(id="expire-noncurrent-versions", noncurrent_version_expiration=cdk.Duration.days(30)),
                # VACUUM's deletions and the leases' renewals leave noncurrent versions of table files.
                s3.LifecycleRule(
                    id="expire-noncurrent-table-files",
                    prefix=TABLES,
                    noncurrent_version_expiration=cdk.Duration.days(1),
                ),
            ],
            # Photos and the table outlive a stack deletion; see infra/README.md to remove them.
            removal_policy=cdk.RemovalPolicy.RETAIN,
        )

    def _queues(self) -> tuple[sqs.Queue, sqs.Queue]:
        dead_letters = sqs.Queue(
            self,
            "DeadLetters",
            queue_name=self.config.name("uploads-dlq"),
            retention_period=cdk.Duration.days(14),
            encryption=sqs.QueueEncryption.SQS_MANAGED,
            enforce_ssl=True,
        )
        queue = sqs.Queue(
            self,
            "Uploads",
            queue_name=self.config.name("uploads"),
            visibility_timeout=QUEUE_VISIBILITY,
            retention_period=cdk.Duration.days(4),
            encryption=sqs.QueueEncryption.SQS_MANAGED,
            enforce_ssl=True,
            dead_letter_queue=sqs.DeadLetterQueue(queue=dead_letters, max_receive_count=MAX_RECEIVE_COUNT),
        )
        return dead_letters, queue

    # --- stage 2: the ingest Lambda -----------------------------------------------------------

    def _ingest_lambda(self) -> lambda_.Function:
        log_group = logs.LogGroup(
            self,
            "IngestLogs",
            log_group_name=f"/aws/lambda/{self.config.name('ingest')}",
            retention=logs.RetentionDays.ONE_MONTH,
            removal_policy=cdk.RemovalPolicy.DESTROY,
        )
        role = iam.Role(
            self,
            "IngestRole",
            role_name=self.config.name("ingest"),
            assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
            description="ingest Lambda: its queue, its log group and the uploads ledger only",
        )
        log_group.grant_write(role)
        # The uploads ledger: delta-rs reads its log and appends (conditional puts, no lock table).
        role.add_to_policy(
            iam.PolicyStatement(
                sid="AppendLedger",
                actions=["s3:GetObject", "s3:PutObject"],
                resources=[self.bucket.arn_for_objects(f"{LEDGER_TABLE}/*")],
            )
        )
        role.add_to_policy(
            iam.PolicyStatement(
                sid="ListLedger",
                actions=["s3:ListBucket"],
                resources=[self.bucket.bucket_arn],
                conditions={"StringLike": {"s3:prefix": [f"{LEDGER_TABLE}/*"]}},
            )
        )
        function = lambda_.Function(
            self,
            "Ingest",
            function_name=self.config.name("ingest"),
            runtime=lambda_.Runtime.PYTHON_3_11,
            architecture=lambda_.Architecture.X86_64,
            handler="fruits_ingest.handler.handler",
            code=lambda_code(),
            role=role,
            log_group=log_group,
            timeout=LAMBDA_TIMEOUT,
            memory_size=256,
            environment={
                **IngestConfig(
                    uploads_bucket=self.bucket.bucket_name,
                    accepted_prefixes=UPLOADS,
                    ledger_uri=f"s3://{self.bucket.bucket_name}/{LEDGER_TABLE}",
                ).as_env(),
                "POWERTOOLS_SERVICE_NAME": "fruits-ingest",
                "POWERTOOLS_METRICS_NAMESPACE": METRICS_NAMESPACE,
                "POWERTOOLS_LOG_LEVEL": "INFO",
            },
        )
        function.add_event_source(
            sources.SqsEventSource(
                self.queue,
                batch_size=BATCH_SIZE,
                max_batching_window=cdk.Duration.seconds(BATCHING_WINDOW_SECONDS),
                report_batch_item_failures=True,
                max_concurrency=MAX_CONCURRENCY,
            )
        )
        return function

    # --- stages 3 and 4: Spark on EMR Serverless ----------------------------------------------

    def _spark(self) -> tuple[emrs.CfnApplication, iam.Role]:
        application = emrs.CfnApplication(
            self,
            "Spark",
            name=self.config.name("spark"),
            release_label=self.config.emr_release,
            type="SPARK",
            architecture="X86_64",
            auto_start_configuration=emrs.CfnApplication.AutoStartConfigurationProperty(enabled=True),
            auto_stop_configuration=emrs.CfnApplication.AutoStopConfigurationProperty(
                enabled=True, idle_timeout_minutes=15
            ),
            maximum_capacity=emrs.CfnApplication.MaximumAllowedResourcesProperty(cpu="16 vCPU", memory="64 GB"),
        )
        role = iam.Role(
            self,
            "JobRole",
            role_name=self.config.name("spark-job"),
            assumed_by=iam.ServicePrincipal("emr-serverless.amazonaws.com"),
            # The uploads ledger too: maintain sorts its days and deletes what they replaced (delta-rs),
            # and a stream that starts before the first upload creates it empty.
            description="Spark jobs: read uploads and artifacts; read and write tables (the uploads ledger included)",
        )
        b = self.bucket
        role.add_to_policy(
            iam.PolicyStatement(
                sid="ReadInputs",
                actions=["s3:GetObject", "s3:GetObjectVersion"],
                resources=[b.arn_for_objects(f"{p}*") for p in (*UPLOADS, ARTIFACTS)],
            )
        )
        role.add_to_policy(
            iam.PolicyStatement(
                sid="ReadWriteTables",
                actions=["s3:GetObject", "s3:PutObject", "s3:DeleteObject"],
                resources=[b.arn_for_objects(f"{TABLES}*")],
            )
        )
        role.add_to_policy(
            iam.PolicyStatement(
                sid="ListOwnPrefixes",
                actions=["s3:ListBucket"],
                resources=[b.bucket_arn],
                conditions={"StringLike": {"s3:prefix": [f"{p}*" for p in (*UPLOADS, TABLES, ARTIFACTS)]}},
            )
        )
        # The stream's per-micro-batch metrics (fruits.stream.metrics), in the pipeline's namespace only.
        role.add_to_policy(
            iam.PolicyStatement(
                sid="PublishMetrics",
                actions=["cloudwatch:PutMetricData"],
                resources=["*"],
                conditions={"StringEquals": {"cloudwatch:namespace": METRICS_NAMESPACE}},
            )
        )
        return application, role

    def _job_run(self, name: str, arguments: list[str]) -> dict[str, object]:
        """The StartJobRun request of ``fruits_job.py <arguments>`` (the ``fruits`` command) on this
        application: the release's Spark and Delta jars, the packed environment run by the release's
        Python, the compiled model, the log store, and the tuning the local default sets in
        code (``fruits.spark.session``) as ``--conf``. ``make test-cluster`` runs these requests."""
        b = f"s3://{self.bucket.bucket_name}"
        # The compiled model (make emr-artifacts) lands in the driver's working directory (spark.files):
        # the driver loads it as it is, without TensorFlow or a download.
        env = {
            "FRUITS_BUCKET": self.bucket.bucket_name,
            "FRUITS_REGION": self.config.region,
            "FRUITS_TABLE_ROOT": f"s3a://{self.bucket.bucket_name}/tables",
            "FRUITS_WEIGHTS": MODEL_FILE,
            "FRUITS_METRICS_NAMESPACE": METRICS_NAMESPACE,
        }
        # The packed environment (fruits.spark.bundle) is unpacked as ./environment and put on the
        # path of the release's own interpreter, on the driver and on every executor.
        env |= {
            "PYSPARK_DRIVER_PYTHON": PYTHON_EXECUTABLE,
            "PYSPARK_PYTHON": PYTHON_EXECUTABLE,
            "PYTHONPATH": "./environment",
        }
        model = f"{b}/{ARTIFACTS}{MODEL_DIR}/{MODEL_FILE}"
        conf = [
            f"spark.archives={b}/{ARTIFACTS}{ENVIRONMENT}#environment",
            f"spark.jars={EMR_DELTA_JARS}",
            f"spark.files={model},{model.removesuffix('.tflite')}.json",
            f"spark.delta.logStore.s3a.impl={LOG_STORE}",
            f"spark.delta.logStore.s3.impl={LOG_STORE}",
            *(f"{key}={value}" for key, value in (CLUSTER_TUNING | DYNAMIC_ALLOCATION).items()),
            f"spark.executorEnv.PYSPARK_PYTHON={PYTHON_EXECUTABLE}",
            "spark.executorEnv.PYTHONPATH=./environment",
        ]
        conf += [f"spark.emr-serverless.driverEnv.{k}={v}" for k, v in env.items()]
        return {
            "applicationId": self.application.attr_application_id,
            "executionRoleArn": self.job_role.role_arn,
            "name": self.config.name(name),
            "jobDriver": {
                "sparkSubmit": {
                    "entryPoint": f"{b}/{ARTIFACTS}{ENTRY_POINT}",
                    "entryPointArguments": arguments,
                    "sparkSubmitParameters": " ".join(f"--conf {c}" for c in conf),
                }
            },
        }

    def _jobs(self) -> None:
        # The periodic jobs: EventBridge Scheduler calls StartJobRun directly.
        role = iam.Role(
            self,
            "SchedulerRole",
            role_name=self.config.name("scheduler"),
            assumed_by=iam.ServicePrincipal("scheduler.amazonaws.com"),
            description="starts the scheduled job runs (PCA refit, table maintenance), nothing else",
        )
        for statement in self._job_starter():
            role.add_to_policy(statement)
        for construct_id, name, arguments, expression in (
            ("PcaRefit", "pca-refit", ["pca", "refit"], self.config.refit_schedule),
            ("Maintain", "maintain", ["maintain"], self.config.maintain_schedule),
        ):
            request = self._job_run(name, arguments)
            request["clientToken"] = "<aws.scheduler.execution-id>"  # one run per scheduled invocation
            scheduler.CfnSchedule(
                self,
                construct_id,
                name=self.config.name(name),
                schedule_expression=expression,
                state="ENABLED",
                flexible_time_window=scheduler.CfnSchedule.FlexibleTimeWindowProperty(mode="OFF"),
                target=scheduler.CfnSchedule.TargetProperty(
                    arn="arn:aws:scheduler:::aws-sdk:emrserverless:startJobRun",
                    role_arn=role.role_arn,
                    input=cdk.Stack.of(self).to_json_string(request),
                    retry_policy=scheduler.CfnSchedule.RetryPolicyProperty(maximum_retry_attempts=2),
                ),
            )
        if not self.config.start_stream:
            return
        # The stream: started once the artifacts exist (-c startStream=true), cancelled on delete.
        # --wait: a replacement run (EMR's retry, a redeploy) waits out the lease a crashed run left.
        stream = self._job_run("stream", ["stream", "--trigger", "30 seconds", "--wait", "300"])
        stream["mode"] = "STREAMING"
        cr.AwsCustomResource(
            self,
            "StartStream",
            on_create=cr.AwsSdkCall(
                service="emr-serverless",
                action="StartJobRun",
                parameters=stream,
                physical_resource_id=cr.PhysicalResourceId.from_response("jobRunId"),
            ),
            on_delete=cr.AwsSdkCall(
                service="emr-serverless",
                action="CancelJobRun",
                parameters={
                    "applicationId": self.application.attr_application_id,
                    "jobRunId": cr.PhysicalResourceIdReference(),
                },
            ),
            policy=cr.AwsCustomResourcePolicy.from_statements(self._job_starter(cancel=True)),
            install_latest_aws_sdk=False,
            log_group=logs.LogGroup(
                self,
                "StartStreamLogs",
                retention=logs.RetentionDays.ONE_MONTH,
                removal_policy=cdk.RemovalPolicy.DESTROY,
            ),
        )

    def _job_starter(self, cancel: bool = False) -> list[iam.PolicyStatement]:
        """Start (and cancel) job runs on this application, passing the job role only to EMR Serverless."""
        app_arn = cdk.Stack.of(self).format_arn(
            service="emr-serverless",
            resource="/applications",
            resource_name=self.application.attr_application_id,
        )
        actions = ["emr-serverless:StartJobRun"] + (["emr-serverless:CancelJobRun"] if cancel else [])
        return [
            iam.PolicyStatement(actions=actions, resources=[app_arn, f"{app_arn}/jobruns/*"]),
            iam.PolicyStatement(
                actions=["iam:PassRole"],
                resources=[self.job_role.role_arn],
                conditions={"StringLike": {"iam:PassedToService": "emr-serverless.amazonaws.com"}},
            ),
        ]

    # --- stage 5: the HTTP API ------------------------------------------------------------------

    def _api(self) -> tuple[lambda_.DockerImageFunction, lambda_.FunctionUrl, iam.ManagedPolicy]:
        """``fruits.api`` as a container-image Lambda (``infra/api/Dockerfile``) behind a function
        URL with IAM auth: the app's backend signs its requests (SigV4) with a role that has the
        ``ApiInvoke`` policy. Read-only: its role may read ``tables/`` and nothing else."""
        log_group = logs.LogGroup(
            self,
            "ApiLogs",
            log_group_name=f"/aws/lambda/{self.config.name('api')}",
            retention=logs.RetentionDays.ONE_MONTH,
            removal_policy=cdk.RemovalPolicy.DESTROY,
        )
        role = iam.Role(
            self,
            "ApiRole",
            role_name=self.config.name("api"),
            assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
            description="HTTP API: reads the tables (features, quarantine, ledger, PCA, classifier, index)",
        )
        log_group.grant_write(role)
        role.add_to_policy(
            iam.PolicyStatement(
                sid="ReadTables", actions=["s3:GetObject"], resources=[self.bucket.arn_for_objects(f"{TABLES}*")]
            )
        )
        role.add_to_policy(
            iam.PolicyStatement(
                sid="ListTables",
                actions=["s3:ListBucket"],
                resources=[self.bucket.bucket_arn],
                conditions={"StringLike": {"s3:prefix": [f"{TABLES}*"]}},
            )
        )
        function = lambda_.DockerImageFunction(
            self,
            "Api",
            function_name=self.config.name("api"),
            architecture=lambda_.Architecture.X86_64,
            code=lambda_.DockerImageCode.from_image_asset(str(ROOT), file="infra/api/Dockerfile"),
            role=role,
            log_group=log_group,
            memory_size=API_MEMORY_MB,
            timeout=cdk.Duration.seconds(30),
            ephemeral_storage_size=cdk.Size.gibibytes(API_TMP_GB),
            reserved_concurrent_executions=self.config.api_concurrency or None,
            environment={
                "FRUITS_BUCKET": self.bucket.bucket_name,
                "FRUITS_REGION": self.config.region,
                "FRUITS_TABLE_ROOT": f"s3a://{self.bucket.bucket_name}/tables",
                "FRUITS_WEIGHTS": API_IMAGE_MODEL,
                # Lambda's only writable place: the similarity index's local copy.
                "FRUITS_INDEX_CACHE": "/tmp/fruits/index",
            },
        )
        url = function.add_function_url(auth_type=lambda_.FunctionUrlAuthType.AWS_IAM)
        # Since October 2025 a function URL's caller needs lambda:InvokeFunction as well. (It also lets
        # the holder invoke the function directly with an event of its own making: the same read-only
        # answers, nothing more.)
        invoke = iam.ManagedPolicy(
            self,
            "ApiInvoke",
            managed_policy_name=self.config.name("api-invoke"),
            description="call the Fruits HTTP API (its function URL, SigV4-signed)",
            statements=[
                iam.PolicyStatement(
                    actions=["lambda:InvokeFunctionUrl", "lambda:InvokeFunction"], resources=[function.function_arn]
                )
            ],
        )
        return function, url, invoke

    # --- alarms -------------------------------------------------------------------------------

    def _alarms(self) -> None:
        # Encrypted with a key of our own: CloudWatch may publish through it, which AWS's managed
        # SNS key does not allow.
        key = kms.Key(
            self,
            "AlarmsKey",
            alias=f"alias/{self.config.name('alarms')}",
            enable_key_rotation=True,
            description="encrypts the alarm topic",
            removal_policy=cdk.RemovalPolicy.DESTROY,
        )
        key.add_to_resource_policy(
            iam.PolicyStatement(
                actions=["kms:Decrypt", "kms:GenerateDataKey*"],
                resources=["*"],
                principals=[iam.ServicePrincipal("cloudwatch.amazonaws.com")],
            )
        )
        topic = sns.Topic(self, "Alarms", topic_name=self.config.name("alarms"), enforce_ssl=True, master_key=key)
        if self.config.alarm_email:
            topic.add_subscription(subscriptions.EmailSubscription(self.config.alarm_email))
        for alarm in (
            cloudwatch.Alarm(
                self,
                "DeadLettersAlarm",
                alarm_name=self.config.name("dead-letters"),
                alarm_description="Upload events failed 3 deliveries: fix the cause, then `fruits replay-dlq` "
                "(lambda/README.md, 'Replaying dead letters').",
                metric=self.dead_letters.metric_approximate_number_of_messages_visible(period=cdk.Duration.minutes(5)),
                threshold=0,
                comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
                evaluation_periods=1,
                treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
            ),
            cloudwatch.Alarm(
                self,
                "QueueAgeAlarm",
                alarm_name=self.config.name("queue-age"),
                alarm_description="The oldest upload event waits over 15 minutes: is the ingest Lambda failing?",
                metric=self.queue.metric_approximate_age_of_oldest_message(period=cdk.Duration.minutes(5)),
                threshold=15 * 60,
                comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
                evaluation_periods=2,
                treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
            ),
            *self._stream_alarms(),
        ):
            alarm.add_alarm_action(cw_actions.SnsAction(topic))

    def _stream_alarms(self) -> list[cloudwatch.Alarm]:
        """The stalled stream: uploads reached the queue in two 15-minute windows in a row, yet no
        micro-batch committed in either (the Lambda keeps draining the queue into the ledger, so the
        queue alarms stay quiet). Not yet seen firing on AWS: how FILL treats a metric with no data at
        all in the range is to be checked there."""
        if not self.config.start_stream:
            return []  # no running stream to watch (runs on demand instead)
        window = cdk.Duration.minutes(15)
        committed = cloudwatch.Metric(
            namespace=METRICS_NAMESPACE,
            metric_name="BatchesCommitted",
            dimensions_map={"Bucket": self.bucket.bucket_name},
            statistic="Sum",
            period=window,
        )
        stalled = cloudwatch.MathExpression(
            expression="IF(received > 0 AND FILL(committed, 0) == 0, 1, 0)",
            period=window,
            using_metrics={
                "received": self.queue.metric_number_of_messages_received(period=window, statistic="Sum"),
                "committed": committed,
            },
        )
        return [
            cloudwatch.Alarm(
                self,
                "StreamStalledAlarm",
                alarm_name=self.config.name("stream-stalled"),
                alarm_description="Uploads arrive but the featurizer stream committed no micro-batch for 15 minutes: "
                "check the streaming job run in EMR Serverless (infra/README.md).",
                metric=stalled,
                threshold=1,
                comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
                # Two windows in a row: uploads late in one window commit in the next, which must not alarm.
                evaluation_periods=2,
                datapoints_to_alarm=2,
                treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
            )
        ]
