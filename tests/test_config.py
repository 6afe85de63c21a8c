from pathlib import Path

import pytest

from gateway.config import load_config
from gateway.config.yaml_source import SourceError

ROOT = Path(__file__).resolve().parent.parent
BAD = sorted((Path(__file__).parent / "fixtures" / "bad_config").glob("*.yaml"))


def test_the_embedded_default_is_valid() -> None:
    config = load_config(ROOT / "config.yaml", environ={})
    assert config.store.type == "memory"
    assert config.server.port == 8080 and config.admin.port == 9090
    assert "demo" in config.models
    assert config.keys.path == ROOT / "var" / "keys.yaml"
    assert config.tokens.ttl_seconds == 900


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_each_bad_config_names_file_line_and_field(path: Path) -> None:
    expected = path.read_text().splitlines()[0].removeprefix("# expect: ")
    with pytest.raises(SourceError) as info:
        load_config(path, environ={})
    message = str(info.value)
    assert expected in message, message
    assert str(path) in message


def test_environment_overrides_fields(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("models: {demo: {}}\nserver: {port: 8080}\n")
    env = {
        "GATEWAY__SERVER__PORT": "9999",
        "GATEWAY__STORE__TYPE": "redis",
        "GATEWAY__STORE__URL": "redis://cache:6379/2",
        "GATEWAY__SERVER__TRUSTED_PROXIES": "[10.0.0.0/8]",
        "UNRELATED": "x",
    }
    config = load_config(path, environ=env)
    assert config.server.port == 9999
    assert config.store.type == "redis" and config.store.url == "redis://cache:6379/2"
    assert [str(n) for n in config.server.trusted_proxies] == ["10.0.0.0/8"]


def test_a_bad_environment_override_names_the_variable(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("models: {demo: {}}\n")
    with pytest.raises(SourceError, match=r"environment GATEWAY__SERVER__PORT: server.port"):
        load_config(path, environ={"GATEWAY__SERVER__PORT": "lots"})


def test_several_errors_are_reported_at_once(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("models: {demo: {}}\nserver:\n  port: x\n  host: 1\n  nope: 2\n")
    with pytest.raises(SourceError) as info:
        load_config(path, environ={})
    lines = str(info.value).splitlines()
    assert len(lines) == 3
    assert any(":3: server.port" in line for line in lines)
    assert any(":5: server.nope: unknown field" in line for line in lines)


def test_missing_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="cannot read"):
        load_config(tmp_path / "absent.yaml", environ={})


@pytest.mark.parametrize(
    ("file_store", "env", "expected"),
    [
        # the shipped config.yaml writes `store: memory`; the documented override
        ("store: memory", {"GATEWAY__STORE__TYPE": "redis"}, ("redis", "redis://127.0.0.1:6379/0")),
        (
            "store: memory",
            {"GATEWAY__STORE__TYPE": "redis", "GATEWAY__STORE__URL": "redis://cache:6379/2"},
            ("redis", "redis://cache:6379/2"),
        ),
        (
            "store: redis",
            {"GATEWAY__STORE__URL": "redis://cache:6379/2"},
            ("redis", "redis://cache:6379/2"),
        ),
        # a shorthand from the environment sets the one field of a mapping in the file
        (
            "store: {type: memory, url: 'redis://cache:6379/2'}",
            {"GATEWAY__STORE": "redis"},
            ("redis", "redis://cache:6379/2"),
        ),
        ("store:", {"GATEWAY__STORE__TYPE": "redis"}, ("redis", "redis://127.0.0.1:6379/0")),
        ("", {"GATEWAY__STORE": "redis"}, ("redis", "redis://127.0.0.1:6379/0")),
    ],
)
def test_overrides_reach_sections_written_as_a_shorthand(
    tmp_path: Path, file_store: str, env: dict[str, str], expected: tuple[str, str]
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(f"models: {{demo: {{}}}}\n{file_store}\n")
    config = load_config(path, environ=env)
    assert (config.store.type, config.store.url) == expected


def test_a_bad_override_of_a_shorthand_section_names_the_variable(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("models: {demo: {}}\nstore: memory\n")
    with pytest.raises(SourceError) as info:
        load_config(path, environ={"GATEWAY__STORE__TIMEOUT_MS": "soon"})
    assert str(info.value).startswith(
        "environment GATEWAY__STORE__TIMEOUT_MS: store.timeout_ms: Input should be a valid integer"
    )
    with pytest.raises(SourceError) as info:
        load_config(path, environ={"GATEWAY__STORE__TYPE": "etcd"})
    assert (
        "environment GATEWAY__STORE__TYPE: store.type: Input should be 'memory' or 'redis'"
        in str(info.value)
    )


def test_a_field_that_is_not_a_section_is_named(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("models: {demo: {}}\nserver:\n  port: 8080\n")
    with pytest.raises(SourceError) as info:
        load_config(path, environ={"GATEWAY__SERVER__PORT__NUMBER": "1"})
    assert str(info.value) == (
        f"environment GATEWAY__SERVER__PORT__NUMBER: server.port is 8080 in {path}:3, "
        "not a section with fields"
    )


def test_overrides_reach_nested_sections_and_models(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("models: {demo: {}}\n")
    config = load_config(
        path,
        environ={
            "GATEWAY__UPSTREAM__TIMEOUTS__READ": "12",
            "GATEWAY__MODELS__DEMO__UPSTREAM_MODEL": "echo-1",
            "GATEWAY__POLICIES__ALLOW_UNPROTECTED": "true",
        },
    )
    assert config.upstream.timeouts.read == 12
    assert config.models["demo"].upstream_model == "echo-1"
    assert config.policies.allow_unprotected is True
