"""Every label key kegpackd reads or writes, in one place.

Labels are an interface: containers' owners set the ``kegpack.*`` options, kegpackd writes
the ``kegpack.source.*`` provenance and its markers on images (which a sweep, retention and
the next job read back, possibly from another version of kegpackd), and Docker Compose's
``com.docker.compose.*`` labels say which service a container is. A key spelled twice can
drift; spelled here once, a rename is one line and a grep.
"""

from __future__ import annotations

from typing import Final

# --- options a container's owner sets (README: Labels) ----------------------------------------
LABEL_PREFIX: Final = "kegpack."
LABEL_PACKAGE: Final = "kegpack.package"
LABEL_REPOSITORY: Final = "kegpack.repository"
LABEL_TAGS: Final = "kegpack.tags"
LABEL_PUSH: Final = "kegpack.push"
LABEL_PATHS: Final = "kegpack.paths"
LABEL_EXCLUDE: Final = "kegpack.exclude"
LABEL_PAUSE: Final = "kegpack.pause"
LABEL_ALLOW_FORCED_OWNERS: Final = "kegpack.allow-forced-owners"
LABEL_INCREMENTAL: Final = "kegpack.incremental"
LABEL_TRIGGER: Final = "kegpack.trigger"
LABEL_DELAY: Final = "kegpack.delay"
LABEL_QUIESCE: Final = "kegpack.quiesce"
LABEL_EXEC_BEFORE: Final = "kegpack.exec-before"
LABEL_EXEC_AFTER: Final = "kegpack.exec-after"
LABEL_EXEC_TIMEOUT: Final = "kegpack.exec-timeout"

# --- what kegpackd writes on the images it makes -----------------------------------------------
SOURCE_ID_LABEL: Final = "kegpack.source.id"
SOURCE_NAME_LABEL: Final = "kegpack.source.name"
SOURCE_IMAGE_LABEL: Final = "kegpack.source.image"
SOURCE_STARTED_AT_LABEL: Final = "kegpack.source.started_at"
# The Compose service an image was packaged from (Compose's own label is not copied).
ORIGINAL_SERVICE_LABEL: Final = "kegpack.source.service"
JOB_LABEL: Final = "kegpack.job"
# A job's temporary commit, named by job id: the sweep removes those of dead makers.
TEMP_LABEL: Final = "kegpack.temporary"
# On an image whose mounts' owners the engine forced (Podman): not an exact copy.
FORCED_OWNERS_LABEL: Final = "kegpack.owners"

# --- Docker Compose's, read from containers ------------------------------------------------------
COMPOSE_LABEL_PREFIX: Final = "com.docker.compose."
COMPOSE_SERVICE_LABEL: Final = "com.docker.compose.service"
PROJECT_LABEL: Final = "com.docker.compose.project"
DEPENDS_ON_LABEL: Final = "com.docker.compose.depends_on"
ONEOFF_LABEL: Final = "com.docker.compose.oneoff"
NUMBER_LABEL: Final = "com.docker.compose.container-number"
