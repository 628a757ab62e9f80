"""Settings: every FRUITS_* variable typed and checked, a bad value named with what it accepts."""

from __future__ import annotations

import subprocess
import sys

import pytest

from fruits.config import Settings, SettingsError


def test_variables_are_read_typed_and_derive_the_locations(monkeypatch) -> None:
    monkeypatch.setenv("FRUITS_BATCH_SIZE", "8")
    monkeypatch.setenv("FRUITS_BUCKET", "my-bucket")
    monkeypatch.setenv("FRUITS_POISON_ATTEMPTS", "3")
    settings = Settings.from_env(region="eu-west-1", queue=None)  # None: the environment's or the default
    assert (settings.batch_size, settings.poison_attempts, settings.region) == (8, 3, "eu-west-1")
    assert settings.features_table == "s3a://my-bucket/tables/features"
    assert settings.queue == "fruits-uploads" and settings.dead_letter_queue == "fruits-uploads-dlq"


@pytest.mark.parametrize(
    ("variable", "value", "said"),
    [
        ("FRUITS_BATCH_SIZE", "abc", "valid integer"),
        ("FRUITS_BATCH_SIZE", "0", "greater than or equal to 1"),
        ("FRUITS_LABEL_RULE", "grandparent", "'folder' or 'parent'"),
        ("FRUITS_REFERENCE_PREFIXES", "uploads/,app", "must end with '/'"),
        ("FRUITS_ENDPOINT_URL", "127.0.0.1:5000", "http:// or https://"),
        ("FRUITS_SPARK_LOG_LEVEL", "LOUD", "'WARN'"),
    ],
)
def test_a_bad_value_names_its_variable_and_what_is_allowed(monkeypatch, variable: str, value: str, said: str) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as raised:
        Settings.from_env()
    assert f"{variable}={value!r}" in str(raised.value) and said in str(raised.value)


def test_the_renamed_upload_prefix_is_refused_with_its_successors(monkeypatch) -> None:
    monkeypatch.setenv("FRUITS_UPLOAD_PREFIX", "photos/")
    with pytest.raises(SettingsError, match="FRUITS_REFERENCE_PREFIXES .* and FRUITS_APP_PREFIX"):
        Settings.from_env()


def test_copies_are_checked_too_and_settings_are_frozen() -> None:
    settings = Settings(table_root="/tmp/t")
    assert settings.with_(batch_size=4).batch_size == 4 and settings.batch_size == 64
    with pytest.raises(SettingsError, match="FRUITS_MAX_FILES_PER_TRIGGER=-1"):
        settings.with_(max_files_per_trigger=-1)
    with pytest.raises(SettingsError, match="no_such_thing=1: Extra inputs are not permitted"):
        Settings(no_such_thing=1)
    with pytest.raises(Exception, match="frozen"):
        settings.batch_size = 3  # type: ignore[misc]


def test_the_cli_reports_a_bad_variable_in_one_line(tmp_path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "fruits", "status", "uploads/a.jpg"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "FRUITS_MAX_IMAGE_BYTES": "lots"},
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "fruits: invalid settings: FRUITS_MAX_IMAGE_BYTES='lots': Input should be a valid integer, "
        "unable to parse string as an integer"
    ]
