"""ray_configs/ checked against the project: every config parses, has what `ray up` and KubeRay need,
and runs commands, paths and versions that exist here (scripts/setup.sh and where it puts the venv,
the console scripts, pyproject's Ray and Python). No network, no cluster; a few seconds."""

import re
import subprocess
import tomllib
from pathlib import Path

import yaml
from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "ray_configs"
KUBERAY = CONFIGS / "kuberay"
CLUSTER_YAML = CONFIGS / "cluster.yaml"
ENV_TEMPLATE = CONFIGS / "cluster.env.example"
DOCKERFILE = CONFIGS / "Dockerfile"
SECRET_EXAMPLE = KUBERAY / "secret.example.yaml"
COMMAND_KEYS = ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
                "head_start_ray_commands", "worker_start_ray_commands")
PLACEHOLDER = "CHANGE-ME"
CREDENTIAL_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY|PRIVATE_KEY", re.I)
# Executables a venv made by scripts/setup.sh holds besides the console scripts: the interpreter, the
# installers setup.sh uses, and the entry points of pyproject dependencies (checked to be declared).
VENV_BASICS = {"python", "python3", "pip", "uv"}
DEPENDENCY_SCRIPTS = {"ray": "ray", "dvc": "dvc", "mlflow": "mlflow"}


# --- the project -----------------------------------------------------------------------------------

def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def dependency_names() -> set[str]:
    return {re.split(r"[\[=<>!~ ;]", d, maxsplit=1)[0].lower() for d in pyproject()["project"]["dependencies"]}


def ray_pin() -> str:
    pins = [m.group(1) for d in pyproject()["project"]["dependencies"]
            if (m := re.fullmatch(r"ray(?:\[[^\]]*\])?==([\w.]+)", d.replace(" ", "")))]
    assert len(pins) == 1, f"pyproject.toml: expected one exact pin of ray, found {pins}"
    return pins[0]


def requires_python() -> SpecifierSet:
    return SpecifierSet(pyproject()["project"]["requires-python"])


def venv_executables() -> set[str]:
    scripts = set(pyproject()["project"].get("scripts", {}))
    deps = dependency_names()
    return VENV_BASICS | scripts | {exe for exe, dep in DEPENDENCY_SCRIPTS.items() if dep in deps}


def setup_sh() -> str:
    return (ROOT / "scripts" / "setup.sh").read_text()


# --- the configs -----------------------------------------------------------------------------------

def yaml_files() -> list[Path]:
    return sorted(p for p in CONFIGS.rglob("*") if p.suffix in (".yaml", ".yml"))


def load_docs(path: Path) -> list:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def cluster() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def commands(cfg: dict, *keys: str) -> list[str]:
    """The shell commands of `keys` (all by default), including the per-node-type overrides."""
    keys = keys or COMMAND_KEYS
    out = [c for k in keys for c in cfg.get(k) or []]
    for node_type in cfg.get("available_node_types", {}).values():
        out += [c for k in ("initialization_commands", "worker_setup_commands") if k in keys
                for c in node_type.get(k) or []]
    return out


def project_dir(cfg: dict) -> str:
    """Where the cluster runs scripts/setup.sh: the checkout, whose .venv every node uses."""
    dirs = {m.group(1) for c in commands(cfg) if (m := re.search(r"cd (\S+) && [^;|]*bash scripts/setup\.sh", c))}
    assert len(dirs) == 1, f"cluster.yaml: expected scripts/setup.sh run in one checkout, found {dirs}"
    return dirs.pop()


def setup_python(text: str) -> str:
    found = set(re.findall(r"PYTHON=python(3\.\d+) bash scripts/setup\.sh", text))
    assert len(found) == 1, f"expected one `PYTHON=python3.X bash scripts/setup.sh`, found {found}"
    return found.pop()


def kuberay_objects() -> dict[str, list[dict]]:
    by_kind: dict[str, list[dict]] = {}
    for path in sorted(KUBERAY.glob("*.y*ml")):
        for doc in load_docs(path):
            by_kind.setdefault(doc["kind"], []).append({**doc, "_file": path.name})
    return by_kind


def one(kind: str) -> dict:
    objs = kuberay_objects().get(kind, [])
    assert len(objs) == 1, f"ray_configs/kuberay: expected one {kind}, found {len(objs)}"
    return objs[0]


def pod_templates(raycluster_spec: dict) -> dict[str, dict]:
    out = {"head": raycluster_spec["headGroupSpec"]["template"]["spec"]}
    for group in raycluster_spec.get("workerGroupSpecs", []):
        out[group["groupName"]] = group["template"]["spec"]
    return out


def ray_container(pod_spec: dict) -> dict:
    return pod_spec["containers"][0]  # KubeRay's Ray container is the first one


def dockerfile() -> dict:
    text = DOCKERFILE.read_text()
    lines = re.sub(r"\\\n", " ", text).splitlines()
    instr = [(l.split(None, 1)[0].upper(), l.split(None, 1)[1]) for l in lines
             if l.strip() and not l.lstrip().startswith("#")]
    base = [v for k, v in instr if k == "FROM"]
    copy_dest = [v.split()[-1] for k, v in instr if k == "COPY" and v.split()[-2] == "."]
    return {"text": text, "instr": instr, "base": base, "copy_dest": copy_dest,
            "workdir": [v.strip() for k, v in instr if k == "WORKDIR"],
            "run": " ".join(v for k, v in instr if k == "RUN"),
            "env": " ".join(v for k, v in instr if k == "ENV")}


def readme_section() -> str:
    text = (ROOT / "README.md").read_text()
    m = re.search(r"^## Run on a cluster\n(.*?)(?=^## )", text, re.S | re.M)
    assert m, "README.md: no section '## Run on a cluster'"
    return m.group(1)


# --- every file parses -----------------------------------------------------------------------------

def test_every_yaml_in_ray_configs_parses():
    files = yaml_files()
    names = {p.relative_to(CONFIGS).as_posix() for p in files}
    assert {"cluster.yaml", "kuberay/raycluster.yaml", "kuberay/rayjob.yaml", "kuberay/pvc.yaml",
            "kuberay/secret.example.yaml"} <= names, names
    for path in files:
        docs = load_docs(path)
        assert docs, f"{path}: no YAML document"
        assert all(isinstance(d, dict) for d in docs), f"{path}: a document is not a mapping"
    for path in KUBERAY.glob("*.y*ml"):
        for doc in load_docs(path):
            assert {"apiVersion", "kind", "metadata"} <= set(doc), f"{path}: not a Kubernetes object: {doc}"


def test_shell_in_the_configs_is_valid_bash():
    for cmd in commands(cluster()):
        r = subprocess.run(["bash", "-n", "-c", cmd], capture_output=True, text=True)
        assert r.returncode == 0, f"cluster.yaml: not valid bash: {cmd!r}: {r.stderr}"
    for script in CONFIGS.rglob("*.sh"):
        r = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert r.returncode == 0, f"{script}: {r.stderr}"


# --- ray up ----------------------------------------------------------------------------------------

def test_cluster_yaml_is_what_ray_up_accepts():
    """The pinned Ray's own preparation and validation of a cluster file (defaults, schema, node types),
    as `ray up` runs them before it launches anything."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(cluster()))


def test_cluster_has_a_cpu_head_and_gpu_workers():
    cfg = cluster()
    assert cfg["cluster_name"] and cfg["provider"]["type"] == "aws" and cfg["provider"].get("region")
    types = cfg["available_node_types"]
    head = cfg["head_node_type"]
    assert head in types, f"head_node_type {head!r} is not in available_node_types"
    assert types[head]["resources"].get("GPU", 0) == 0, "the head runs DVC and the drivers: no GPU type needed"
    gpu = {name: t for name, t in types.items() if name != head and t["resources"].get("GPU", 0) >= 1}
    assert gpu, "no worker node type with a GPU resource"
    for name, t in gpu.items():
        assert 0 <= t.get("min_workers", 0) <= t["max_workers"] <= cfg["max_workers"], name
        assert t["node_config"].get("InstanceType"), name
    for key in ("setup_commands", "head_setup_commands", "head_start_ray_commands", "worker_start_ray_commands"):
        assert cfg.get(key), f"cluster.yaml: {key} is empty"


def test_cluster_installs_with_setup_sh_where_it_puts_the_venv():
    cfg = cluster()
    proj = project_dir(cfg)
    assert proj.startswith("/"), f"the checkout must have one absolute path on every node, not {proj}"
    sh = setup_sh()
    # setup.sh makes .venv in the repository root it lives in; the configs rely on <checkout>/.venv.
    assert 'cd "$(dirname "$0")/.."' in sh and "-m venv .venv" in sh, \
        "scripts/setup.sh no longer creates <repo>/.venv: update the .venv paths in ray_configs/"
    setup = " ".join(commands(cfg, "head_setup_commands"))
    assert "bash scripts/setup.sh" in setup, "the head must install the environment with scripts/setup.sh"
    assert "pip install" not in " ".join(commands(cfg)), \
        "install through scripts/setup.sh (pyproject's pins), not a pip line of its own"
    py = setup_python(setup)
    assert py in requires_python(), f"setup.sh runs with python{py}, pyproject requires {requires_python()}"
    assert f"python{py}-venv" in " ".join(commands(cfg, "setup_commands")), \
        f"python{py} (the venv's interpreter) must be installed on every node: the venv is shared"
    # The workers use the head's venv through the shared mount: it must exist before their Ray starts.
    assert any(f"{proj}/.venv/bin/ray" in c for c in commands(cfg, "worker_setup_commands"))


def test_cluster_runs_only_the_venvs_executables_by_absolute_path():
    cfg = cluster()
    proj = project_dir(cfg)
    allowed = venv_executables()
    every = commands(cfg)
    for cmd in every:
        for prefix, exe in re.findall(r"(\S*)\.venv/bin/([\w.-]+)", cmd):
            assert prefix == f"{proj}/", f"{cmd!r}: a venv other than {proj}/.venv"
            assert exe in allowed, f"{cmd!r}: {exe} is neither a console script of pyproject nor a dependency's"
        # A bare `ray` is not on PATH on a fresh node (and would be some other Ray if it were).
        assert not re.search(r"(?<![\w/.-])ray (start|stop|status)\b", cmd), f"bare `ray` in {cmd!r}"
        for path in re.findall(r"(\S+)/ray (?:start|stop)\b", cmd):
            assert path == f"{proj}/.venv/bin", f"{cmd!r}: ray from {path}, not the project's venv"
    for key, role in (("head_start_ray_commands", "--head"), ("worker_start_ray_commands", "--address=$RAY_HEAD_IP:")):
        cmds = cfg[key]
        assert cmds[0] == f"{proj}/.venv/bin/ray stop", f"{key}: stop this node's Ray first, with the venv's ray"
        starts = [c for c in cmds if " start " in c]
        assert len(starts) == 1 and role in starts[0], f"{key}: one `ray start {role}...`"
        start = starts[0]
        assert "RAY_USAGE_STATS_ENABLED=0" in start and "--disable-usage-stats" in start, key
    head = next(c for c in cfg["head_start_ray_commands"] if " start " in c)
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in head, "without it the head launches no workers"
    # The head's autoscaler calls EC2 with the instance profile: the artifact store's keys must not reach it.
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert f"-u {var}" in head, f"head `ray start` must not inherit {var} from the env file"


def test_cluster_ships_the_checkout_and_the_env_file():
    cfg = cluster()
    proj = project_dir(cfg)
    mounts = cfg["file_mounts"]
    user_files = {remote: local for remote, local in mounts.items() if local.startswith("~")}
    repo_files = {remote: local for remote, local in mounts.items() if not local.startswith(("~", "/"))}
    for remote, local in repo_files.items():
        assert (ROOT / local).exists(), f"file_mounts {remote}: {local} is not in the repository"
    assert list(repo_files.values()) == [".git"], "ship the git history only: the head checks out a commit"
    git_remote = next(iter(repo_files))
    head_setup = " ".join(commands(cfg, "head_setup_commands"))
    assert f"git clone -q {git_remote} {proj}" in head_setup and f"git fetch -q {git_remote} HEAD" in head_setup
    assert "git checkout -q --detach FETCH_HEAD" in head_setup
    # The environment file: created by the user outside the repository, from the committed template.
    assert len(user_files) == 1, f"expected one user-created env file in file_mounts, found {user_files}"
    (env_remote, env_local), = user_files.items()
    assert ENV_TEMPLATE.exists()
    assert Path(env_local).expanduser().resolve().is_relative_to(Path.home()), env_local
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = next(c for c in cfg[key] if " start " in c)
        assert f". {env_remote}" in start, f"{key}: Ray must start with {env_remote}'s environment"
    # Every variable the commands take from the env file is in the template.
    defined = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", ENV_TEMPLATE.read_text(), re.M))
    for cmd in commands(cfg):
        for var in re.findall(r"\$\{?([A-Z][A-Z0-9_]*)", cmd):
            assert var in defined | {"RAY_HEAD_IP"}, f"{cmd!r} uses ${var}, which {ENV_TEMPLATE.name} lacks"
    needed = {"SHARED_FS", "MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
              "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    assert needed <= defined, f"{ENV_TEMPLATE.name} lacks {needed - defined}"
    # The shared file system is mounted at the parent of the checkout on every node.
    mount = re.search(r'"\$SHARED_FS" ([^\s)]+)', " ".join(commands(cfg, "setup_commands")))
    assert mount and Path(proj).is_relative_to(mount.group(1)), "the checkout must lie on the shared mount"


# --- KubeRay and the image -------------------------------------------------------------------------

def test_raycluster_has_a_gpu_worker_group_with_the_pinned_ray():
    rc = one("RayCluster")
    assert rc["apiVersion"] == "ray.io/v1"
    spec = rc["spec"]
    assert spec["rayVersion"] == ray_pin(), f"rayVersion {spec['rayVersion']} != pyproject's ray {ray_pin()}"
    assert spec.get("authOptions", {}).get("mode") == "token", "token auth: without it anyone who reaches the pods runs code"
    pods = pod_templates(spec)
    head_limits = ray_container(pods["head"])["resources"].get("limits", {})
    assert "nvidia.com/gpu" not in head_limits
    gpu_groups = []
    for group in spec["workerGroupSpecs"]:
        res = ray_container(group["template"]["spec"])["resources"]
        gpus = int(res.get("limits", {}).get("nvidia.com/gpu", 0))
        if gpus >= 1:
            assert res.get("requests", {}).get("nvidia.com/gpu", str(gpus)) == str(gpus), group["groupName"]
            assert group.get("minReplicas", 0) <= group["replicas"] <= group.get("maxReplicas", group["replicas"])
            gpu_groups.append(group["groupName"])
    assert gpu_groups, "no worker group requests nvidia.com/gpu"


def test_every_ray_pod_gets_the_image_the_secret_and_the_shared_volume():
    rc, pvc, secret = one("RayCluster"), one("PersistentVolumeClaim"), one("Secret")
    assert secret["_file"] == SECRET_EXAMPLE.name, "commit the Secret only as secret.example.yaml"
    assert secret["metadata"]["name"] != rc["metadata"]["name"], \
        "KubeRay keeps the cluster's Ray token in a Secret named after the cluster"
    assert "ReadWriteMany" in pvc["spec"]["accessModes"], "GPU workers on other nodes mount it too"
    images, mount_paths = set(), set()
    for role, pod in pod_templates(rc["spec"]).items():
        c = ray_container(pod)
        images.add(c["image"])
        refs = [e["secretRef"]["name"] for e in c.get("envFrom", []) if "secretRef" in e]
        assert refs == [secret["metadata"]["name"]], f"{role}: envFrom secretRef {refs}"
        for e in c.get("env", []):
            assert not (CREDENTIAL_NAME.search(e["name"]) and "value" in e), \
                f"{role}: {e['name']} is a literal; take it from the Secret"
        claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod.get("volumes", [])
                  if "persistentVolumeClaim" in v}
        mounts = [m["mountPath"] for m in c.get("volumeMounts", []) if claims.get(m["name"]) == pvc["metadata"]["name"]]
        assert len(mounts) == 1, f"{role}: mount the claim {pvc['metadata']['name']} once"
        mount_paths.add(mounts[0])
    assert len(images) == 1, f"head and workers must run one image: {images}"
    assert len(mount_paths) == 1, f"the shared volume must have one path on every pod: {mount_paths}"


def test_rayjob_runs_lifelong_repro_on_that_cluster_in_the_shared_checkout():
    rc, job, pvc = one("RayCluster"), one("RayJob"), one("PersistentVolumeClaim")
    assert job["apiVersion"] == "ray.io/v1"
    spec = job["spec"]
    if "clusterSelector" in spec:
        assert spec["clusterSelector"] == {"ray.io/cluster": rc["metadata"]["name"]}
        assert "rayClusterSpec" not in spec
    else:
        assert spec["rayClusterSpec"] == rc["spec"], "the embedded cluster spec drifted from raycluster.yaml"
    df = dockerfile()
    (workdir,) = df["workdir"]
    m = re.fullmatch(r"bash (\S+\.sh)", spec["entrypoint"])
    assert m and m.group(1).startswith(workdir + "/"), f"entrypoint {spec['entrypoint']!r} is not a script of the image"
    script = ROOT / m.group(1)[len(workdir) + 1:]
    assert script.exists(), f"{m.group(1)} -> {script.relative_to(ROOT)} is not in the repository"
    text = script.read_text()
    assert "lifelong" in pyproject()["project"]["scripts"]
    assert re.search(rf"exec {re.escape(workdir)}/\.venv/bin/lifelong repro\b", text), \
        f"{script.name} must run the image's `lifelong repro`"
    (mount,) = {mm["mountPath"] for mm in ray_container(pod_templates(rc["spec"])["head"])["volumeMounts"]
                if mm["name"] == "shared"}
    src = re.search(r"^src=(\S+)$", text, re.M).group(1)
    dst = re.search(r"^dst=(\S+)$", text, re.M).group(1)
    assert src == workdir, f"{script.name} copies from {src}, the image has the project at {workdir}"
    assert Path(dst).is_relative_to(mount), f"{script.name} runs in {dst}, not on the shared volume {mount}"
    assert '--exclude=./.venv' in text, "the venv belongs to the image, not the shared volume"


def test_dockerfile_builds_the_project_on_the_pinned_ray_and_python():
    df = dockerfile()
    (base,) = df["base"]
    m = re.fullmatch(r"rayproject/ray:([\w.]+)-py(\d)(\d+)(-gpu|-cu\d+)?", base.strip())
    assert m, f"unexpected base image {base}"
    ray_version, py = m.group(1), f"{m.group(2)}.{m.group(3)}"
    assert ray_version == ray_pin(), f"base image Ray {ray_version} != pyproject's {ray_pin()}"
    assert py in requires_python(), f"base image Python {py} does not satisfy {requires_python()}"
    assert setup_python(df["run"]) == py, "scripts/setup.sh must build the venv on the base image's Python"
    assert setup_python(" ".join(commands(cluster()))) == py, "ray up and the image must run one Python"
    (workdir,) = df["workdir"]
    assert df["copy_dest"] == [workdir], f"COPY . {df['copy_dest']} but WORKDIR {workdir}"
    assert re.search(rf"\bPATH={re.escape(workdir)}/\.venv/bin:", df["env"]), \
        "the venv's bin must come first on PATH: KubeRay's `ray start` and the submitter call `ray`"
    assert "RAY_USAGE_STATS_ENABLED=0" in df["env"]


def test_dockerignore_keeps_state_and_credentials_out_of_the_image():
    def norm(p: str) -> str:
        return p.strip().removeprefix("/").removeprefix("**/").rstrip("/")

    ignored = {norm(l) for l in (ROOT / ".dockerignore").read_text().splitlines() if l.strip() and l[0] != "#"}
    for line in (ROOT / ".gitignore").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            assert norm(line) in ignored, f".dockerignore lacks {line!r} (.gitignore keeps it out of git)"
    assert ".git" not in ignored, "the image needs .git: DVC and the models' git_commit tags"
    secret_copy = (SECRET_EXAMPLE.parent / "secret.yaml").relative_to(ROOT).as_posix()
    assert secret_copy in ignored
    assert "secret.yaml" in (KUBERAY / ".gitignore").read_text().split()


def test_no_credentials_are_committed():
    files = [p for p in CONFIGS.rglob("*") if p.is_file()] + [ROOT / ".dockerignore"]
    for path in files:
        text = path.read_text()
        assert not re.search(r"\bAKIA[0-9A-Z]{16}\b", text), f"{path}: an AWS access key id"
        assert not re.search(r"://[^/\s:@]+:[^/\s@]+@", text), f"{path}: a URL with a password"
        assert "BEGIN RSA PRIVATE KEY" not in text and "BEGIN OPENSSH PRIVATE KEY" not in text, path
        # NAME=value (env files, shell) and NAME: value (YAML) with a credential-like name.
        for name, value in re.findall(r"^\s*#?\s*([A-Z][A-Z0-9_]*)\s*[=:]\s*(\S.*?)\s*$", text, re.M):
            if CREDENTIAL_NAME.search(name) and not value.startswith(("$", "{")):
                assert PLACEHOLDER in value, f"{path}: {name} has a value that is not the placeholder {PLACEHOLDER}"
    secret = one("Secret")
    data = {**secret.get("stringData", {}), **secret.get("data", {})}
    assert {"MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
            "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(data)
    for key, value in data.items():
        assert value == PLACEHOLDER or ".example." in value, f"secret.example.yaml: {key} is not a placeholder"


# --- the README ------------------------------------------------------------------------------------

def test_readme_cluster_commands_match_the_configs():
    text = readme_section()
    for rel in set(re.findall(r"\bray_configs/[\w./-]+\w", text)):
        path = ROOT / rel
        assert path.exists() or path.name in (KUBERAY / ".gitignore").read_text().split(), \
            f"README 'Run on a cluster' names {rel}, which does not exist"
    proj = project_dir(cluster())
    runs = [l for l in text.splitlines() if "ray exec" in l and "lifelong repro" in l]
    assert runs, "README: no `ray exec ... lifelong repro` line"
    for line in runs:
        assert f"cd {proj} && " in line, f"README runs the pipeline outside the shared checkout {proj}"
        assert "RAY_ADDRESS=" in line, "without RAY_ADDRESS `lifelong repro` starts a private cluster on the head"
        assert ".venv/bin/lifelong repro" in line
    rc, job, secret = one("RayCluster"), one("RayJob"), one("Secret")
    image = ray_container(pod_templates(rc["spec"])["head"])["image"]
    assert f"docker build -f {DOCKERFILE.relative_to(ROOT)} -t {image} ." in text, \
        f"README must build the image the manifests run ({image})"
    name = rc["metadata"]["name"]
    for ref in (f"raycluster/{name}", f"job/{job['metadata']['name']}", f"svc/{name}-head-svc",
                f"ray.io/cluster={name}", f"secret {name} "):
        assert ref in text, f"README: {ref!r} does not match the manifests"
    for path in ("secret.yaml", "pvc.yaml", "raycluster.yaml", "rayjob.yaml"):
        assert f"-f ray_configs/kuberay/{path}" in text, f"README: no `kubectl apply ... -f ray_configs/kuberay/{path}`"


def test_every_ray_version_in_ray_configs_is_pyprojects():
    found = 0
    for path in (p for p in CONFIGS.rglob("*") if p.is_file()):
        text = path.read_text()
        versions = (re.findall(r"\bray(?:\[[^\]]*\])?==([\w.]+)", text)      # pip pins
                    + re.findall(r"rayproject/ray:([\d.]+)", text)                # image tags
                    + re.findall(r"rayVersion:\s*[\"']?([\w.]+)", text))          # KubeRay
        for version in versions:
            found += 1
            assert version == ray_pin(), f"{path.relative_to(ROOT)}: Ray {version} != pyproject's {ray_pin()}"
    assert found >= 2, "expected the image tag and the RayCluster's rayVersion at least"
