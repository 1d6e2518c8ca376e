"""prefect.yaml's deployments and the container files: entrypoints exist, pools and job variables fit, data stays
out."""

from __future__ import annotations

import importlib
import json
import re

import pytest
import yaml
from conftest import REPO

POOLS = {"cxr-process": "process", "cxr-docker": "docker", "cxr-k8s": "kubernetes"}
#: Job variables the Docker worker (prefect-docker) accepts.
DOCKER_VARIABLES = {
    "image",
    "image_pull_policy",
    "volumes",
    "env",
    "auto_remove",
    "networks",
    "network_mode",
    "stream_output",
    "mem_limit",
    "memswap_limit",
    "privileged",
    "container_create_kwargs",
    "registry_credentials",
    "name",
    "labels",
    "command",
}


@pytest.fixture(scope="module")
def deployments() -> dict[str, dict]:
    return {d["name"]: d for d in yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]}


def test_every_deployment_points_at_the_flow(deployments) -> None:
    assert {"scheduled", "scheduled-docker", "scheduled-k8s"} <= set(deployments)
    for dep in deployments.values():
        path, func = dep["entrypoint"].split(":")
        assert (REPO / path).is_file(), dep["name"]
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        assert getattr(module, func).name == "cxr-pipeline"
        assert dep["work_pool"]["name"] in POOLS
        assert dep["parameters"] == {"params": "params.yaml", "root": "."}


@pytest.mark.parametrize("name", ["scheduled-docker", "scheduled-k8s"])
def test_container_deployments_get_code_data_and_tracking(deployments, name) -> None:
    dep = deployments[name]
    steps = [next(iter(s)) for s in dep["pull"]]
    assert steps[0] == "prefect.deployments.steps.git_clone"  # a container has no checkout of its own
    assert "prefect.deployments.steps.set_working_directory" in steps
    shell = [
        s["prefect.deployments.steps.run_shell_script"]["script"]
        for s in dep["pull"]
        if "prefect.deployments.steps.run_shell_script" in s
    ]
    assert any("cache.dir /srv/cxr/" in s for s in shell)  # the DVC cache on the volume
    jv = dep["work_pool"]["job_variables"]
    env = jv["env"]
    assert re.match(r"https?://", env["MLFLOW_TRACKING_URI"])  # a server, not mlflow.db in the container
    assert env["CXR_CACHE_DIR"].startswith("/srv/cxr/")
    assert dep["concurrency_limit"]["limit"] == 1


def test_docker_job_variables_are_known_and_mount_the_volume(deployments) -> None:
    jv = deployments["scheduled-docker"]["work_pool"]["job_variables"]
    assert set(jv) <= DOCKER_VARIABLES
    assert any(v.split(":")[1] == "/srv/cxr" for v in jv["volumes"])


def test_k8s_job_variables_match_the_base_job_template(deployments) -> None:
    template = json.loads((REPO / "deploy" / "k8s-base-job-template.json").read_text())
    declared = set(template["variables"]["properties"])
    jv = deployments["scheduled-k8s"]["work_pool"]["job_variables"]
    assert set(jv) <= declared
    # Every placeholder of the job configuration is a declared variable.
    used = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", json.dumps(template["job_configuration"])))
    assert used <= declared, used - declared
    pod = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
    assert pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == "{{ data_claim }}"
    assert pod["containers"][0]["volumeMounts"][0]["mountPath"] == "{{ data_mount_path }}"
    assert template["variables"]["properties"]["data_mount_path"]["default"] == "/srv/cxr"


def test_dockerignore_keeps_data_caches_and_stores_out() -> None:
    ignored = {
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {
        "data",
        "models",
        "reports",
        ".dvc/cache",
        "mlflow.db",
        "mlartifacts",
        ".venv",
        ".git",
        ".prefect",
    } <= ignored


def test_dockerfile_has_cpu_and_cuda_bases_and_no_entrypoint() -> None:
    text = (REPO / "Dockerfile").read_text()
    assert re.search(r"^ARG VARIANT=cpu$", text, re.M)
    assert re.search(r"^FROM \S+ AS base-cpu$", text, re.M) and re.search(r"^FROM \S+cuda\S* AS base-cuda$", text, re.M)
    assert "FROM base-${VARIANT} AS base" in text
    assert len(re.findall(r"^FROM ", text, re.M)) >= 4  # multi-stage: bases, build, runtime
    # Prefect's workers set the container's command; an ENTRYPOINT would swallow it.
    assert not re.search(r"^ENTRYPOINT", text, re.M)
