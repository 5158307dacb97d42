"""Configuration: defaults, source precedence, validation messages and secret masking."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from metaclaw_mcp.config import load_config
from metaclaw_mcp.errors import ConfigError


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for key in list(os.environ):
        if key.startswith(("METACLAW_", "TINKER_")):
            monkeypatch.delenv(key)


@pytest.fixture
def home(tmp_path) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    return home


def write_toml(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults(home):
    cfg = load_config(home=home)
    assert cfg.model_name == "moonshotai/Kimi-K2.5"
    assert cfg.max_steps == 1000
    assert cfg.lora_rank == 32
    assert cfg.learning_rate == pytest.approx(1e-4)
    assert cfg.loss_fn == "importance_sampling"
    assert cfg.max_new_skills == 3
    assert cfg.transport == "stdio"
    assert cfg.port == 8765
    assert cfg.auth_token is None and cfg.tinker_api_key is None
    assert cfg.home == home
    assert cfg.database == home / "metaclaw.db"


def test_home_from_env(monkeypatch, tmp_path):
    monkeypatch.setenv("METACLAW_HOME", str(tmp_path / "envhome"))
    cfg = load_config()
    assert cfg.home == tmp_path / "envhome"
    assert cfg.database == tmp_path / "envhome" / "metaclaw.db"


def test_home_toml_is_read(home):
    write_toml(home / "config.toml", 'model_name = "toml/model"\nlora_rank = 8\n')
    cfg = load_config(home=home)
    assert cfg.model_name == "toml/model"
    assert cfg.lora_rank == 8
    assert cfg.max_steps == 1000  # untouched fields keep their defaults


def test_env_beats_toml_and_kwargs_beat_env(home, monkeypatch):
    write_toml(home / "config.toml", 'model_name = "toml/model"\nlora_rank = 8\nmax_steps = 7\n')
    monkeypatch.setenv("METACLAW_LORA_RANK", "16")
    monkeypatch.setenv("METACLAW_MAX_STEPS", "70")
    cfg = load_config(home=home, max_steps=700)
    assert cfg.model_name == "toml/model"  # only the file sets it
    assert cfg.lora_rank == 16             # env over file
    assert cfg.max_steps == 700            # explicit over env


def test_none_override_does_not_mask_lower_sources(home, monkeypatch):
    monkeypatch.setenv("METACLAW_PORT", "9000")
    assert load_config(home=home, port=None).port == 9000


def test_explicit_config_file_replaces_home_toml(home, tmp_path, monkeypatch):
    write_toml(home / "config.toml", 'model_name = "home/model"\nlora_rank = 8\n')
    other = write_toml(tmp_path / "other.toml", 'model_name = "other/model"\n')
    cfg = load_config(other, home=home)
    assert cfg.model_name == "other/model"
    assert cfg.lora_rank == 32  # the home file is not read when --config names another
    monkeypatch.setenv("METACLAW_MODEL_NAME", "env/model")
    assert load_config(other, home=home).model_name == "env/model"


def test_missing_config_file_is_an_error(home, tmp_path):
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match="config file not found") as exc:
        load_config(missing, home=home)
    assert str(missing) in str(exc.value)


def test_toml_syntax_error_is_a_config_error(home):
    path = write_toml(home / "config.toml", "model_name = = broken\n")
    with pytest.raises(ConfigError) as exc:
        load_config(home=home)
    assert str(path) in str(exc.value)


def test_invalid_loss_fn_names_field_and_allowed_values(home):
    with pytest.raises(ConfigError) as exc:
        load_config(home=home, loss_fn="sgd")
    msg = str(exc.value)
    assert "loss_fn" in msg
    for allowed in ("importance_sampling", "ppo", "cispo"):
        assert allowed in msg
    assert "'sgd'" in msg


def test_invalid_transport_from_env(home, monkeypatch):
    monkeypatch.setenv("METACLAW_TRANSPORT", "carrier-pigeon")
    with pytest.raises(ConfigError) as exc:
        load_config(home=home)
    msg = str(exc.value)
    assert "transport" in msg and "METACLAW_TRANSPORT" in msg
    for allowed in ("stdio", "sse", "http"):
        assert allowed in msg


@pytest.mark.parametrize("port", [0, 65536, -1])
def test_port_out_of_range(home, port):
    with pytest.raises(ConfigError) as exc:
        load_config(home=home, port=port)
    msg = str(exc.value)
    assert "port" in msg
    assert "65535" in msg or "greater than or equal to 1" in msg


def test_port_bounds_accepted(home):
    assert load_config(home=home, port=1).port == 1
    assert load_config(home=home, port=65535).port == 65535


def test_invalid_value_in_toml_names_the_file(home):
    path = write_toml(home / "config.toml", "lora_rank = 0\n")
    with pytest.raises(ConfigError) as exc:
        load_config(home=home)
    msg = str(exc.value)
    assert "lora_rank" in msg and str(path) in msg


def test_unknown_key_in_toml_is_rejected(home):
    write_toml(home / "config.toml", "lora_rnak = 8\n")
    with pytest.raises(ConfigError, match="lora_rnak"):
        load_config(home=home)


def test_shown_masks_secrets(home, monkeypatch):
    monkeypatch.setenv("METACLAW_AUTH_TOKEN", "tok-very-secret-123")
    monkeypatch.setenv("TINKER_API_KEY", "tml-key-very-secret-456")
    cfg = load_config(home=home)
    assert cfg.auth_token.get_secret_value() == "tok-very-secret-123"
    assert cfg.tinker_api_key.get_secret_value() == "tml-key-very-secret-456"
    shown = cfg.shown()
    assert shown["auth_token"] == "**********"
    assert shown["tinker_api_key"] == "**********"
    text = json.dumps(shown)
    assert "very-secret" not in text
    assert shown["database"] == str(home / "metaclaw.db")
    assert shown["model_name"] == "moonshotai/Kimi-K2.5"


def test_shown_without_secrets_shows_none(home):
    shown = load_config(home=home).shown()
    assert shown["auth_token"] is None and shown["tinker_api_key"] is None


def test_secret_not_echoed_in_validation_error(home, monkeypatch):
    # a bad value next to a secret: the message must not carry the secret
    monkeypatch.setenv("METACLAW_AUTH_TOKEN", "tok-very-secret-123")
    with pytest.raises(ConfigError) as exc:
        load_config(home=home, loss_fn="bad")
    assert "very-secret" not in str(exc.value)


def test_effective_backend(home, monkeypatch):
    assert load_config(home=home).effective_backend == "export"
    monkeypatch.setenv("TINKER_API_KEY", "tml-abc")
    assert load_config(home=home).effective_backend == "tinker"
    assert load_config(home=home, backend="local").effective_backend == "local"


def test_tinker_key_from_metaclaw_prefixed_env(home, monkeypatch):
    monkeypatch.setenv("METACLAW_TINKER_API_KEY", "tml-prefixed")
    cfg = load_config(home=home)
    assert cfg.tinker_api_key.get_secret_value() == "tml-prefixed"
    assert cfg.effective_backend == "tinker"


def test_unknown_key_in_toml_names_the_closest_setting(home):
    write_toml(home / "config.toml", "skill_top_kk = 3\n")
    with pytest.raises(ConfigError) as exc:
        load_config(home=home)
    assert str(exc.value) == "unknown setting 'skill_top_kk' in config.toml: did you mean skill_top_k?"
    # beside an invalid value, under the heading that names the file
    path = write_toml(home / "config.toml", "skill_top_kk = 3\nlora_rank = 0\n")
    with pytest.raises(ConfigError) as exc:
        load_config(home=home)
    lines = str(exc.value).splitlines()
    assert lines[0] == f"invalid configuration (file {path}):"
    assert lines[1] == "  unknown setting 'skill_top_kk' in config.toml: did you mean skill_top_k?"
    assert lines[2].startswith("  lora_rank: ")


def test_unknown_environment_variables_close_to_a_setting_are_named():
    from metaclaw_mcp.config import unknown_environment

    assert unknown_environment({"METACLAW_LORA_RNAK": "8", "METACLAW_LORA_RANK": "8", "METACLAW_SKIP_SKYRL": "1",
                                "PATH": "/bin"}) == [
        "METACLAW_LORA_RNAK is not a setting and is ignored: did you mean METACLAW_LORA_RANK?"]


# ---- the README's settings table is the model's ----

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_settings_table_is_generated_from_the_model():
    from metaclaw_mcp.config import TABLE_END, TABLE_START, settings_table, with_settings_table

    text = README.read_text(encoding="utf-8")
    assert text.count(TABLE_START) == 1 and text.count(TABLE_END) == 1
    shown = text[text.index(TABLE_START) + len(TABLE_START):text.index(TABLE_END)].strip("\n") + "\n"
    assert shown == settings_table(), "README.md's settings table is stale: run `metaclaw-mcp config table --readme README.md`"
    assert with_settings_table(text) == text


def test_settings_table_has_every_setting_with_its_default_and_a_meaning(home):
    import typing

    from metaclaw_mcp.config import MetaClawConfig, settings_table, shown_default

    rows = {line.split(" | ")[0].strip("| `"): line.split(" | ") for line in settings_table().splitlines()[2:]}
    assert list(rows) == list(MetaClawConfig.model_fields)
    shown = load_config(home=home).shown()   # what `config show` prints with nothing set
    for name, field in MetaClawConfig.model_fields.items():
        assert field.description, f"{name} has no description"
        if typing.get_origin(field.annotation) is typing.Literal:  # each choice is explained
            assert all(f"`{v}`" in field.description for v in typing.get_args(field.annotation)), name
        if not (isinstance(field.json_schema_extra, dict) and "shown_default" in field.json_schema_extra):
            value = shown[name]
            assert shown_default(name) == ("none" if value is None else
                                           f"`{str(value).lower() if isinstance(value, bool) else value}`"), name
    assert rows["credit_retire_min_uses"][1] == f"`{MetaClawConfig.model_fields['credit_retire_min_uses'].default}`"
