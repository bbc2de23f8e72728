"""pipeline/services/stack.py without servers: ports, the generated configuration files; and what a client
reads of it (pipeline/stackclient.py: client_env)."""

from __future__ import annotations

import configparser
import json
import random
import stat

import pytest

from pipeline import stackclient
from pipeline.services import stack


@pytest.fixture(autouse=True)
def _no_stack_dir_override(monkeypatch):
    monkeypatch.delenv(stackclient.STACK_DIR_ENV, raising=False)


def test_pick_ports_avoids_busy_and_taken_ports_and_their_grpc_twins():
    busy = set(range(stack.PORT_RANGE[0], stack.PORT_RANGE[0] + 3000, 2))  # every other port of the first 3000
    taken = {17000}
    ports = stack.pick_ports(stack.WEED_PORTS, taken=taken, grpc=True, rng=random.Random(0),
                             is_free=lambda p: p not in busy)
    assert set(ports) == set(stack.WEED_PORTS)
    used = [q for p in ports.values() for q in (p, p + stack.GRPC_OFFSET)]
    assert len(set(used)) == len(used), "two components share a port (or a gRPC port)"
    assert not busy.intersection(used) and 17000 not in used
    assert all(stack.PORT_RANGE[0] <= p < stack.PORT_RANGE[1] for p in ports.values())
    assert taken.issuperset(used)  # the next pick avoids them too


def test_pick_ports_fails_with_one_line_when_nothing_is_free():
    with pytest.raises(stack.StackError, match="no free port"):
        stack.pick_ports(["mlflow"], taken=set(), is_free=lambda p: False)


def test_port_free_sees_a_listener(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind((stack.HOST, 0))
        s.listen()
        assert not stack.port_free(s.getsockname()[1])


def test_new_config_generates_distinct_secrets_and_ports():
    cfg = stack.new_config(rng=random.Random(1), is_free=lambda p: True)
    assert stack.manages_postgres(cfg) and stack.manages_s3(cfg)
    secrets_ = [cfg["postgres"]["password"], cfg["postgres"]["superuser_password"], cfg["s3"]["secret_key"],
                cfg["s3"]["admin_password"], cfg["mlflow"]["password"], cfg["mlflow"]["flask_secret_key"]]
    assert len(set(secrets_)) == len(secrets_) and all(len(s) >= 24 for s in secrets_)
    ports = [cfg["postgres"]["port"], cfg["mlflow"]["port"],
             *[q for p in cfg["s3"]["ports"].values() for q in (p, p + stack.GRPC_OFFSET)]]
    assert len(set(ports)) == len(ports)
    assert cfg["s3"]["endpoint_url"] == f"http://127.0.0.1:{cfg['s3']['ports']['s3']}"
    assert stack.backend_uri(cfg) == f"postgresql://lifelong:{cfg['postgres']['password']}@127.0.0.1:{cfg['postgres']['port']}/mlflow"
    assert stack.tracking_uri(cfg) == f"http://127.0.0.1:{cfg['mlflow']['port']}"


def test_new_config_external_postgres_and_s3_keep_what_is_given():
    env = {"AWS_ACCESS_KEY_ID": "AK", "AWS_SECRET_ACCESS_KEY": "SK"}
    cfg = stack.new_config(postgres_uri="postgresql://u:pw@db:5432/ml", s3_endpoint_url="https://s3.example/",
                           bucket="b", env=env, is_free=lambda p: True)
    assert not stack.manages_postgres(cfg) and not stack.manages_s3(cfg)
    assert stack.backend_uri(cfg) == "postgresql://u:pw@db:5432/ml"
    assert cfg["s3"] == {"endpoint_url": "https://s3.example", "access_key": "AK", "secret_key": "SK", "bucket": "b"}
    assert stack.auth_db_uri(cfg, stack.Path("/x/.stack")) == "sqlite:////x/.stack/mlflow_auth.db"
    with pytest.raises(stack.StackError, match="AWS_ACCESS_KEY_ID"):
        stack.new_config(s3_endpoint_url="https://s3.example", env={}, is_free=lambda p: True)


def test_uris_for_sqlalchemy_and_for_printing():
    assert stack.sqlalchemy_uri("postgresql://u:p@h:1/d") == "postgresql+psycopg2://u:p@h:1/d"
    assert stack.sqlalchemy_uri("postgres://u:p@h/d") == "postgresql+psycopg2://u:p@h/d"
    assert stack.sqlalchemy_uri("sqlite:///x.db") == "sqlite:///x.db"
    assert stack.masked("postgresql://u:secret@h:1/d") == "postgresql://u:***@h:1/d"
    assert stack.masked("postgresql://h:1/d") == "postgresql://h:1/d"


def test_weed_options_bind_loopback_and_switch_off_the_extra_servers(tmp_path):
    cfg = stack.new_config(rng=random.Random(2), is_free=lambda p: True)
    lines = stack.weed_options(cfg, tmp_path).splitlines()
    opts = dict(line.split("=", 1) for line in lines)
    assert len(opts) == len(lines)
    assert opts["ip"] == opts["ip.bind"] == "127.0.0.1"
    for name, port in cfg["s3"]["ports"].items():
        assert opts[f"{name}.port"] == str(port)
    assert opts["s3.port.iceberg"] == opts["s3.port.lance"] == "0"
    assert opts["webdav"] == opts["master.telemetry"] == opts["admin.ui"] == "false"
    assert opts["admin.password"] == cfg["s3"]["admin_password"]
    assert opts["dir"] == str(tmp_path / "seaweedfs") and opts["s3.config"] == str(tmp_path / "s3.json")
    ident = stack.s3_identities(cfg)["identities"][0]
    assert ident["credentials"] == [{"accessKey": cfg["s3"]["access_key"], "secretKey": cfg["s3"]["secret_key"]}]
    assert set(ident["actions"]) == {"Admin", "Read", "Write", "List", "Tagging"}


def test_auth_ini_holds_the_admin_and_the_auth_store(tmp_path):
    """The keys mlflow.server.auth.config.read_auth_config reads (importing it costs ~10 s of mlflow.server;
    the integration test shows the server reading this file)."""
    cfg = stack.new_config(is_free=lambda p: True)
    ini = configparser.ConfigParser()  # MLflow's reader: interpolation on, so no '%' may appear
    ini.read_string(stack.auth_ini(cfg, tmp_path))
    m = ini["mlflow"]
    assert (m["admin_username"], m["admin_password"]) == ("lifelong", cfg["mlflow"]["password"])
    assert m["default_permission"] == "READ" and m.getint("auth_cache_ttl_seconds") == 60
    assert m["database_uri"] == stack.sqlalchemy_uri(stack.backend_uri(cfg, "mlflow_auth"))
    assert m["authorization_function"] == "mlflow.server.auth:authenticate_request_basic_auth"


def test_config_and_env_file_are_private_and_client_env_matches_only_this_stack(tmp_path):
    sdir = stackclient.stack_dir(tmp_path)
    assert sdir == tmp_path.resolve() / ".stack"
    assert stackclient.client_env(tmp_path, "http://127.0.0.1:5000") == {}  # no stack yet
    sdir.mkdir()
    cfg = stack.new_config(is_free=lambda p: True)
    stack.save_config(sdir, cfg)
    assert stat.S_IMODE((sdir / "stack.json").stat().st_mode) == 0o600
    assert stackclient.load_config(sdir) == cfg
    port, pw = cfg["mlflow"]["port"], cfg["mlflow"]["password"]
    want = {"MLFLOW_TRACKING_USERNAME": "lifelong", "MLFLOW_TRACKING_PASSWORD": pw}
    for uri in (f"http://127.0.0.1:{port}", f"http://localhost:{port}/", f"HTTP://127.0.0.1:{port}"):
        assert stackclient.client_env(tmp_path, uri) == want, uri
    for uri in (f"http://127.0.0.1:{port + 1}", f"https://127.0.0.1:{port}", f"sqlite:///{tmp_path}/mlflow.db", None, ""):
        assert stackclient.client_env(tmp_path, uri) == {}, uri
    env = dict(line.split("=", 1) for line in stack.env_file(cfg).splitlines())
    assert env == {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}", **want}


def test_stack_dir_env_override(tmp_path, monkeypatch):
    monkeypatch.setenv(stackclient.STACK_DIR_ENV, str(tmp_path / "elsewhere"))
    assert stackclient.stack_dir(tmp_path / "repo") == tmp_path / "elsewhere"


def test_status_and_down_without_a_stack(tmp_path, capsys):
    assert stack.status(tmp_path / ".stack") == stack.EXIT_DOWN
    assert stack.down(tmp_path / ".stack") == 0
    assert "no stack" in capsys.readouterr().out


def test_changed_options_on_a_later_up_are_refused(tmp_path):
    sdir = tmp_path / ".stack"
    sdir.mkdir()
    stack.save_config(sdir, stack.new_config(is_free=lambda p: True))
    with pytest.raises(stack.StackError, match="--bucket"):
        stack.up(sdir, bucket="other")
    with pytest.raises(stack.StackError, match="--postgres-uri"):
        stack.up(sdir, postgres_uri="postgresql://u:pw@h/d")
    assert json.loads((sdir / "stack.json").read_text())["s3"]["bucket"] == "mlflow"
