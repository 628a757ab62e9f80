# Two commands do all the set-up: `make demo` and `make test`. Each installs what it needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: cli-reference setup jars demo test lint format test-reliability test-cluster lambda-zip emr-artifacts bench bench-scale synth clean

setup: $(STAMP) jars

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

# Delta Lake and S3A jars from Maven Central, once; later runs use the cached copies.
jars: $(STAMP)
	$(BIN)/fruits jars

demo: setup
	$(BIN)/fruits demo

test: setup lint
	$(BIN)/python -m pytest -m "not slow and not cluster"

# ruff's lint rules and its formatter (pyproject.toml's [tool.ruff]); `make format` applies both.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test-reliability: setup
	$(BIN)/python -m pytest -m "not cluster"

# infra/'s job runs on a Spark standalone cluster here (a master and two workers), from the bundle.
test-cluster: setup emr-artifacts
	$(BIN)/python -m pytest -m cluster -s

clean:
	rm -rf $(VENV) .venv-checkov .cache work build *.egg-info infra/cdk.out

# The CloudFormation template of infra/ (offline: CDK runs on the local Node.js), then cfn-lint and
# checkov (in a venv of its own: its pins clash with ours). W3005: CDK writes a DependsOn next to a
# GetAtt on the same resource; harmless. checkov's skips are per resource, each with its reason
# (CHECKOV_SKIPS in infra/fruits_infra/stack.py); any other failed check fails the target.
CHECKOV := .venv-checkov/bin/checkov
$(CHECKOV):
	$(PYTHON) -m venv .venv-checkov
	.venv-checkov/bin/pip install --quiet checkov==3.3.30
synth: $(STAMP) $(CHECKOV)
	cd infra && JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION=20 CDK_OUTDIR=cdk.out ../$(BIN)/python app.py -c startStream=true
	$(BIN)/cfn-lint --ignore-checks W3005 -- infra/cdk.out/fruits-dev.template.json
	BC_SKIP_MAPPING=TRUE $(CHECKOV) --quiet --compact --skip-download --framework cloudformation \
		-f infra/cdk.out/fruits-dev.template.json
	@echo "template: infra/cdk.out/fruits-dev.template.json"

# The Lambda's deployment package: lambda/fruits_ingest plus what the Python 3.11 runtime lacks
# (boto3 is in the runtime; powertools is not).
LAMBDA_ZIP := build/fruits-ingest-lambda.zip
lambda-zip: $(STAMP)
	rm -rf build/lambda && mkdir -p build/lambda
	$(BIN)/pip install --quiet --target build/lambda --platform manylinux2014_x86_64 \
		--only-binary=:all: --python-version 3.11 -r lambda/requirements.txt
	cp -r lambda/fruits_ingest build/lambda/
	find build/lambda -name __pycache__ -prune -exec rm -rf {} +
	rm -f $(LAMBDA_ZIP) && cd build/lambda && $(CURDIR)/$(BIN)/python -m zipfile -c ../$(notdir $(LAMBDA_ZIP)) .
	@ls -l $(LAMBDA_ZIP) | awk '{printf "%s: %.0f kB\n", $$9, $$5/1024}'

# What the EMR jobs run from, under build/emr/ (fruits deploy-artifacts uploads it to s3://<bucket>/artifacts/):
# the entry point, the packed Python environment (wheels for the release's Python on Linux x86_64, from PyPI)
# and the model compiled to LiteRT, so that the cluster needs neither TensorFlow nor the internet.
# EMR_WEIGHTS=imagenet compiles the official weights (Keras downloads them: needs the internet here).
EMR_WEIGHTS ?= models/mobilenet_v2_1.0_no_top.weights.h5
emr-artifacts: $(STAMP)
	$(BIN)/fruits bundle --out build/emr
	$(BIN)/fruits model compile --weights $(EMR_WEIGHTS) --out build/emr/model/mobilenet_v2.tflite

bench: setup
	$(BIN)/python benchmarks/run.py

# How each hot path grows with history (issue "make bench-scale"): a micro-batch, a restart, a refit
# and the queries on 10,000-, 100,000- and 1,000,000-row tables, and discovery after 1,000 and 20,000
# manifests (benchmarks/scale.py). The tables are built once and cached in work/scale-cache/ (about
# 11 GB at 1,000,000 rows). A quick run, written beside the others instead of over the recorded figures:
# make bench-scale SCALE_SIZES=10000,100000 SCALE_COMMITS=200,1000 SCALE_OUT=work/scale-quick.json
# SCALE_COMMITS= (empty) skips discovery: the last run's discovery figures stand, dated.
SCALE_SIZES ?= 10000,100000,1000000
SCALE_COMMITS ?= 1000,20000
SCALE_OUT ?= benchmarks/results/scale.json
bench-scale: setup
	$(BIN)/python benchmarks/scale.py --sizes $(SCALE_SIZES) --ledger-commits "$(SCALE_COMMITS)" --json $(SCALE_OUT)

# docs/cli.md: every command, flag, exit code and FRUITS_* setting, from the code (tests/test_cli.py checks it).
cli-reference: $(STAMP)
	$(BIN)/python -m fruits.cli_reference > docs/cli.md
