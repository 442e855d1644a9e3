"""README's settings table and the settings models (`config.Settings`, the server's
`ServiceSettings` that extends it) name the same settings: neither can drift."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import AliasChoices

from offline_asr.service.settings import ServiceSettings
from support.bundles import invoke
from support.helpers import REPO

ROW = re.compile(r"^\| (`[A-Z0-9_]+`(?: / `[A-Z0-9_]+`)*) \|[^|]*\| ([^|]*) \|", re.MULTILINE)


def _table() -> dict[str, str]:
    """Environment variable -> config key ("" when the row has none), from README's table."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Settings") :]
    rows: dict[str, str] = {}
    for variables, keys in ROW.findall(section):
        names = re.findall(r"`([A-Z0-9_]+)`", variables)
        found = re.findall(r"`([a-z0-9_]+)`", keys) or [""] * len(names)
        rows.update(zip(names, found, strict=True))
    return rows


def _model() -> dict[str, str]:
    """Environment variable -> config key, from the settings models."""
    fields = {}
    for name, field in ServiceSettings.model_fields.items():
        alias = field.validation_alias
        assert isinstance(alias, AliasChoices), f"{name} has no environment variable"
        key, variable = alias.choices
        fields[str(variable)] = str(key)
        assert key == name, f"{name}: its config key is {key}"
    return fields


def test_every_setting_is_in_the_table_with_its_config_key() -> None:
    table, model = _table(), _model()
    assert {variable: table.get(variable) for variable in model} == model


def test_every_config_key_in_the_table_is_a_setting() -> None:
    keyed = {variable: key for variable, key in _table().items() if key}
    assert keyed == {variable: key for variable, key in _model().items() if variable in keyed}
    assert set(keyed.values()) <= set(ServiceSettings.model_fields)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "does not exist"),
        (b"manifest = [\n", "cannot read the settings file"),
        (b"\xff\xfe", "cannot read the settings file"),
    ],
    ids=["missing", "not-toml", "not-utf8"],
)
def test_a_bad_settings_file_is_bad_input_for_every_command(
    tmp_path: Path, content: bytes | None, expected: str
) -> None:
    """OFFLINE_ASR_CONFIG applies to every command: a file that cannot be used stops it (exit 2)
    with the file named, never a traceback or settings nobody chose."""
    config = tmp_path / "settings.toml"
    if content is not None:
        config.write_bytes(content)
    outcome = invoke("models", "list", env={"OFFLINE_ASR_CONFIG": str(config)})
    assert outcome.exit_code == 2, outcome.text
    assert expected in outcome.text and str(config) in outcome.text
    assert "Traceback" not in outcome.text


def test_the_settings_file_applies_to_every_command(tmp_path: Path) -> None:
    """A key in the TOML file is used by a command other than `serve`, under the environment."""
    config = tmp_path / "settings.toml"
    config.write_text(f'manifest = "{tmp_path / "elsewhere" / "manifest.json"}"\n')
    outcome = invoke("models", "list", env={"OFFLINE_ASR_CONFIG": str(config)})
    assert outcome.exit_code == 2 and "elsewhere/manifest.json does not exist" in outcome.text
