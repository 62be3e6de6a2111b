"""The Compose file as YAML text: every string that is not plainly a word quoted, no
aliases, a comment before each mount that was not packaged, and a read-back check.

Apart from ``file`` (which builds the document as data) because it changes with PyYAML's
node and dumper API, not with what Compose means.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import yaml

from kegpackd.compose.file import PLAIN_STRING, Note, PackagedService, document_and_notes
from kegpackd.errors import PackagingError


def compose_yaml(
    project: str, services: Sequence[PackagedService], *, left_out: Iterable[str] = ()
) -> str:
    """The Compose file as YAML, with a comment on each mount that was not packaged.

    ``left_out`` names the services that failed and are not in the file (``--partial``).
    """
    document, notes = document_and_notes(project, services)
    text = yaml.dump(
        document, Dumper=_Dumper, sort_keys=False, default_flow_style=False, allow_unicode=False
    )
    text = _with_notes(text, notes)
    header = [f"Written by kegpackd from the Compose project {project}: every service runs"]
    header.append("its packaged image, with the content of its packaged mounts inside.")
    skipped = sorted(left_out)
    if skipped:
        header.append("Left out, as their packaging failed: " + ", ".join(skipped) + ".")
    text = "".join(f"# {_comment_text(line)}\n" for line in header) + text
    if yaml.safe_load(text) != document:
        raise PackagingError(f"the Compose file of project {project} does not read back as written")
    return text


class _Dumper(yaml.SafeDumper):
    """PyYAML's safe dumper: no aliases, and every string not plainly a word quoted."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = None if PLAIN_STRING.fullmatch(value) else '"'
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _represent_str)


def _comment_text(text: str) -> str:
    """One comment line's text: anything but printable ASCII escaped, so nothing ends it."""
    return "".join(c if " " <= c <= "~" else c.encode("unicode_escape").decode() for c in text)


def _with_notes(text: str, notes: Sequence[Note]) -> str:
    """``text`` with each note as a comment line before its volume, found by parsing ``text``."""
    if not notes:
        return text
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    inserts: list[tuple[int, str]] = []
    for note in notes:
        item = _volume_node(root, note.service, note.index)
        start = item.start_mark.index
        line_start = text.rfind("\n", 0, start) + 1
        lead = text[line_start:start]
        if lead.strip(" -"):
            raise PackagingError(f"volume {note.index} of service {note.service} is not a line")
        indent = lead[: len(lead) - len(lead.lstrip(" "))]
        inserts.append((line_start, f"{indent}# {_comment_text(note.text)}\n"))
    for position, line in sorted(inserts, reverse=True):
        text = text[:position] + line + text[position:]
    return text


def _volume_node(root: yaml.Node | None, service: str, index: int) -> yaml.Node:
    node = _child(_child(_child(root, "services"), service), "volumes")
    if not isinstance(node, yaml.SequenceNode) or index >= len(node.value):
        raise PackagingError(f"service {service} has no volume {index} in its Compose file")
    item: yaml.Node = node.value[index]
    return item


def _child(node: yaml.Node | None, key: str) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if key_node.value == key:
                child: yaml.Node = value_node
                return child
    return None
