"""infra/: the synthesized CloudFormation template has every resource and policy the design asks
for, and cfn-lint passes on it. Offline: CDK synth runs on the local Node.js, no AWS account."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")
cdk = pytest.importorskip("aws_cdk")
from aws_cdk.assertions import Match, Template  # noqa: E402

from fruits.spark.release import PYTHON_EXECUTABLE  # noqa: E402
from fruits_infra import FruitsStack, StageConfig  # noqa: E402
from fruits_ingest.config import (  # noqa: E402
    BATCH_SIZE,
    BATCHING_WINDOW_SECONDS,
    IMAGE_SUFFIXES,
    MAX_RECEIVE_COUNT,
    METRICS_NAMESPACE,
    IngestConfig,
)

ROOT = Path(__file__).resolve().parents[1]
# CDK writes an explicit DependsOn next to a GetAtt on the same resource; harmless, and not ours.
CFN_LINT_IGNORED = "W3005"


@pytest.fixture(scope="module")
def template() -> Template:
    # No asset bundling: the Lambda's package (pip, from PyPI) is built by make lambda-zip and at deploy.
    app = cdk.App(context={"aws:cdk:bundling-stacks": []})
    stack = FruitsStack(
        app, "fruits-qa", config=StageConfig(stage="qa", start_stream=True), env=cdk.Environment(region="eu-west-3")
    )
    return Template.from_stack(stack)


def resources(template: Template, kind: str) -> dict[str, dict]:
    return template.find_resources(kind)


def one(template: Template, kind: str) -> dict:
    found = resources(template, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return next(iter(found.values()))["Properties"]


def policy_statements(template: Template, role_logical_prefix: str) -> list[dict]:
    statements = []
    for policy in resources(template, "AWS::IAM::Policy").values():
        roles = [r["Ref"] for r in policy["Properties"].get("Roles", [])]
        if any(r.startswith(role_logical_prefix) for r in roles):
            statements += policy["Properties"]["PolicyDocument"]["Statement"]
    assert statements, f"no policy on {role_logical_prefix}"
    return statements


def listify(value: object) -> list:
    return value if isinstance(value, list) else [value]


def test_bucket_is_private_encrypted_tls_only_and_expires_old_versions(template: Template) -> None:
    buckets = {name: b["Properties"] for name, b in resources(template, "AWS::S3::Bucket").items()}
    bucket = next(b for name, b in buckets.items() if name.startswith("Images"))
    assert bucket["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True,
        "BlockPublicPolicy": True,
        "IgnorePublicAcls": True,
        "RestrictPublicBuckets": True,
    }
    sse = bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]["ServerSideEncryptionByDefault"]
    assert sse["SSEAlgorithm"] == "AES256"
    rules = {r["Id"]: r for r in bucket["LifecycleConfiguration"]["Rules"]}
    assert "expire-manifests" not in rules  # no manifests since the uploads ledger
    assert rules["expire-noncurrent-versions"]["NoncurrentVersionExpiration"]["NoncurrentDays"] == 30
    policies = [
        p["Properties"]["PolicyDocument"]["Statement"] for p in resources(template, "AWS::S3::BucketPolicy").values()
    ]
    assert len(policies) == 2 and all(
        any(s["Effect"] == "Deny" and s["Condition"] == {"Bool": {"aws:SecureTransport": "false"}} for s in policy)
        for policy in policies
    )


def test_photos_are_versioned_and_access_logged(template: Template) -> None:
    """An overwrite or delete keeps the original for 30 days; every access is logged to a private
    bucket (through a bucket policy, no ACLs) kept 90 days."""
    buckets = {name: b["Properties"] for name, b in resources(template, "AWS::S3::Bucket").items()}
    images = next(b for name, b in buckets.items() if name.startswith("Images"))
    logs_name, access_logs = next((n, b) for n, b in buckets.items() if n.startswith("AccessLogs"))
    assert images["VersioningConfiguration"] == {"Status": "Enabled"}
    rules = {r["Id"]: r for r in images["LifecycleConfiguration"]["Rules"]}
    assert rules["expire-noncurrent-versions"]["NoncurrentVersionExpiration"] == {"NoncurrentDays": 30}
    assert rules["expire-noncurrent-table-files"]["Prefix"] == "tables/"
    assert images["LoggingConfiguration"] == {"DestinationBucketName": {"Ref": logs_name}, "LogFilePrefix": "images/"}
    assert access_logs["PublicAccessBlockConfiguration"]["BlockPublicAcls"] is True
    assert access_logs["OwnershipControls"]["Rules"] == [{"ObjectOwnership": "BucketOwnerEnforced"}]
    assert access_logs["LifecycleConfiguration"]["Rules"][0]["ExpirationInDays"] == 90


def test_the_lambda_drains_a_backlog_with_bounded_concurrency(template: Template) -> None:
    from fruits_ingest.config import MAX_CONCURRENCY

    mapping = one(template, "AWS::Lambda::EventSourceMapping")
    assert mapping["ScalingConfig"] == {"MaximumConcurrency": MAX_CONCURRENCY}


def test_every_log_group_expires_and_the_alarm_topic_is_encrypted(template: Template) -> None:
    groups = resources(template, "AWS::Logs::LogGroup")
    assert len(groups) >= 2 and all(g["Properties"].get("RetentionInDays") for g in groups.values())
    topic = one(template, "AWS::SNS::Topic")
    key_name = next(iter(resources(template, "AWS::KMS::Key")))
    assert topic["KmsMasterKeyId"] == {"Fn::GetAtt": [key_name, "Arn"]}
    key = one(template, "AWS::KMS::Key")
    assert key["EnableKeyRotation"] is True
    assert any(s.get("Principal") == {"Service": "cloudwatch.amazonaws.com"} for s in key["KeyPolicy"]["Statement"])


def test_queue_has_dead_letters_and_visibility_six_times_the_lambda_timeout(template: Template) -> None:
    queues = {q["Properties"]["QueueName"]: q["Properties"] for q in resources(template, "AWS::SQS::Queue").values()}
    assert set(queues) == {"fruits-qa-uploads", "fruits-qa-uploads-dlq"}
    uploads = queues["fruits-qa-uploads"]
    assert uploads["RedrivePolicy"]["maxReceiveCount"] == MAX_RECEIVE_COUNT
    assert uploads["VisibilityTimeout"] >= 6 * ingest_function(template)["Timeout"]
    assert all(q.get("SqsManagedSseEnabled") for q in queues.values())


def ingest_function(template: Template) -> dict:
    functions = [
        f["Properties"]
        for f in resources(template, "AWS::Lambda::Function").values()
        if f["Properties"].get("FunctionName") == "fruits-qa-ingest"
    ]
    assert len(functions) == 1
    return functions[0]


def test_every_upload_notifies_the_queue_and_the_lambda_filters_images(template: Template) -> None:
    # One notification per upload prefix (reference photos, the app's), no suffix rule: S3's suffix
    # filter is case-sensitive, so the Lambda's case-insensitive IMAGE_SUFFIXES is the only list.
    notifications = one(template, "Custom::S3BucketNotifications")["NotificationConfiguration"]
    configs = notifications["QueueConfigurations"]
    assert all(config["Events"] == ["s3:ObjectCreated:*"] for config in configs)
    assert [config["Filter"]["Key"]["FilterRules"] for config in configs] == [
        [{"Name": "prefix", "Value": "uploads/"}],
        [{"Name": "prefix", "Value": "app/"}],
    ]


def test_ingest_lambda_with_its_package_and_partial_batch_responses(template: Template) -> None:
    function = ingest_function(template)
    assert function["Runtime"] == "python3.11" and function["Handler"] == "fruits_ingest.handler.handler"
    # The deployed Lambda configures itself from exactly these variables (IngestConfig.from_env).
    variables = function["Environment"]["Variables"]
    config = IngestConfig.from_env({k: v for k, v in variables.items() if isinstance(v, str)} | {"UPLOADS_BUCKET": "b"})
    assert (config.accepted_prefixes, config.image_suffixes) == (("uploads/", "app/"), IMAGE_SUFFIXES)
    assert "Ref" in variables["UPLOADS_BUCKET"]  # the stack's bucket
    ledger = variables["LEDGER_URI"]["Fn::Join"][1]  # s3://<the stack's bucket>/tables/uploads
    assert ledger[0] == "s3://" and "Ref" in ledger[1] and ledger[2] == "/tables/uploads"
    # Powertools, deltalake and arro3-core are in the function's own package (LambdaPackage), no layer.
    assert "Layers" not in function
    mapping = one(template, "AWS::Lambda::EventSourceMapping")
    assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    # The local event source mapping (lambda/fruits_ingest/runner.py) uses the same two numbers.
    assert (mapping["BatchSize"], mapping["MaximumBatchingWindowInSeconds"]) == (BATCH_SIZE, BATCHING_WINDOW_SECONDS)


def test_ingest_role_reads_its_queue_and_writes_the_ledger_only(template: Template) -> None:
    statements = policy_statements(template, "IngestRole")
    s3_statements = [s for s in statements if any(a.startswith("s3:") for a in listify(s["Action"]))]
    resources_by_action: dict[str, list] = {}
    for statement in s3_statements:
        for action in listify(statement["Action"]):
            resources_by_action.setdefault(action, []).append(statement["Resource"])
    assert set(resources_by_action) == {"s3:PutObject", "s3:GetObject", "s3:ListBucket"}
    assert [r["Fn::Join"][1][-1] for r in resources_by_action["s3:PutObject"]] == ["/tables/uploads/*"]
    assert [r["Fn::Join"][1][-1] for r in resources_by_action["s3:GetObject"]] == ["/tables/uploads/*"]
    [listing] = [s for s in s3_statements if s["Action"] == "s3:ListBucket"]
    assert listing["Condition"] == {"StringLike": {"s3:prefix": ["tables/uploads/*"]}}
    sqs_actions = {a for s in statements for a in listify(s["Action"]) if a.startswith("sqs:")}
    assert sqs_actions <= {
        "sqs:ReceiveMessage",
        "sqs:DeleteMessage",
        "sqs:ChangeMessageVisibility",
        "sqs:GetQueueAttributes",
        "sqs:GetQueueUrl",
    }
    assert "sqs:DeleteMessage" in sqs_actions and "sqs:ReceiveMessage" in sqs_actions
    for s in statements:
        assert s["Resource"] != "*" and "*" not in listify(s["Action"])


def test_spark_role_reads_inputs_and_writes_tables_only(template: Template) -> None:
    statements = {s["Sid"]: s for s in policy_statements(template, "JobRole")}
    assert set(statements) == {"ReadInputs", "ReadWriteTables", "ListOwnPrefixes", "PublishMetrics"}

    def prefixes(statement: dict) -> set[str]:
        return {r["Fn::Join"][1][-1] for r in listify(statement["Resource"])}

    assert prefixes(statements["ReadInputs"]) == {"/uploads/*", "/app/*", "/artifacts/*"}
    assert set(statements["ReadInputs"]["Action"]) == {"s3:GetObject", "s3:GetObjectVersion"}
    assert prefixes(statements["ReadWriteTables"]) == {"/tables/*"}
    assert set(statements["ReadWriteTables"]["Action"]) == {"s3:GetObject", "s3:PutObject", "s3:DeleteObject"}
    assert statements["ListOwnPrefixes"]["Action"] == "s3:ListBucket"
    assert statements["PublishMetrics"]["Action"] == "cloudwatch:PutMetricData"  # one namespace: see the alarm test
    trust = resources(template, "AWS::IAM::Role")
    job_role = next(r for name, r in trust.items() if name.startswith("JobRole"))["Properties"]
    assert job_role["AssumeRolePolicyDocument"]["Statement"][0]["Principal"] == {
        "Service": "emr-serverless.amazonaws.com"
    }


def test_the_api_is_a_read_only_container_lambda_behind_an_iam_function_url(template: Template) -> None:
    [api] = [
        f["Properties"]
        for f in resources(template, "AWS::Lambda::Function").values()
        if f["Properties"].get("PackageType") == "Image"
    ]
    env = api["Environment"]["Variables"]
    dockerfile = (ROOT / "infra" / "api" / "Dockerfile").read_text()
    # The model where the Dockerfile copies it; the handler its command.
    assert f"COPY build/emr/model/ {Path(env['FRUITS_WEIGHTS']).parent}/\n" in dockerfile
    assert 'CMD ["fruits.api.function.handler"]' in dockerfile
    assert env["FRUITS_TABLE_ROOT"]["Fn::Join"][1][-1] == "/tables" and env["FRUITS_INDEX_CACHE"].startswith("/tmp/")
    assert api["ReservedConcurrentExecutions"] == 50 and api["MemorySize"] >= 2048
    assert api["EphemeralStorage"]["Size"] >= 2048
    assert one(template, "AWS::Lambda::Url")["AuthType"] == "AWS_IAM"
    # Read-only: the tables, nothing else, no write.
    statements = {s["Sid"]: s for s in policy_statements(template, "ApiRole") if "Sid" in s}
    assert set(statements) == {"ReadTables", "ListTables"}
    assert statements["ReadTables"]["Action"] == "s3:GetObject"
    assert statements["ReadTables"]["Resource"]["Fn::Join"][1][-1] == "/tables/*"
    assert statements["ListTables"]["Condition"] == {"StringLike": {"s3:prefix": ["tables/*"]}}
    s3_actions = {a for s in policy_statements(template, "ApiRole") for a in listify(s["Action"]) if "s3:" in a}
    assert s3_actions == {"s3:GetObject", "s3:ListBucket"}
    # Callers: a policy to attach, with both actions a function URL's caller needs.
    invoke = one(template, "AWS::IAM::ManagedPolicy")["PolicyDocument"]["Statement"]
    assert [set(s["Action"]) for s in invoke] == [{"lambda:InvokeFunctionUrl", "lambda:InvokeFunction"}]


def test_emr_serverless_application_and_the_streaming_job(template: Template) -> None:
    app = one(template, "AWS::EMRServerless::Application")
    assert app["Type"] == "SPARK" and app["ReleaseLabel"] == "emr-spark-8.2.0"  # what the local stack is pinned to
    assert app["AutoStopConfiguration"]["Enabled"] is True
    start = one(template, "Custom::AWS")
    create = json.dumps(start["Create"])
    assert "StartJobRun" in create and "STREAMING" in create and "fruits_job.py" in create


def job_requests(template: Template) -> list[dict]:
    """Every StartJobRun request the template holds: the scheduled ones and the stream's."""
    requests = [
        json.loads(s["Properties"]["Target"]["Input"])
        if isinstance(s["Properties"]["Target"]["Input"], str)
        else s["Properties"]["Target"]["Input"]
        for s in resources(template, "AWS::Scheduler::Schedule").values()
    ]
    return requests + [one(template, "Custom::AWS")["Create"]]


def test_job_definitions_leave_master_and_jars_to_the_release(template: Template) -> None:
    """No local master and no Maven resolution on EMR: the release's Spark and Delta jars serve."""
    for request in job_requests(template):
        text = json.dumps(request)
        assert "sparkSubmitParameters" in text and "fruits_job.py" in text
        # The compiled model, not weights to download and convert: no TensorFlow, no internet.
        assert "artifacts/model/mobilenet_v2.tflite" in text and "FRUITS_WEIGHTS=mobilenet_v2.tflite" in text
        for local_only in (
            "--master",
            "spark.master",
            "local[",
            "spark.jars.packages",
            "--packages",
            "repo1.maven",
            "spark.jars.ivy",
        ):
            assert local_only not in text, (local_only, text[:300])
        # Delta from the release's own jars, its single-driver S3 log store, the local session's
        # tuning as --conf, and the packed environment on the release's interpreter.
        assert "spark.jars=/usr/share/aws/delta/lib/delta-spark.jar,/usr/share/aws/delta/lib/delta-storage.jar " in text
        assert "spark.delta.logStore.s3a.impl=io.delta.storage.S3SingleDriverLogStore" in text
        assert "DynamoDB" not in text
        assert "spark.databricks.delta.snapshotPartitions=" in text
        assert "artifacts/pyenv.tar.gz#environment" in text and "spark.executorEnv.PYTHONPATH=./environment" in text
        assert f"spark.executorEnv.PYSPARK_PYTHON={PYTHON_EXECUTABLE}" in text
        assert "spark.dynamicAllocation.enabled=true" in text and "spark.dynamicAllocation.maxExecutors=3" in text


def test_no_commit_service_one_driver_per_table(template: Template) -> None:
    """Each table has one committing driver at a time, so the jobs use Delta's single-driver S3 log
    store and the stack has no DynamoDB table, and the job role no DynamoDB access."""
    assert not resources(template, "AWS::DynamoDB::Table")
    actions = [a for s in policy_statements(template, "JobRole") for a in listify(s["Action"])]
    assert not [a for a in actions if a.startswith("dynamodb:")]


def test_the_api_reserves_no_concurrency_when_told(tmp_path: Path) -> None:
    """-c apiConcurrency=0, for an account whose Lambda concurrency quota is still 10."""
    app = cdk.App(context={"aws:cdk:bundling-stacks": [], "apiConcurrency": "0"}, outdir=str(tmp_path))
    stack = FruitsStack(
        app, "fruits-small", config=StageConfig.from_context(app.node), env=cdk.Environment(region="eu-west-3")
    )
    [api] = [
        f["Properties"]
        for f in resources(Template.from_stack(stack), "AWS::Lambda::Function").values()
        if f["Properties"].get("PackageType") == "Image"
    ]
    assert "ReservedConcurrentExecutions" not in api


def test_a_release_the_local_stack_is_not_pinned_to_is_refused() -> None:
    with pytest.raises(ValueError, match="release.py"):
        StageConfig(emr_release="emr-spark-8.0.0")


def test_pca_refit_and_maintenance_are_scheduled_with_least_privilege(template: Template) -> None:
    schedules = {
        s["Properties"]["Name"]: s["Properties"] for s in resources(template, "AWS::Scheduler::Schedule").values()
    }
    assert {name: s["ScheduleExpression"] for name, s in schedules.items()} == {
        "fruits-qa-pca-refit": "rate(1 hour)",
        "fruits-qa-maintain": "rate(1 day)",
    }
    for name, arguments in (
        ("fruits-qa-pca-refit", '[\\"pca\\",\\"refit\\"]'),
        ("fruits-qa-maintain", '[\\"maintain\\"]'),
    ):
        target = schedules[name]["Target"]
        assert target["Arn"] == "arn:aws:scheduler:::aws-sdk:emrserverless:startJobRun"
        assert arguments in json.dumps(target["Input"]), (name, json.dumps(target["Input"])[:300])
    statements = policy_statements(template, "SchedulerRole")
    assert {a for s in statements for a in listify(s["Action"])} == {"emr-serverless:StartJobRun", "iam:PassRole"}


def test_alarms_on_dead_letters_and_queue_age(template: Template) -> None:
    alarms = {
        a["Properties"].get("MetricName", "math"): a["Properties"]
        for a in resources(template, "AWS::CloudWatch::Alarm").values()
    }
    assert set(alarms) == {"ApproximateNumberOfMessagesVisible", "ApproximateAgeOfOldestMessage", "math"}
    assert alarms["ApproximateNumberOfMessagesVisible"]["Threshold"] == 0
    assert all(a["AlarmActions"] for a in alarms.values())
    template.has_resource_properties("AWS::SNS::Topic", {"TopicName": "fruits-qa-alarms"})


def test_a_stalled_stream_alarms_when_uploads_arrive_and_no_batch_commits(template: Template) -> None:
    [alarm] = [
        a["Properties"]
        for a in resources(template, "AWS::CloudWatch::Alarm").values()
        if a["Properties"]["AlarmName"] == "fruits-qa-stream-stalled"
    ]
    queries = {q["Id"]: q for q in alarm["Metrics"]}
    assert queries["expr_1"]["Expression"] == "IF(received > 0 AND FILL(committed, 0) == 0, 1, 0)"
    committed = queries["committed"]["MetricStat"]["Metric"]
    assert (committed["Namespace"], committed["MetricName"]) == (METRICS_NAMESPACE, "BatchesCommitted")
    assert queries["received"]["MetricStat"]["Metric"]["MetricName"] == "NumberOfMessagesReceived"
    assert alarm["AlarmActions"] and alarm["Threshold"] == 1
    assert (alarm["EvaluationPeriods"], alarm["DatapointsToAlarm"]) == (2, 2)  # one late commit never alarms
    assert (queries["committed"]["MetricStat"]["Stat"], queries["committed"]["MetricStat"]["Period"]) == ("Sum", 900)
    # The dimension the stream publishes (fruits.stream.metrics): the bucket.
    assert [d["Name"] for d in committed["Dimensions"]] == ["Bucket"]
    # The job role may publish the stream's metrics, in that namespace only.
    [publish] = [s for s in policy_statements(template, "JobRole") if s.get("Sid") == "PublishMetrics"]
    assert publish["Condition"] == {"StringEquals": {"cloudwatch:namespace": METRICS_NAMESPACE}}
    assert all("FRUITS_METRICS_NAMESPACE=Fruits" in json.dumps(r) for r in job_requests(template))


def test_names_derive_from_the_stage_and_the_region_defaults_to_paris(template: Template) -> None:
    assert StageConfig().region == "eu-west-3"
    named = [
        ("AWS::Lambda::Function", "FunctionName"),
        ("AWS::SQS::Queue", "QueueName"),
        ("AWS::IAM::Role", "RoleName"),
        ("AWS::EMRServerless::Application", "Name"),
        ("AWS::Scheduler::Schedule", "Name"),
        ("AWS::CloudWatch::Alarm", "AlarmName"),
    ]
    for kind, prop in named:
        for r in resources(template, kind).values():
            value = r["Properties"].get(prop)
            if value is not None:
                assert value.startswith("fruits-qa-"), (kind, value)
    template.has_resource_properties(
        "AWS::S3::Bucket", {"BucketName": Match.object_like({"Fn::Join": Match.any_value()})}
    )


def test_make_synth_template_passes_cfn_lint(tmp_path: Path) -> None:
    env = {**os.environ, "CDK_OUTDIR": str(tmp_path)}
    subprocess.run([sys.executable, "app.py"], cwd=ROOT / "infra", env=env, check=True, capture_output=True)
    template_file = tmp_path / "fruits-dev.template.json"
    assert json.loads(template_file.read_text())["Resources"]
    lint = subprocess.run(
        [str(Path(sys.executable).parent / "cfn-lint"), "--ignore-checks", CFN_LINT_IGNORED, "--", str(template_file)],
        capture_output=True,
        text=True,
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr


def test_checkov_skips_are_per_resource_and_give_reasons(template: Template) -> None:
    """make synth runs checkov; what it skips is named here, resource by resource, with a reason,
    so that a new resource failing a check fails make synth instead of being skipped silently."""
    from fruits_infra.stack import CHECKOV_SKIPS

    skipped = {}
    for name, resource in template.to_json()["Resources"].items():
        for skip in resource.get("Metadata", {}).get("checkov", {}).get("skip", []):
            assert len(skip["comment"]) > 20, skip
            skipped.setdefault(name, []).append(skip["id"])
    owners = {name.rstrip("*") for name in CHECKOV_SKIPS}
    assert all(any(logical.startswith(owner) for owner in owners) for logical in skipped), skipped
    assert sum(map(len, skipped.values())) == sum(map(len, CHECKOV_SKIPS.values())) == 17
