"""The Compose file of a packaged project, from inspect data alone, and how package_project
gets there, on the fake engine with a stand-in for the pipeline (no real engine)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import anyio
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from kegpackd.compose.file import (
    PackagedService,
    compose_document,
    compose_duration,
    service_key,
)
from kegpackd.compose.project import package_project
from kegpackd.compose.render import compose_yaml
from kegpackd.config import Config, parse_config
from kegpackd.engine.models import ContainerInfo, Mount
from kegpackd.engine.port import EnginePort
from kegpackd.errors import InvalidValueError, PackagingError
from kegpackd.labels import ORIGINAL_SERVICE_LABEL
from kegpackd.packaging.jobs import JobRequest, JobResult, Progress
from kegpackd.packaging.runner import PipelineRunner
from tests.fakeengine import Changes, FakeEngine, FakePackage

PROJECT = "shop"
HOSTILE_VALUES = [
    "a: b",
    "x #not a comment",
    "*alias",
    "&anchor",
    "!tag",
    "line one\nline two",
    "trailing newline\n",
    "\n",
    "yes",
    "no",
    "on",
    "off",
    "null",
    "~",
    "true",
    "-1",
    "- item",
    "1e3",
    "0o17",
    "0x1F",
    "012",
    "1:30",
    ".inf",
    "2024-05-06",
    "",
    " ",
    "  leading and trailing  ",
    "tab\there",
    "quote ' and \" and \\",
    "{flow: map}",
    "[flow, seq]",
    "%percent",
    "@at",
    "`backtick",
    "|literal",
    ">folded",
    "---",
    "...",
    "?question",
    "é ünïcode ✓",
    "line\u2028separator\x85next",
    "\ufeffbom",
    "carriage\rreturn",
]


def container(
    service: str = "web",
    *,
    labels: Mapping[str, str] | None = None,
    config: Mapping[str, Any] | None = None,
    host: Mapping[str, Any] | None = None,
    mounts: tuple[Mount, ...] = (),
    networks: Mapping[str, Any] | None = None,
    name: str = "",
) -> ContainerInfo:
    return ContainerInfo(
        id=(service.encode().hex() * 64)[:64],
        name=name or f"{PROJECT}_{service}_1",
        image="base:1",
        image_id="sha256:" + "b" * 64,
        started_at="2024-05-06T07:08:09Z",
        finished_at="",
        health="",
        running=True,
        paused=False,
        auto_remove=False,
        labels={"com.docker.compose.project": PROJECT, "com.docker.compose.service": service}
        | dict(labels or {}),
        config=dict(config or {}),
        mounts=mounts,
        host_config=dict(host if host is not None else {"NetworkMode": "none"}),
        networks=dict(networks or {}),
    )


def packaged(
    info: ContainerInfo,
    packaged_paths: frozenset[str] = frozenset(),
    image_config: Mapping[str, Any] | None = None,
    reference: str = "",
) -> PackagedService:
    service = info.labels["com.docker.compose.service"]
    return PackagedService(
        info=info,
        reference=reference or f"registry.local/{PROJECT}-{service_key(service)}:t1",
        packaged=packaged_paths,
        image_config=dict(image_config or {}),
    )


def document(*services: PackagedService) -> dict[str, Any]:
    return compose_document(PROJECT, services)


def service(*services: PackagedService, key: str = "web") -> dict[str, Any]:
    body: dict[str, Any] = document(*services)["services"][key]
    return body


def unescape(value: Any) -> Any:
    """What Compose reads from a value: ``$$`` is one ``$``."""
    if isinstance(value, str):
        return value.replace("$$", "$")
    if isinstance(value, list):
        return [unescape(v) for v in value]
    if isinstance(value, dict):
        return {k: unescape(v) for k, v in value.items()}
    return value


def read_back(*services: PackagedService) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(compose_yaml(PROJECT, services))
    result: dict[str, Any] = unescape(loaded)
    return result


BIND_APP = Mount("bind", "/srv/app", "/home/me/shop/app", True)
SOCKET = Mount("bind", "/var/run/docker.sock", "/var/run/docker.sock", False)


# --- image and config ------------------------------------------------------------------------


def test_image_is_the_packaged_reference() -> None:
    """Each service runs the reference it was packaged as, digest and all."""
    reference = "registry.local/shop-web:t1@sha256:" + "a" * 64
    assert service(packaged(container(), reference=reference))["image"] == reference


def test_runtime_keys_that_differ_from_the_image_are_kept() -> None:
    """command, entrypoint, working_dir, user and stop_signal the container set are written."""
    config = {
        "Cmd": ["-c", "serve --port 80"],
        "Entrypoint": ["/bin/sh"],
        "WorkingDir": "/srv/app",
        "User": "1000:1000",
        "StopSignal": "SIGINT",
    }
    body = service(packaged(container(config=config)))
    assert body["command"] == ["-c", "serve --port 80"]
    assert body["entrypoint"] == ["/bin/sh"]
    assert body["working_dir"] == "/srv/app"
    assert body["user"] == "1000:1000"
    assert body["stop_signal"] == "SIGINT"


def test_runtime_keys_equal_to_the_image_defaults_are_left_out() -> None:
    """What the image itself says (its Cmd, Env, labels, ports) is not repeated."""
    image = {
        "Cmd": ["sh"],
        "Env": ["PATH=/bin"],
        "WorkingDir": "/",
        "Labels": {"maintainer": "me"},
        "ExposedPorts": {"80/tcp": {}},
    }
    config = dict(image) | {"Env": ["PATH=/bin", "MODE=prod"]}
    body = service(packaged(container(config=config), image_config=image))
    assert body == {"image": body["image"], "environment": ["MODE=prod"], "network_mode": "none"}


def test_no_key_is_written_empty() -> None:
    """A container that set nothing gets its image and its network mode, no empty keys."""
    info = container(config={"Cmd": [], "Entrypoint": None, "Env": [], "User": "", "Labels": {}})
    assert service(packaged(info)) == {
        "image": "registry.local/shop-web:t1",
        "network_mode": "none",
    }


def test_labels_drop_kegpack_and_compose_ones() -> None:
    """kegpack.* and com.docker.compose.* labels are not written; the others are."""
    labels = {
        "kegpack.package": "true",
        "kegpack.repository": "r/{service}",
        "com.docker.compose.config-hash": "abc",
        "com.docker.compose.depends_on": "",
        "team": "web",
    }
    assert service(packaged(container(labels=labels)))["labels"] == {"team": "web"}


def test_ports_from_port_bindings() -> None:
    """Published ports keep their host address, host port and protocol, in short syntax."""
    bindings = {
        "80/tcp": [{"HostIp": "", "HostPort": "8080"}],
        "443/tcp": [{"HostIp": "127.0.0.1", "HostPort": "8443"}],
        "53/udp": [{"HostIp": "0.0.0.0", "HostPort": "5353"}],
        "9000/tcp": [{"HostIp": "::1", "HostPort": "9000"}],
        "7000/tcp": [{"HostIp": "", "HostPort": ""}],
    }
    body = service(packaged(container(host={"NetworkMode": "none", "PortBindings": bindings})))
    assert body["ports"] == [
        "127.0.0.1:8443:443",
        "5353:53/udp",
        "7000",
        "8080:80",
        "[::1]:9000:9000",
    ]


def test_expose_leaves_out_published_and_image_ports() -> None:
    """expose lists the ports the container added, not the image's nor the published ones."""
    config: dict[str, Any] = {
        "ExposedPorts": {"80/tcp": {}, "8080/tcp": {}, "53/udp": {}, "9000/tcp": {}}
    }
    host = {"NetworkMode": "none", "PortBindings": {"9000/tcp": [{"HostPort": "9000"}]}}
    info = container(config=config, host=host)
    body = service(packaged(info, image_config={"ExposedPorts": {"80/tcp": {}}}))
    assert body["expose"] == ["53/udp", "8080"]


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ({"Name": "always"}, "always"),
        ({"Name": "unless-stopped"}, "unless-stopped"),
        ({"Name": "on-failure", "MaximumRetryCount": 3}, "on-failure:3"),
        ({"Name": "on-failure", "MaximumRetryCount": 0}, "on-failure"),
        ({"Name": "no"}, None),
        ({"Name": ""}, None),
    ],
)
def test_restart_from_restart_policy(policy: dict[str, Any], expected: str | None) -> None:
    """HostConfig.RestartPolicy becomes restart; "no" is Compose's default, left out."""
    body = service(packaged(container(host={"NetworkMode": "none", "RestartPolicy": policy})))
    assert body.get("restart") == expected


def test_tmpfs_from_host_config_and_tmpfs_mounts() -> None:
    """HostConfig.Tmpfs (with its options) and tmpfs mounts are tmpfs entries."""
    host = {"NetworkMode": "none", "Tmpfs": {"/run": "", "/cache": "size=64m"}}
    mounts = (Mount("tmpfs", "/scratch", "", True),)
    body = service(packaged(container(host=host, mounts=mounts)))
    assert body["tmpfs"] == ["/cache:size=64m", "/run", "/scratch"]
    assert "volumes" not in body


# --- healthcheck ------------------------------------------------------------------------------


def test_healthcheck_durations_become_compose_strings() -> None:
    """Docker's nanoseconds are written as Go durations; zero ones are left out."""
    check = {
        "Test": ["CMD-SHELL", "wget -q -O- localhost || exit 1"],
        "Interval": 30_000_000_000,
        "Timeout": 1_500_000_000,
        "StartPeriod": 90_000_000_000,
        "Retries": 3,
    }
    body = service(packaged(container(config={"Healthcheck": check})))
    assert body["healthcheck"] == {
        "test": ["CMD-SHELL", "wget -q -O- localhost || exit 1"],
        "interval": "30s",
        "timeout": "1s500ms",
        "start_period": "1m30s",
        "retries": 3,
    }


def test_healthcheck_none_is_disable() -> None:
    """A healthcheck of NONE (the image's one switched off) is disable: true."""
    image = {"Healthcheck": {"Test": ["CMD", "true"]}}
    info = container(config={"Healthcheck": {"Test": ["NONE"]}})
    assert service(packaged(info, image_config=image))["healthcheck"] == {"disable": True}


def test_healthcheck_equal_to_the_image_is_left_out() -> None:
    """The image's own healthcheck is not repeated."""
    check = {"Test": ["CMD", "true"], "Interval": 5_000_000_000}
    info = container(config={"Healthcheck": check})
    assert "healthcheck" not in service(packaged(info, image_config={"Healthcheck": check}))


@pytest.mark.parametrize(
    ("nanoseconds", "text"),
    [
        (1, "1ns"),
        (1_000, "1us"),
        (1_000_000, "1ms"),
        (2_000_000_000, "2s"),
        (3_600_000_000_000, "1h"),
        (5_400_000_000_000, "1h30m"),
        (3_723_004_005_006, "1h2m3s4ms5us6ns"),
        (0, "0s"),
    ],
)
def test_compose_duration_units(nanoseconds: int, text: str) -> None:
    """Durations use h, m, s, ms, us and ns, largest first, as Go and Compose 1.x parse."""
    assert compose_duration(nanoseconds) == text


# --- networks ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["none", "host"])
def test_network_mode_is_kept(mode: str) -> None:
    """network_mode none and host are written as they are."""
    assert service(packaged(container(host={"NetworkMode": mode})))["network_mode"] == mode


def test_network_mode_of_another_service_names_that_service() -> None:
    """container:<id> of a project container becomes service:<its key>."""
    db = container("db")
    web = container("web", host={"NetworkMode": f"container:{db.id}"})
    assert service(packaged(web), packaged(db))["network_mode"] == "service:db"


def test_only_the_default_network_writes_nothing() -> None:
    """On the project's default network only, Compose's own default does the same."""
    info = container(host={"NetworkMode": "shop_default"}, networks={"shop_default": {}})
    doc = document(packaged(info))
    assert "networks" not in doc
    assert "networks" not in doc["services"]["web"]
    assert "network_mode" not in doc["services"]["web"]


def test_project_networks_are_declared_and_external_ones_marked() -> None:
    """Project networks are declared plainly; one it did not make is external, by name."""
    short_id = container().id[:12]
    networks = {
        "shop_default": {"Aliases": ["web", short_id]},
        "shop_backend": {"Aliases": [short_id, "api"]},
        "shared-proxy": {},
    }
    info = container(host={"NetworkMode": "shop_backend"}, networks=networks)
    doc = document(packaged(info))
    assert doc["services"]["web"]["networks"] == {
        "backend": {"aliases": ["api"]},
        "default": None,
        "shared-proxy": None,
    }
    assert doc["networks"] == {
        "backend": None,
        "shared-proxy": {"name": "shared-proxy", "external": True},
    }


# --- mounts and volumes -----------------------------------------------------------------------


def test_packaged_mounts_are_dropped() -> None:
    """A mount whose content is in the image is not in the file."""
    body = service(packaged(container(mounts=(BIND_APP,)), frozenset({"/srv/app"})))
    assert "volumes" not in body


def test_a_mount_inside_a_packaged_one_is_dropped() -> None:
    """A mount nested in a packaged mount travelled with it."""
    inner = Mount("bind", "/srv/app/vendor", "/home/me/vendor", True)
    body = service(packaged(container(mounts=(BIND_APP, inner)), frozenset({"/srv/app"})))
    assert "volumes" not in body


def test_a_mount_that_was_not_packaged_is_kept() -> None:
    """A Docker socket bind stays, in long syntax, read-only as it was."""
    body = service(packaged(container(mounts=(BIND_APP, SOCKET)), frozenset({"/srv/app"})))
    assert body["volumes"] == [
        {
            "type": "bind",
            "source": "/var/run/docker.sock",
            "target": "/var/run/docker.sock",
            "read_only": True,
        }
    ]


def test_a_kept_mount_has_a_comment_saying_it_was_not_packaged() -> None:
    """The line before a kept mount is a comment naming it as not packaged."""
    info = container(mounts=(BIND_APP, SOCKET))
    lines = compose_yaml(PROJECT, [packaged(info, frozenset({"/srv/app"}))]).splitlines()
    entry = lines.index("    - type: bind")
    assert lines[entry - 1] == (
        "    # not packaged: bind mount of /var/run/docker.sock at /var/run/docker.sock"
    )


def test_a_hostile_mount_path_stays_inside_its_comment() -> None:
    """A newline in a kept mount's path is escaped in the comment; the file reads the same."""
    hostile = Mount("bind", "/x\n  evil: 1", "/src\nservices: {}", True)
    info = container(mounts=(hostile,))
    text = compose_yaml(PROJECT, [packaged(info)])
    assert "# not packaged: bind mount of /src\\nservices: {} at /x\\n  evil: 1" in text
    assert (
        read_back(packaged(info))["services"]["web"]["volumes"][0]["target"] == hostile.destination
    )


def test_packaged_named_volume_is_not_declared() -> None:
    """A named volume whose content is in the image is neither mounted nor declared."""
    data = Mount("volume", "/data", "/var/lib/docker/volumes/shop_data/_data", True, "shop_data")
    doc = document(packaged(container(mounts=(data,)), frozenset({"/data"})))
    assert "volumes" not in doc
    assert "volumes" not in doc["services"]["web"]


def test_unpackaged_project_volume_stays_declared_plainly() -> None:
    """A volume the project made and that was not packaged is declared for Compose to make."""
    data = Mount("volume", "/data", "/var/lib/docker/volumes/shop_data/_data", True, "shop_data")
    doc = document(packaged(container(mounts=(data,))))
    assert doc["services"]["web"]["volumes"] == [
        {"type": "volume", "source": "data", "target": "/data"}
    ]
    assert doc["volumes"] == {"data": None}


def test_unpackaged_volume_the_project_did_not_make_is_external() -> None:
    """A volume not named after the project is the environment's: external, by its name."""
    shared = Mount("volume", "/shared", "/var/lib/docker/volumes/media/_data", False, "media")
    doc = document(packaged(container(mounts=(shared,))))
    assert doc["services"]["web"]["volumes"] == [
        {"type": "volume", "source": "media", "target": "/shared", "read_only": True}
    ]
    assert doc["volumes"] == {"media": {"name": "media", "external": True}}


def test_volumes_of_one_key_but_two_names_get_two_keys() -> None:
    """shop_media (the project's) and media (external) do not share the key media."""
    own = Mount("volume", "/a", "/v/shop_media", True, "shop_media")
    other = Mount("volume", "/b", "/v/media", True, "media")
    doc = document(packaged(container(mounts=(own, other))))
    sources = [v["source"] for v in doc["services"]["web"]["volumes"]]
    assert sources[0] == "media"
    assert sources[1].startswith("media-")
    assert doc["volumes"][sources[1]] == {"name": "media", "external": True}


def test_unpackaged_anonymous_volume_stays_anonymous() -> None:
    """An anonymous volume that was not packaged is a target without a source."""
    anonymous = Mount("volume", "/cache", "/v/x/_data", True, "c" * 64)
    doc = document(packaged(container(mounts=(anonymous,))))
    assert doc["services"]["web"]["volumes"] == [{"type": "volume", "target": "/cache"}]
    assert "volumes" not in doc


# --- depends_on -------------------------------------------------------------------------------


def test_depends_on_from_the_compose_v2_label() -> None:
    """svc:condition:restart entries become depends_on with their conditions."""
    label = {"com.docker.compose.depends_on": "db:service_healthy:false,cache:service_started:true"}
    web = container(labels=label)
    body = service(packaged(web), packaged(container("db")), packaged(container("cache")))
    assert body["depends_on"] == {
        "db": {"condition": "service_healthy"},
        "cache": {"condition": "service_started", "restart": True},
    }


def test_depends_on_a_service_not_in_the_file_is_dropped() -> None:
    """A dependency on a service left out (it failed, --partial) is not written."""
    web = container(labels={"com.docker.compose.depends_on": "db:service_started:false"})
    assert "depends_on" not in service(packaged(web))


def test_the_dependency_compose_v2_adds_for_a_shared_network_is_not_written() -> None:
    """network_mode service:db makes v2 label db:service_started:true; v2 adds it again."""
    db = container("db")
    label = {"com.docker.compose.depends_on": "db:service_started:true"}
    web = container("web", labels=label, host={"NetworkMode": f"container:{db.id}"})
    body = service(packaged(web), packaged(db))
    assert body["network_mode"] == "service:db"
    assert "depends_on" not in body


def test_a_restart_dependency_on_a_service_whose_network_is_not_shared_is_written() -> None:
    """Only the shared network's own service is implied; another keeps restart: true."""
    db, cache = container("db"), container("cache")
    label = {"com.docker.compose.depends_on": "db:service_started:true,cache:service_started:true"}
    web = container("web", labels=label, host={"NetworkMode": f"container:{db.id}"})
    body = service(packaged(web), packaged(db), packaged(cache))
    assert body["depends_on"] == {"cache": {"condition": "service_started", "restart": True}}


def test_depends_on_with_an_unknown_condition_is_refused() -> None:
    """A condition Compose does not know is an error naming the label and the container."""
    web = container(labels={"com.docker.compose.depends_on": "db:service_ready:false"})
    with pytest.raises(InvalidValueError, match=r"^label com\.docker\.compose\.depends_on of"):
        document(packaged(web), packaged(container("db")))


# --- service names ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["my web", "web/1", "wéb", "a: b", "$x", "\n", " "])
def test_an_invalid_service_name_gets_a_valid_key_and_keeps_the_name_in_a_label(
    name: str,
) -> None:
    """A name Compose refuses becomes a key it accepts; the name stays in a label, exactly."""
    doc = read_back(packaged(container(name)))
    (key,) = doc["services"]
    assert key == service_key(name)
    assert key != name
    assert all(c.isascii() and (c.isalnum() or c in "._-") for c in key)
    assert doc["services"][key]["labels"][ORIGINAL_SERVICE_LABEL] == name


def test_invalid_service_names_that_read_alike_get_distinct_keys() -> None:
    """'my web' and 'my/web' both read my_web, and still get two keys."""
    assert service_key("my web") != service_key("my/web")


def test_a_valid_service_name_is_its_own_key() -> None:
    """A name Compose accepts is used as it is, with no label added."""
    body = service(packaged(container("web.1_a-b")), key="web.1_a-b")
    assert "labels" not in body


def test_two_containers_of_one_service_are_refused() -> None:
    """Two containers of one service cannot share its key: an error names the service."""
    one, two = container(), dataclasses.replace(container(), id="f" * 64, name="shop_web_2")
    with pytest.raises(InvalidValueError, match="'web'"):
        document(packaged(one), packaged(two))


def test_a_container_without_a_service_label_is_refused() -> None:
    """A container Compose did not start has no service: the error names the container."""
    info = dataclasses.replace(container(), labels={"com.docker.compose.project": PROJECT})
    with pytest.raises(PackagingError, match=r"shop_web_1 has no com\.docker\.compose\.service"):
        compose_document(PROJECT, [PackagedService(info, "r/x:1", frozenset())])


# --- hostile values ---------------------------------------------------------------------------


@pytest.mark.parametrize("value", HOSTILE_VALUES)
def test_hostile_environment_and_label_values_read_back_exactly(value: str) -> None:
    """YAML specials in environment and labels are written so they read back the same."""
    env = [f"V={value}", f"{value}=x"]
    info = container(config={"Env": env}, labels={"note": value, f"k{value}": "v"})
    body = read_back(packaged(info))["services"]["web"]
    assert body["environment"] == env
    assert body["labels"] == {"note": value, f"k{value}": "v"}


@given(st.text(), st.lists(st.text(), max_size=4))
def test_any_text_in_environment_and_command_reads_back_exactly(
    value: str, command: list[str]
) -> None:
    """Whatever the strings, the file loads back to exactly what the container had."""
    info = container(config={"Env": [f"V={value}"], "Cmd": [*command, value]})
    body = read_back(packaged(info))["services"]["web"]
    assert body["environment"] == [f"V={value}"]
    assert body["command"] == [*command, value]


def test_strings_that_yaml_12_would_read_as_numbers_are_quoted() -> None:
    """1e3, 0o17 and the like are quoted, so Compose v2 (YAML 1.2) reads strings too."""
    info = container(labels={"a": "1e3", "b": "0o17", "c": ".inf", "d": "web"})
    text = compose_yaml(PROJECT, [packaged(info)])
    assert 'a: "1e3"' in text
    assert 'b: "0o17"' in text
    assert 'c: ".inf"' in text
    assert "d: web" in text


def test_the_file_is_ascii() -> None:
    """Non-ASCII text is escaped, so no reader's idea of a line break can differ."""
    info = container(config={"Env": ["V=é\u2028\x85"]}, labels={"ü": "✓"})
    assert compose_yaml(PROJECT, [packaged(info)]).isascii()


# --- interpolation ----------------------------------------------------------------------------


def test_dollar_signs_are_doubled_everywhere() -> None:
    """Compose interpolates $VAR in every value, so each $ is written as $$."""
    info = container(
        config={"Env": ["PRICE=$5", "REF=${HOME}"], "Cmd": ["sh", "-c", "echo $PATH"]},
        labels={"cost": "$$"},
        mounts=(Mount("bind", "/data", "/srv/$data", True),),
    )
    body = compose_document(PROJECT, [packaged(info)])["services"]["web"]
    assert body["environment"] == ["PRICE=$$5", "REF=$${HOME}"]
    assert body["command"] == ["sh", "-c", "echo $$PATH"]
    assert body["labels"] == {"cost": "$$$$"}
    assert body["volumes"][0]["source"] == "/srv/$$data"


def test_doubled_dollars_read_back_as_the_original() -> None:
    """Read as Compose reads them, the doubled dollars give the container's values."""
    env = ["A=$", "B=$$", "C=${X:-y}", "D=a$b$"]
    assert (
        read_back(packaged(container(config={"Env": env})))["services"]["web"]["environment"] == env
    )


# --- the file ---------------------------------------------------------------------------------


def test_the_file_names_the_services_left_out() -> None:
    """With --partial, a header comment names the services that are not in the file."""
    text = compose_yaml(PROJECT, [packaged(container())], left_out=["worker", "db"])
    assert "# Left out, as their packaging failed: db, worker." in text.splitlines()


def test_the_file_loads_as_the_document() -> None:
    """compose_yaml writes exactly compose_document, comments aside."""
    info = container(mounts=(BIND_APP, SOCKET), config={"Env": ["A=1"]})
    services = [packaged(info, frozenset({"/srv/app"}))]
    assert yaml.safe_load(compose_yaml(PROJECT, services)) == compose_document(PROJECT, services)


# --- package_project, with a stand-in pipeline ------------------------------------------------


class NamingPackage(FakePackage):
    """The pipeline's stand-in: names an image after the container, reports its bind mounts
    and volumes copied; fails those listed."""

    failing: frozenset[str] = frozenset()

    async def __call__(
        self,
        engine: EnginePort,
        config: Config,
        request: JobRequest,
        progress: Progress | None = None,
        *,
        docker_config_dir: object = None,
        result: JobResult | None = None,
    ) -> JobResult:
        done = await super().__call__(engine, config, request, progress, result=result)
        if request.container in self.failing:
            raise PackagingError(f"container {request.container[:12]} could not be packaged")
        done.references.append(f"registry.local/{request.container[:12]}:t1")
        # As the pipeline reports it: every bind mount and volume was copied.
        info = await engine.inspect_container(request.container)
        done.copied = [m.destination for m in info.mounts if m.type in ("bind", "volume")]
        return done


@pytest.fixture
def pipeline(changes: Changes) -> NamingPackage:
    return NamingPackage(changes)


def compose_container(
    fake: FakeEngine, service: str, number: int = 1, labels: Mapping[str, str] | None = None
) -> tuple[str, str]:
    """A container of project shop with one bind mount; its id and name."""
    image = fake.add_image(repo_tags=["base:1"])
    container = fake.add_container(
        f"shop_{service}_{number}",
        {
            "com.docker.compose.project": PROJECT,
            "com.docker.compose.service": service,
            "com.docker.compose.container-number": str(number),
            "com.docker.compose.oneoff": "False",
        }
        | dict(labels or {}),
        mounts=(Mount("bind", "/srv/app", f"/home/me/{service}", True),),
        image_id=image.id,
    )
    return container.id, container.name


async def test_project_packages_each_service_and_writes_its_file(
    fake: FakeEngine, pipeline: NamingPackage
) -> None:
    """Every service is packaged with trigger project; the file runs each on its image."""
    web, _ = compose_container(fake, "web")
    db, _ = compose_container(fake, "db")
    result = await package_project(
        fake, Config(), PROJECT, partial=False, runner=PipelineRunner(pipeline)
    )
    assert result.ok
    assert {r.trigger for r in pipeline.started} == {"project"}
    assert result.compose is not None
    services = yaml.safe_load(result.compose)["services"]
    assert services["web"]["image"] == f"registry.local/{web[:12]}:t1"
    assert services["db"]["image"] == f"registry.local/{db[:12]}:t1"
    assert "volumes" not in services["web"]


async def test_project_skips_one_off_run_containers(
    fake: FakeEngine, pipeline: NamingPackage
) -> None:
    """A `docker-compose run` container (oneoff=True) is not packaged."""
    web, _ = compose_container(fake, "web")
    compose_container(fake, "web-run", labels={"com.docker.compose.oneoff": "True"})
    result = await package_project(
        fake, Config(), PROJECT, partial=False, runner=PipelineRunner(pipeline)
    )
    assert pipeline.containers() == [web]
    assert list(result.results) == ["web"]


async def test_project_packages_the_lowest_numbered_replica(
    fake: FakeEngine, pipeline: NamingPackage
) -> None:
    """Of a scaled service, container number 1 is packaged and the others are named."""
    _, second = compose_container(fake, "web", 2)
    first, _ = compose_container(fake, "web", 1)
    result = await package_project(
        fake, Config(), PROJECT, partial=False, runner=PipelineRunner(pipeline)
    )
    assert pipeline.containers() == [first]
    assert result.replicas == [second]


async def test_project_runs_jobs_within_the_concurrency(fake: FakeEngine, changes: Changes) -> None:
    """No more than packaging.concurrency services are packaged at once."""
    gated = NamingPackage(changes, block=True)
    for service in ("a", "b", "c", "d", "e"):
        compose_container(fake, service)
    config = parse_config({"packaging": {"concurrency": 2}})
    async with anyio.create_task_group() as group:
        group.start_soon(
            lambda: package_project(
                fake, config, PROJECT, partial=False, runner=PipelineRunner(gated)
            )
        )
        with anyio.fail_after(10):
            await changes.wait_until(lambda: gated.running == 2)
        await anyio.wait_all_tasks_blocked()
        assert len(gated.started) == 2
        gated.gate.set()
    assert gated.most_running == 2
    assert len(gated.finished) == 5


async def test_project_failure_without_partial_writes_no_file(
    fake: FakeEngine, pipeline: NamingPackage
) -> None:
    """One service failing: the others finish, and there is no file."""
    compose_container(fake, "web")
    bad, _ = compose_container(fake, "bad")
    pipeline.failing = frozenset({bad})
    result = await package_project(
        fake, Config(), PROJECT, partial=False, runner=PipelineRunner(pipeline)
    )
    assert list(result.results) == ["web"]
    assert list(result.errors) == ["bad"]
    assert result.compose is None
    assert not result.ok


async def test_project_failure_with_partial_leaves_the_service_out(
    fake: FakeEngine, pipeline: NamingPackage
) -> None:
    """With partial, the file has the other services, and a dependency on the failed one
    is dropped."""
    compose_container(fake, "web", labels={"com.docker.compose.depends_on": "bad:service_started"})
    bad, _ = compose_container(fake, "bad")
    pipeline.failing = frozenset({bad})
    result = await package_project(
        fake, Config(), PROJECT, partial=True, runner=PipelineRunner(pipeline)
    )
    assert result.compose is not None
    services = yaml.safe_load(result.compose)["services"]
    assert list(services) == ["web"]
    assert "depends_on" not in services["web"]


async def test_project_container_without_a_service_label_is_an_error(
    fake: FakeEngine, pipeline: NamingPackage
) -> None:
    """A container with the project's label but no service is named in the errors."""
    compose_container(fake, "web")
    fake.add_container("stray", {"com.docker.compose.project": PROJECT})
    result = await package_project(
        fake, Config(), PROJECT, partial=False, runner=PipelineRunner(pipeline)
    )
    assert result.errors == {
        "container stray": "container stray has the label com.docker.compose.project=shop"
        " but no com.docker.compose.service label"
    }
    assert result.compose is None


async def test_project_without_containers_is_an_error_naming_it(
    fake: FakeEngine, pipeline: NamingPackage
) -> None:
    """A project no container belongs to is an error that names it."""
    compose_container(fake, "web")
    with pytest.raises(PackagingError, match="Compose project 'other' has no containers"):
        await package_project(
            fake, Config(), "other", partial=False, runner=PipelineRunner(pipeline)
        )
