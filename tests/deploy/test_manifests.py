"""The deployment files under deploy/, checked without running them (no container engine runs here).

Every YAML file is parsed (multi-document); each Kubernetes object must be well-formed for its
kind; every process that runs the xmodal image is reduced to what it would run — an argv and the
environment it would get (ConfigMaps, Secrets, env lists, compose `environment`, with compose's
`${VAR:-default}` interpolation) — and that argv must parse with the real `xmodal` CLI and that
environment must build the real `Settings` (`load_settings`, so a misspelt variable or a bad value
fails here as it would at start-up). XMODAL_KAFKA_<property> pass-through names are checked by
librdkafka itself. The KEDA ScaledObject must watch the worker's real consumer group and topic and
stop at the partition count; the topic definitions (Strimzi KafkaTopic, deploy/create-topics.sh)
must agree with XMODAL_TOPIC_PARTITIONS and keep the media topic compacted.

The checks are functions that return problems, so `test_the_checks_catch_broken_manifests` can show
that each of them fails on a broken copy of the real files.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import confluent_kafka
import pytest
import typer
import typer.main
import yaml

from xmodal.cli import app as cli_app
from xmodal.config import _FIELD_ENV, ENV_PREFIX, KAFKA_PASSTHROUGH_PREFIX, Settings, load_settings
from xmodal.errors import ConfigError

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}
# typer vendors click (typer._click) and roots every usage error in TyperException.
USAGE_ERRORS = typer.TyperException
XMODAL_IMAGE = re.compile(r"^(?:.+/)?xmodal(?::[\w.-]+)?$")  # xmodal, xmodal:0.1.0, registry/x/xmodal:tag


# -- loading --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Doc:
    path: Path
    file: str  # as the problems name it, e.g. deploy/k8s/worker.yaml
    body: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.body.get("kind", ""))

    @property
    def name(self) -> str:
        meta = self.body.get("metadata") or {}
        return str(meta.get("name") or meta.get("generateName") or "")

    def where(self) -> str:
        return f"{self.file}: {self.kind} {self.name}"


def yaml_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix in (".yaml", ".yml"))


# libyaml's parser where PyYAML has it: the checks read every file several times.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@functools.lru_cache(maxsize=256)
def _parse(text: str) -> tuple[Any, ...]:
    """Every document of one YAML text (cached by content: the checks never modify what they read)."""
    return tuple(body for body in yaml.load_all(text, Loader=_LOADER) if body is not None)


def load_docs(path: Path, root: Path = DEPLOY) -> list[Doc]:
    file = path.relative_to(root.parent).as_posix()
    return [Doc(path, file, body) for body in _parse(path.read_text())]


def kubernetes_docs(root: Path) -> list[Doc]:
    return [doc for path in yaml_files(root / "k8s") for doc in load_docs(path, root)]


def compose_files(root: Path) -> dict[str, dict[str, Any]]:
    """compose.yaml, compose.node.yaml, ...: file name -> parsed file."""
    return {p.name: _parse(p.read_text())[0] for p in sorted(root.glob("compose*.yaml"))}


def image_entrypoint(root: Path) -> tuple[list[str], list[str]]:
    """ENTRYPOINT and CMD of deploy/Dockerfile (exec form)."""
    text = (root / "Dockerfile").read_text()
    found = {m[1]: json.loads(m[2]) for m in re.finditer(r"^(ENTRYPOINT|CMD)\s+(\[.*\])\s*$", text, re.M)}
    return found.get("ENTRYPOINT", []), found.get("CMD", [])


# -- what a process runs --------------------------------------------------------------------------


@dataclass
class Process:
    """One container that runs the xmodal image: its argv and the XMODAL_* environment it gets.

    A value of None: set from a source these files do not hold (only its name can be checked)."""

    where: str
    owner: str  # "Deployment xmodal-worker", "service worker"
    argv: list[str]
    env: dict[str, str | None] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def settings(self) -> Settings:
        return load_settings({k: v for k, v in self.env.items() if v is not None})


def _by_kind_and_name(docs: Iterable[Doc]) -> dict[tuple[str, str], Doc]:
    return {(d.kind, d.name): d for d in docs}


def _pod_spec(doc: Doc) -> dict[str, Any]:
    return ((doc.body.get("spec") or {}).get("template") or {}).get("spec") or {}


def _object_data(doc: Doc) -> dict[str, str]:
    data = {k: str(v) for k, v in (doc.body.get("data") or {}).items()}
    if doc.kind == "Secret":  # data is base64 in a Secret, stringData plain text
        data = {k: base64.b64decode(v).decode() for k, v in data.items()}
    return data | {k: str(v) for k, v in (doc.body.get("stringData") or {}).items()}


def kubernetes_processes(root: Path) -> list[Process]:
    docs = kubernetes_docs(root)
    objects = _by_kind_and_name(docs)
    entrypoint, cmd = image_entrypoint(root)
    processes = []
    for doc in docs:
        if doc.kind not in WORKLOAD_KINDS:
            continue
        for container in _pod_spec(doc).get("containers") or []:
            if not XMODAL_IMAGE.match(str(container.get("image", ""))):
                continue
            where = f"{doc.where()}, container {container.get('name')}"
            if "command" in container:
                argv = [*container["command"], *container.get("args", [])]
            else:
                argv = [*entrypoint, *container.get("args", cmd)]
            process = Process(where, f"{doc.kind} {doc.name}", [str(a) for a in argv])
            for source in container.get("envFrom") or []:
                for kind, ref in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
                    if ref not in source:
                        continue
                    name = source[ref]["name"]
                    target = objects.get((kind, name))
                    if target is None:
                        if not source[ref].get("optional"):
                            process.problems.append(f"{where}: envFrom names {kind} {name!r}, which no manifest defines")
                        continue
                    process.env.update({source.get("prefix", "") + k: v for k, v in _object_data(target).items()})
            for var in container.get("env") or []:
                process.env[var["name"]] = _env_value(var, objects, where, process.problems)
            processes.append(process)
    return processes


def _env_value(
    var: Mapping[str, Any], objects: Mapping[tuple[str, str], Doc], where: str, problems: list[str]
) -> str | None:
    if "value" in var:
        return str(var["value"])
    source = var.get("valueFrom") or {}
    for kind, ref in (("ConfigMap", "configMapKeyRef"), ("Secret", "secretKeyRef")):
        if ref in source:
            name, key = source[ref]["name"], source[ref]["key"]
            target = objects.get((kind, name))
            data = _object_data(target) if target is not None else {}
            if key not in data:
                problems.append(f"{where}: {var['name']} reads {kind} {name!r} key {key!r}, which no manifest defines")
                return None
            return data[key]
    return None  # fieldRef, resourceFieldRef: only the name can be checked


_INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def interpolate(value: str, where: str, problems: list[str]) -> str:
    """Compose's ${VAR:-default} as it resolves with VAR unset (what a plain `docker compose up` runs)."""

    def resolve(m: re.Match[str]) -> str:
        if m[2] in ("-", ":-"):
            return m[3]
        problems.append(f"{where}: ${{{m[1]}}} has no default, so the file does not run as it is")
        return ""

    return _INTERPOLATION.sub(resolve, value.replace("$$", "\0")).replace("\0", "$")


def compose_processes(root: Path) -> list[Process]:
    entrypoint, cmd = image_entrypoint(root)
    processes = []
    for file, compose in compose_files(root).items():
        processes += _compose_file_processes(root, file, compose, entrypoint, cmd)
    return processes


def _compose_file_processes(
    root: Path, file: str, compose: Mapping[str, Any], entrypoint: list[str], cmd: list[str]
) -> list[Process]:
    processes = []
    for name, service in (compose.get("services") or {}).items():
        dockerfile = str((service.get("build") or {}).get("dockerfile", ""))
        if not (XMODAL_IMAGE.match(str(service.get("image", ""))) or dockerfile.endswith("deploy/Dockerfile")):
            continue
        where = f"{root.name}/{file}: service {name}"
        process = Process(where, f"{file} {name}", [])
        command = service.get("command", cmd)
        command = command.split() if isinstance(command, str) else command
        arguments = [interpolate(str(a), where, process.problems) for a in command]
        process.argv = [*service.get("entrypoint", entrypoint), *arguments]
        environment = service.get("environment") or {}
        if isinstance(environment, list):
            environment = dict(item.split("=", 1) if "=" in item else (item, None) for item in environment)
        for key, value in environment.items():
            process.env[key] = None if value is None else interpolate(str(value), where, process.problems)
        processes.append(process)
    return processes


def all_processes(root: Path) -> list[Process]:
    return kubernetes_processes(root) + compose_processes(root)


# -- checks: each returns the problems it found ------------------------------------------------------


def check_kubernetes_objects(root: Path) -> list[str]:
    """apiVersion/kind/metadata on every object; workloads whose selectors, ports and probes fit."""
    problems = []
    docs = kubernetes_docs(root)
    pod_labels: list[dict[str, str]] = []
    for doc in docs:
        where = doc.where()
        for key in ("apiVersion", "kind"):
            if not doc.body.get(key):
                problems.append(f"{where}: no {key}")
        if doc.kind != "Kustomization" and not doc.name:
            problems.append(f"{where}: no metadata.name (or generateName)")
        if doc.kind not in WORKLOAD_KINDS:
            continue
        spec = doc.body.get("spec") or {}
        template = spec.get("template") or {}
        labels = (template.get("metadata") or {}).get("labels") or {}
        pod_labels.append(labels)
        if doc.kind != "Job":
            selector = (spec.get("selector") or {}).get("matchLabels") or {}
            if not selector or any(labels.get(k) != v for k, v in selector.items()):
                problems.append(f"{where}: selector {selector} does not match the pod labels {labels}")
        pod = template.get("spec") or {}
        if doc.kind == "Job" and pod.get("restartPolicy") not in ("Never", "OnFailure"):
            problems.append(f"{where}: a Job's pods need restartPolicy Never or OnFailure")
        containers = pod.get("containers") or []
        if not containers:
            problems.append(f"{where}: no containers")
        volumes = {v.get("name") for v in pod.get("volumes") or []}
        for c in containers:
            cw = f"{where}, container {c.get('name')}"
            if not c.get("name") or not c.get("image"):
                problems.append(f"{cw}: a container needs a name and an image")
            if XMODAL_IMAGE.match(str(c.get("image", ""))) and not (c.get("command") or c.get("args")):
                problems.append(f"{cw}: say which xmodal command it runs (command:)")
            port_names = {p.get("name") for p in c.get("ports") or []}
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                port = ((c.get(probe) or {}).get("httpGet") or {}).get("port")
                if isinstance(port, str) and port not in port_names:
                    problems.append(f"{cw}: {probe} uses port {port!r}, not among its ports {sorted(port_names)}")
            for mount in c.get("volumeMounts") or []:
                if mount.get("name") not in volumes and mount.get("name") not in _claim_templates(spec):
                    problems.append(f"{cw}: mounts volume {mount.get('name')!r}, which the pod does not define")
    for doc in docs:
        if doc.kind != "Service":
            continue
        selector = (doc.body.get("spec") or {}).get("selector") or {}
        if selector and not any(all(labels.get(k) == v for k, v in selector.items()) for labels in pod_labels):
            problems.append(f"{doc.where()}: selector {selector} matches no pod template in deploy/k8s")
    return problems


def _claim_templates(spec: Mapping[str, Any]) -> set[str]:
    return {(t.get("metadata") or {}).get("name") for t in spec.get("volumeClaimTemplates") or []}


def check_kustomizations(root: Path) -> list[str]:
    """Each kustomization's resources exist, its images cover the xmodal containers below it, and
    every manifest below it that it does not list is named in its comments."""
    problems = []
    paths = sorted((root / "k8s").rglob("kustomization.yaml"))
    if not paths:
        problems.append("deploy/k8s: no kustomization.yaml")
    for path in paths:
        label = path.relative_to(root.parent).as_posix()
        text = path.read_text()
        (kustomization,) = _parse(text)
        listed = set(kustomization.get("resources") or [])
        problems += [f"{label}: lists {r}, which does not exist" for r in sorted(listed) if not (path.parent / r).exists()]
        renamed = {i.get("name") for i in kustomization.get("images") or []}
        for resource in sorted(listed):
            if (path.parent / resource).is_file():
                for doc in load_docs(path.parent / resource, root):
                    for c in _pod_spec(doc).get("containers") or []:
                        if XMODAL_IMAGE.match(str(c.get("image", ""))) and c["image"] not in renamed:
                            problems.append(f"{doc.where()}: image {c['image']!r} is not among {label}'s images")
        for other in yaml_files(path.parent):
            rel = other.relative_to(path.parent).as_posix()
            top = rel.split("/")[0] + "/"
            if rel != path.name and rel not in listed and rel not in text and top not in text:
                problems.append(f"{label}: neither lists nor mentions {rel}")
    return problems


def check_commands(processes: Iterable[Process]) -> list[str]:
    """Each argv is `xmodal <command> ...` and parses with the real CLI (names, options, arguments)."""
    group = typer.main.get_command(cli_app)
    commands = group.commands  # type: ignore[attr-defined]
    problems = []
    for p in processes:
        if not p.argv or Path(p.argv[0]).name != "xmodal":
            problems.append(f"{p.where}: runs {p.argv}, not the xmodal command")
            continue
        if len(p.argv) < 2 or p.argv[1] not in commands:
            problems.append(f"{p.where}: `{' '.join(p.argv)}`: no such command; xmodal has {', '.join(sorted(commands))}")
            continue
        try:
            commands[p.argv[1]].make_context(p.argv[1], list(p.argv[2:]), parent=typer.Context(group, info_name="xmodal"))
        except USAGE_ERRORS as e:
            problems.append(f"{p.where}: `{' '.join(p.argv)}`: {e.format_message()}")
    return problems


def check_settings(env: Mapping[str, str | None], where: str) -> list[str]:
    """The XMODAL_* variables build the real Settings; pass-through Kafka names are librdkafka's."""
    xmodal_env = {k: v for k, v in env.items() if k.startswith(ENV_PREFIX)}
    problems = []
    try:
        load_settings({k: v for k, v in xmodal_env.items() if v is not None})
    except ConfigError as e:
        problems.append(f"{where}: {e.message}")
    for name, value in xmodal_env.items():
        if value is None and name not in _FIELD_ENV and not name.startswith(KAFKA_PASSTHROUGH_PREFIX):
            problems.append(f"{where}: {name} is not a setting")
        if name.startswith(KAFKA_PASSTHROUGH_PREFIX) and name not in _FIELD_ENV:
            prop = name[len(KAFKA_PASSTHROUGH_PREFIX) :].lower().replace("_", ".")
            if why := librdkafka_refuses(prop, value):
                problems.append(f"{where}: {name} passes {prop!r} to librdkafka, which says: {why}")
    return problems


def librdkafka_refuses(prop: str, value: str | None) -> str | None:
    """librdkafka's answer when `prop` is not one of its properties or `value` not a valid value.

    One property at a time, with no broker: only the name and the value's form are judged here, not
    combinations (a SASL mechanism without its password) or paths that exist only in a container."""
    try:
        confluent_kafka.Producer({prop: value if value is not None else "x", "log_level": 0})
    except confluent_kafka.KafkaException as e:
        message = e.args[0].str()
        if "No such configuration property" in message or ("Invalid value" in message and value is not None):
            return message
    return None


def check_config_objects(root: Path) -> list[str]:
    """ConfigMaps and Secrets hold only real settings, even where no container reads them yet."""
    problems = []
    for doc in kubernetes_docs(root):
        if doc.kind in ("ConfigMap", "Secret"):
            problems += check_settings({k: v for k, v in _object_data(doc).items()}, doc.where())
    return problems


def ingest_group(settings: Settings) -> str:
    """The worker's consumer group, as the real Faust app names it (no broker is contacted)."""
    from xmodal.streams.app import create_app

    with ThreadPoolExecutor(max_workers=1) as executor:
        # The pipeline is only called by the agent, which never runs here.
        faust_app = create_app(settings, settings.kafka_bootstrap or "localhost:9092", None, executor)  # type: ignore[arg-type]
        return str(faust_app.conf.id)


def check_autoscaling(root: Path) -> list[str]:
    """Each KEDA ScaledObject scales `xmodal worker` on its own group and topic, up to the partitions."""
    docs = kubernetes_docs(root)
    processes = {p.owner: p for p in kubernetes_processes(root)}
    problems = []
    scaled = [d for d in docs if d.kind == "ScaledObject"]
    if not scaled:
        problems.append("deploy/k8s: no KEDA ScaledObject for the workers")
    for doc in scaled:
        spec = doc.body.get("spec") or {}
        target = processes.get(f"Deployment {(spec.get('scaleTargetRef') or {}).get('name')}")
        if target is None:
            problems.append(f"{doc.where()}: scaleTargetRef names no Deployment running the xmodal image")
            continue
        if target.argv[1:2] != ["worker"]:
            problems.append(f"{doc.where()}: scales {target.where}, which runs {target.argv}, not `xmodal worker`")
        settings = target.settings()
        ceiling = spec.get("maxReplicaCount")
        if not isinstance(ceiling, int) or not 1 <= ceiling <= settings.topic_partitions:
            problems.append(
                f"{doc.where()}: maxReplicaCount {ceiling!r} must be set and at most XMODAL_TOPIC_PARTITIONS="
                f"{settings.topic_partitions}: a worker beyond the partition count gets no partition"
            )
        triggers = [t for t in spec.get("triggers") or [] if t.get("type") == "kafka"]
        if not triggers:
            problems.append(f"{doc.where()}: no kafka trigger")
        expected = {
            "consumerGroup": ingest_group(settings),
            "topic": settings.media_topic,
            "bootstrapServers": settings.kafka_bootstrap,
        }
        for trigger in triggers:
            meta = trigger.get("metadata") or {}
            for key, value in expected.items():
                if meta.get(key) != value:
                    problems.append(f"{doc.where()}: kafka trigger {key} is {meta.get(key)!r}; the workers use {value!r}")
            if not str(meta.get("lagThreshold", "")).isdigit() or int(meta["lagThreshold"]) < 1:
                problems.append(f"{doc.where()}: lagThreshold must be a positive integer (a string), got {meta.get('lagThreshold')!r}")
            if str(meta.get("allowIdleConsumers", "false")).lower() == "true":
                problems.append(f"{doc.where()}: allowIdleConsumers would scale past the partition count")
    return problems


def check_topics(root: Path) -> list[str]:
    """The topics made for xmodal agree with its settings: media compacted, partitions = the setting."""
    problems = []
    docs = kubernetes_docs(root)
    worker_settings = [p.settings() for p in kubernetes_processes(root) if p.argv[1:2] == ["worker"]]
    topics = {(d.body.get("spec") or {}).get("topicName") or d.name: d for d in docs if d.kind == "KafkaTopic"}
    for settings in worker_settings:
        media = topics.get(settings.media_topic)
        if media is None:
            if topics:
                problems.append(f"deploy/k8s: no KafkaTopic for {settings.media_topic}")
            continue
        spec = media.body.get("spec") or {}
        if spec.get("partitions") != settings.topic_partitions:
            problems.append(f"{media.where()}: {spec.get('partitions')} partitions, XMODAL_TOPIC_PARTITIONS={settings.topic_partitions}")
        problems += _media_config_problems(media.where(), {k: str(v) for k, v in (spec.get("config") or {}).items()})
        for name in (settings.dlq_topic, settings.requests_topic, settings.replies_topic):
            if name not in topics:
                problems.append(f"deploy/k8s: no KafkaTopic for {name}")
    # compose: kafka-init creates the topics with deploy/create-topics.sh
    files = compose_files(root)
    for p in compose_processes(root):
        file, service_name = p.owner.split(" ", 1)
        compose = files[file]
        init_env = ((compose.get("services") or {}).get("kafka-init") or {}).get("environment") or {}
        settings = p.settings()
        if str(init_env.get("PARTITIONS")) != str(settings.topic_partitions) or init_env.get("PREFIX") != settings.topic_prefix:
            problems.append(
                f"{p.where}: kafka-init creates PREFIX={init_env.get('PREFIX')} PARTITIONS={init_env.get('PARTITIONS')}, "
                f"the service has XMODAL_TOPIC_PREFIX={settings.topic_prefix} XMODAL_TOPIC_PARTITIONS={settings.topic_partitions}"
            )
        service = compose["services"][service_name]
        replicas = (service.get("deploy") or {}).get("replicas", 1)
        if p.argv[1:2] == ["worker"] and replicas > settings.topic_partitions:
            problems.append(f"{p.where}: {replicas} replicas over {settings.topic_partitions} partitions")
    return problems


def _media_config_problems(where: str, config: Mapping[str, str]) -> list[str]:
    problems = []
    # "compact" alone: with "compact,delete" retention.ms would delete live items' only events.
    if config.get("cleanup.policy") != "compact":
        problems.append(f"{where}: the media topic needs cleanup.policy=compact (got {config.get('cleanup.policy')!r})")
    day_ms = 24 * 3600 * 1000
    if int(config.get("delete.retention.ms", "86400000")) < day_ms:  # Kafka's default is one day
        problems.append(f"{where}: delete.retention.ms under a day: a replay that takes longer misses deletes")
    return problems


def check_compose_files(root: Path) -> list[str]:
    """Build contexts, Dockerfiles, bind-mounted files, volumes and dependencies named by compose exist."""
    problems = []
    files = compose_files(root)
    if not files:
        return [f"{root}: no compose file"]
    for file, compose in files.items():
        if not compose.get("services"):
            problems.append(f"{file}: no services")
            continue
        for name, service in compose["services"].items():
            build = service.get("build")
            if isinstance(build, dict):
                context = (root / build.get("context", ".")).resolve()
                if not (context / build.get("dockerfile", "Dockerfile")).is_file():
                    problems.append(f"{file}: service {name} builds {build}, which does not exist")
            for volume in service.get("volumes") or []:
                source = str(volume).split(":")[0]
                if source.startswith(".") and not (root / source).exists():
                    problems.append(f"{file}: service {name} mounts {source}, which does not exist")
                elif not source.startswith((".", "/")) and source not in (compose.get("volumes") or {}):
                    problems.append(f"{file}: service {name} mounts volume {source!r}, not declared under volumes:")
            for dependency in service.get("depends_on") or []:
                if dependency not in compose["services"]:
                    problems.append(f"{file}: service {name} depends on {dependency!r}, which is not a service")
    return problems


def check_claims(root: Path) -> list[str]:
    """Every claim a pod mounts is a PersistentVolumeClaim here or one a StatefulSet's template makes."""
    docs = kubernetes_docs(root)
    claims = {d.name for d in docs if d.kind == "PersistentVolumeClaim"}
    for d in docs:
        if d.kind == "StatefulSet":
            spec = d.body.get("spec") or {}
            claims |= {f"{t}-{d.name}-{i}" for t in _claim_templates(spec) for i in range(int(spec.get("replicas", 1)))}
    problems = []
    for d in docs:
        for volume in _pod_spec(d).get("volumes") or []:
            claim = (volume.get("persistentVolumeClaim") or {}).get("claimName")
            if claim is not None and claim not in claims:
                problems.append(f"{d.where()}: mounts claim {claim!r}, which no manifest makes")
    return problems


def check_embedded_storage(processes: Iterable[Process]) -> list[str]:
    """The embedded index belongs to one process: workers and query services, which are scaled and
    run apart, need a Qdrant server (XMODAL_QDRANT_URL), or each would search an index of its own."""
    return [
        f"{p.where}: `xmodal {p.argv[1]}` on the embedded index (no XMODAL_QDRANT_URL): embedded storage is single-process"
        for p in processes
        if p.argv[1:2] in (["worker"], ["query-service"]) and p.settings().embedded_index
    ]


def check_reindex_workers(root: Path) -> list[str]:
    """`xmodal reindex` on a Qdrant server is one job of N workers: each gets `--job` with the same
    value in every replica (a literal, or `$(VAR)` of a variable its container defines, e.g. the Job's
    name); a Kubernetes Job of them completes when every worker has (completions = parallelism) and
    has no more pods than the media topic has partitions. On the embedded index one process writes:
    no Job runs more than one reindex pod."""
    problems = []
    # by file and name: both reindex Jobs are named by generateName "xmodal-reindex-"
    jobs = {d.where(): d for d in kubernetes_docs(root) if d.kind == "Job"}
    for p in all_processes(root):
        if p.argv[1:2] != ["reindex"] or p.problems:
            continue
        settings = p.settings()
        values = [p.argv[i + 1] for i, a in enumerate(p.argv[:-1]) if a == "--job"]
        server = not settings.embedded_index
        if server and not values:
            problems.append(f"{p.where}: `xmodal reindex` on a Qdrant server without --job: its workers share no job")
        for value in values:
            for name in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", value):
                if name not in p.env:
                    problems.append(f"{p.where}: --job {value}: $({name}) is no variable of the container")
        job = jobs.get(p.where.split(", container ")[0])
        if job is None:
            continue
        spec = job.body.get("spec") or {}
        parallelism, completions = int(spec.get("parallelism", 1)), int(spec.get("completions", 1))
        if not server and parallelism > 1:
            problems.append(f"{job.where()}: parallelism {parallelism} on the embedded index, which has one writer")
        if server and completions != parallelism:
            problems.append(f"{job.where()}: completions {completions} != parallelism {parallelism}: every worker exits 0")
        if server and parallelism > settings.topic_partitions:
            problems.append(
                f"{job.where()}: parallelism {parallelism} > XMODAL_TOPIC_PARTITIONS {settings.topic_partitions}"
            )
    return problems


def all_problems(root: Path) -> list[str]:
    processes = all_processes(root)
    return (
        check_kubernetes_objects(root)
        + check_kustomizations(root)
        + check_claims(root)
        + check_embedded_storage(all_processes(root))
        + [problem for p in processes for problem in p.problems]
        + check_commands(processes)
        + [problem for p in processes for problem in check_settings(p.env, p.where)]
        + check_config_objects(root)
        + check_autoscaling(root)
        + check_topics(root)
        + check_compose_files(root)
        + check_reindex_workers(root)
    )


# -- the tests ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", yaml_files(DEPLOY), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_yaml_file_parses(path: Path) -> None:
    docs = load_docs(path)
    assert docs, f"{path} holds no document"
    assert all(isinstance(d.body, dict) for d in docs)


def test_the_files_cover_what_the_deployment_needs() -> None:
    kinds = {d.kind for d in kubernetes_docs(DEPLOY)}
    assert {"Deployment", "Job", "ConfigMap", "Secret", "Service", "ScaledObject", "KafkaTopic", "StatefulSet"} <= kinds
    commands = {tuple(p.argv[1:2]) for p in all_processes(DEPLOY)}
    assert {("worker",), ("query-service",), ("serve",), ("reindex",)} <= commands
    entrypoint, cmd = image_entrypoint(DEPLOY)
    assert entrypoint == ["xmodal"] and cmd, "the image's ENTRYPOINT is the xmodal command"


def test_kubernetes_objects_are_well_formed() -> None:
    assert check_kubernetes_objects(DEPLOY) == []
    assert check_kustomizations(DEPLOY) == []
    assert check_claims(DEPLOY) == []


def test_every_command_is_a_real_xmodal_command() -> None:
    processes = all_processes(DEPLOY)
    assert len(processes) >= 8  # worker, query service, gateway, reindex: in Kubernetes and in compose
    assert check_commands(processes) == []


def test_every_xmodal_variable_is_a_real_setting() -> None:
    processes = all_processes(DEPLOY)
    problems = [problem for p in processes for problem in p.problems + check_settings(p.env, p.where)]
    assert problems + check_config_objects(DEPLOY) == []
    assert all(p.settings().kafka_bootstrap for p in processes), "every process uses a real Kafka"


def test_embedded_storage_is_never_shared_by_scaled_processes() -> None:
    assert check_embedded_storage(all_processes(DEPLOY)) == []


def test_reindex_workers_share_one_job_on_the_server() -> None:
    assert check_reindex_workers(DEPLOY) == []
    # The server's Job and compose service are there, and run several workers.
    server_reindex = [
        p for p in all_processes(DEPLOY) if p.argv[1:2] == ["reindex"] and not p.settings().embedded_index
    ]
    assert {p.owner.split()[0] for p in server_reindex} >= {"Job", "compose.yaml"}, [p.owner for p in server_reindex]


def test_workers_autoscale_on_their_group_up_to_the_partition_count() -> None:
    assert check_autoscaling(DEPLOY) == []


def test_topics_agree_with_the_settings() -> None:
    assert check_topics(DEPLOY) == []
    assert check_compose_files(DEPLOY) == []


def test_create_topics_script_makes_the_media_topic_the_source_of_truth(tmp_path: Path) -> None:
    """deploy/create-topics.sh, run against kafka-topics.sh/kafka-configs.sh stand-ins that record
    their argv: the real Kafka tools are not here, what the script asks of them is checked."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls"
    for tool in ("kafka-topics.sh", "kafka-configs.sh"):
        stub = bin_dir / tool
        # one line per call: the tool's name and its arguments, each ended by a NUL
        stub.write_text(f"#!/bin/sh\n{{ printf '%s\\0' \"${{0##*/}}\" \"$@\"; echo; }} >> '{log}'\n")
        stub.chmod(0o755)
    env = {
        "PATH": os.environ["PATH"], "KAFKA_BIN": str(bin_dir),
        "BOOTSTRAP": "k:9092", "PREFIX": "acme", "PARTITIONS": "24", "REPLICATION": "3",
    }
    subprocess.run(["bash", str(DEPLOY / "create-topics.sh")], env=env, check=True, timeout=60)
    calls = [line.split("\0")[:-1] for line in log.read_text().splitlines()]
    settings = load_settings({"XMODAL_TOPIC_PREFIX": "acme", "XMODAL_TOPIC_PARTITIONS": "24"})

    def create_call(topic: str) -> list[str]:
        return next(c for c in calls if c[0] == "kafka-topics.sh" and "--create" in c and _flag(c, "--topic") == topic)

    for topic in (settings.media_topic, settings.dlq_topic, settings.requests_topic, settings.replies_topic):
        call = create_call(topic)
        assert _flag(call, "--partitions") == "24" and _flag(call, "--replication-factor") == "3"
        assert "--if-not-exists" in call and _flag(call, "--bootstrap-server") == "k:9092"
    media = create_call(settings.media_topic)
    created = dict(c.split("=", 1) for c in _flags(media, "--config"))
    assert _media_config_problems("create-topics.sh", created) == []
    assert created["min.insync.replicas"] == "2"
    # an existing topic is brought to the same config
    alter = next(c for c in calls if c[0] == "kafka-configs.sh" and _flag(c, "--entity-name") == settings.media_topic)
    assert dict(kv.split("=", 1) for kv in _flag(alter, "--add-config").split(",")) == created
    dlq = dict(c.split("=", 1) for c in _flags(create_call(settings.dlq_topic), "--config"))
    assert dlq["cleanup.policy"] == "delete"


def _flags(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == flag]


def _flag(argv: list[str], flag: str) -> str:
    (value,) = _flags(argv, flag)
    return value


def _broken_copy(tmp_path: Path, path: str, old: str, new: str) -> Path:
    root = tmp_path / "deploy"
    shutil.copytree(DEPLOY, root)
    target = root / path
    text = target.read_text()
    assert old in text, f"{old!r} is not in {path} any more: update this test"
    target.write_text(text.replace(old, new, 1))
    return root


@pytest.mark.parametrize(
    ("path", "old", "new", "expected"),
    [
        # a misspelt variable in the ConfigMap, in a container's env, in compose
        ("k8s/config.yaml", "XMODAL_SESSION_TIMEOUT_MS:", "XMODAL_SESSION_TIMEOUT:", "unknown setting XMODAL_SESSION_TIMEOUT"),
        ("k8s/gateway.yaml", "name: XMODAL_HTTP_PORT,", "name: XMODAL_HTTP_PROT,", "unknown setting XMODAL_HTTP_PROT"),
        ("compose.yaml", "XMODAL_MEDIA_ROOTS: /media", "XMODAL_MEDIA_ROOT: /media", "unknown setting XMODAL_MEDIA_ROOT"),
        # a bad value, and a pass-through name librdkafka does not know
        ("k8s/config.yaml", 'XMODAL_BATCH_SIZE: "64"', 'XMODAL_BATCH_SIZE: "sixty-four"', "XMODAL_BATCH_SIZE=sixty-four"),
        ("k8s/config.yaml", "XMODAL_LOG_LEVEL: info", "XMODAL_KAFKA_SASL_USERNME: u", "sasl.usernme"),
        # commands that are not xmodal's
        ("k8s/worker.yaml", '["xmodal", "worker"]', '["xmodal", "wroker"]', "`xmodal wroker`: no such command"),
        ("compose.yaml", 'command: ["query-service"]', 'command: ["query-service", "--replicas", "2"]', "No such option"),
        # autoscaling past the partitions, on another group
        ("k8s/worker-autoscaling.yaml", "maxReplicaCount: 12", "maxReplicaCount: 24", "maxReplicaCount 24"),
        ("k8s/worker-autoscaling.yaml", "consumerGroup: xmodal-ingest", "consumerGroup: xmodal-workers", "consumerGroup"),
        # topics that disagree with the settings
        ("k8s/reference/kafka-strimzi.yaml", "cleanup.policy: compact", "cleanup.policy: delete", "cleanup.policy=compact"),
        ("compose.yaml", 'PARTITIONS: "12"', 'PARTITIONS: "6"', "PARTITIONS=6"),
        # wiring
        ("k8s/worker.yaml", "configMapRef: { name: xmodal-config }", "configMapRef: { name: xmodal-configs }", "no manifest defines"),
        ("k8s/gateway.yaml", "component: gateway }\n  ports:", "component: gateways }\n  ports:", "matches no pod"),
        ("k8s/kustomization.yaml", "  - gateway.yaml\n", "  - gateway.yml\n", "gateway.yml, which does not exist"),
        ("k8s/node/reindex-job.yaml", "claimName: data-xmodal-node-0", "claimName: data-xmodal-node", "which no manifest makes"),
        # server reindex workers that share no job, or do not all complete, or outnumber the partitions
        ("k8s/reindex-job.yaml", '"--job", "$(REINDEX_JOB)"', '"--restart"', "without --job"),
        ("compose.yaml", '"--job", "${REINDEX_JOB:-reindex-1}"', '"--drop-old"', "without --job"),
        ("k8s/reindex-job.yaml", '"$(REINDEX_JOB)"]', '"$(REINDEX_JOB_NAME)"]', "no variable of the container"),
        ("k8s/reindex-job.yaml", "completions: 4 ", "completions: 1 ", "completions 1 != parallelism 4"),
        ("k8s/reindex-job.yaml", "parallelism: 4", "parallelism: 16", "parallelism 16 > XMODAL_TOPIC_PARTITIONS 12"),
        ("k8s/node/reindex-job.yaml", "backoffLimit: 4", "parallelism: 2\n  backoffLimit: 4", "one writer"),
        # scaled processes on the embedded index
        ("compose.node.yaml", 'command: ["up"]', 'command: ["worker"]', "embedded storage is single-process"),
    ],
)
def test_the_checks_catch_broken_manifests(tmp_path: Path, path: str, old: str, new: str, expected: str) -> None:
    root = _broken_copy(tmp_path, path, old, new)
    try:
        problems = all_problems(root)
    except (yaml.YAMLError, ConfigError) as e:  # a broken file may not even load: that is caught too
        problems = [str(e)]
    new_problems = [p for p in problems if p not in _problems_of_the_real_files()]
    assert any(expected in p for p in new_problems), new_problems


@functools.cache
def _problems_of_the_real_files() -> tuple[str, ...]:
    return tuple(all_problems(DEPLOY))
