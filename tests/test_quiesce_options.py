"""The quiesce mode and the commands around the copy, as options: spellings, precedence,
conflicts, and the values refused (each error naming where the value came from)."""

from __future__ import annotations

import pytest

from kegpackd.config import parse_config
from kegpackd.errors import ConfigError, InvalidValueError
from kegpackd.labels import (
    LABEL_EXEC_AFTER,
    LABEL_EXEC_BEFORE,
    LABEL_EXEC_TIMEOUT,
    LABEL_PAUSE,
    LABEL_QUIESCE,
)
from kegpackd.packaging.options import Overrides, resolve_options


def test_label_quiesce_stop_gives_stop_mode_named_by_its_label() -> None:
    """kegpack.quiesce=stop: stop mode, from the label."""
    options = resolve_options({LABEL_QUIESCE: "stop"}, parse_config({}))
    assert (options.quiesce, options.quiesce_source) == ("stop", f"label {LABEL_QUIESCE}")


def test_label_pause_true_is_quiesce_pause() -> None:
    """kegpack.pause=true keeps working, as a spelling of kegpack.quiesce=pause."""
    options = resolve_options({LABEL_PAUSE: "true"}, parse_config({}))
    assert (options.quiesce, options.pause) == ("pause", True)


def test_label_pause_and_quiesce_that_disagree_are_an_error_naming_both() -> None:
    """kegpack.pause=true with kegpack.quiesce=stop: refused, both labels named."""
    with pytest.raises(InvalidValueError, match=r"labels kegpack\.quiesce and kegpack\.pause"):
        resolve_options({LABEL_PAUSE: "true", LABEL_QUIESCE: "stop"}, parse_config({}))


def test_label_pause_false_agrees_with_quiesce_stop() -> None:
    """kegpack.pause=false says only "no pause": with kegpack.quiesce=stop, stop mode."""
    options = resolve_options({LABEL_PAUSE: "false", LABEL_QUIESCE: "stop"}, parse_config({}))
    assert options.quiesce == "stop"


def test_config_pause_and_quiesce_that_disagree_are_an_error_naming_both() -> None:
    """packaging.pause = true with packaging.quiesce = "stop": the config is refused."""
    with pytest.raises(ConfigError, match=r"packaging\.quiesce and packaging\.pause"):
        parse_config({"packaging": {"pause": True, "quiesce": "stop"}})


def test_config_quiesce_pause_is_seen_as_pause_too() -> None:
    """packaging.quiesce = "pause" and packaging.pause = true mean the same."""
    pack = parse_config({"packaging": {"quiesce": "pause"}}).packaging
    assert (pack.quiesce, pack.pause) == ("pause", True)


def test_config_quiesce_of_an_unknown_mode_is_refused() -> None:
    """packaging.quiesce = "freeze": an error that lists the modes."""
    with pytest.raises(ConfigError, match=r"packaging\.quiesce.*none, pause, stop"):
        parse_config({"packaging": {"quiesce": "freeze"}})


def test_flag_quiesce_wins_over_the_label_and_the_label_over_the_config() -> None:
    """--quiesce beats kegpack.quiesce, which beats packaging.quiesce."""
    cfg = parse_config({"packaging": {"quiesce": "pause"}})
    labelled = resolve_options({LABEL_QUIESCE: "stop"}, cfg)
    flagged = resolve_options({LABEL_QUIESCE: "stop"}, cfg, Overrides(quiesce="none", origin="--"))
    assert (labelled.quiesce, flagged.quiesce, flagged.quiesce_source) == (
        "stop",
        "none",
        "--quiesce",
    )


def test_exec_before_label_is_split_as_a_shell_splits_words() -> None:
    """A label's command line becomes argv by shlex rules: quotes group, no shell runs it."""
    label = "sh -c 'redis-cli SAVE && echo \"a b\"'"
    options = resolve_options({LABEL_EXEC_BEFORE: label}, parse_config({}))
    assert options.exec_before == ("sh", "-c", 'redis-cli SAVE && echo "a b"')
    assert options.exec_before_source == f"label {LABEL_EXEC_BEFORE}"


def test_a_blank_exec_after_label_turns_off_the_configured_command() -> None:
    """kegpack.exec-after="" overrides packaging.exec_after with no command."""
    cfg = parse_config({"packaging": {"exec_after": "touch /x"}})
    assert cfg.packaging.exec_after == ("touch", "/x")
    assert resolve_options({LABEL_EXEC_AFTER: " "}, cfg).exec_after == ()


def test_an_exec_label_with_an_open_quote_is_refused_naming_the_label() -> None:
    """An unbalanced quote cannot be split: an error naming kegpack.exec-before."""
    with pytest.raises(InvalidValueError, match=r"label kegpack\.exec-before.*not a command"):
        resolve_options({LABEL_EXEC_BEFORE: "sh -c 'oops"}, parse_config({}))


def test_the_exec_before_flag_wins_over_the_label() -> None:
    """--exec-before replaces the label's command."""
    options = resolve_options(
        {LABEL_EXEC_BEFORE: "false"}, parse_config({}), Overrides(exec_before="true", origin="--")
    )
    assert (options.exec_before, options.exec_before_source) == (("true",), "--exec-before")


def test_exec_timeout_of_a_label_is_read_and_named() -> None:
    """kegpack.exec-timeout=2 gives 2 s, from the label; without it, 300 s from the config."""
    labelled = resolve_options({LABEL_EXEC_TIMEOUT: "2"}, parse_config({}))
    default = resolve_options({}, parse_config({}))
    assert (labelled.exec_timeout, labelled.exec_timeout_source) == (
        2.0,
        f"label {LABEL_EXEC_TIMEOUT}",
    )
    assert (default.exec_timeout, default.exec_timeout_source) == (
        300.0,
        "config packaging.exec_timeout",
    )


def test_an_exec_timeout_of_zero_is_refused_in_a_label_and_in_the_config() -> None:
    """A limit of 0 would run nothing: refused wherever it is written."""
    with pytest.raises(InvalidValueError, match=r"label kegpack\.exec-timeout.*positive"):
        resolve_options({LABEL_EXEC_TIMEOUT: "0"}, parse_config({}))
    with pytest.raises(ConfigError, match=r"packaging\.exec_timeout.*positive"):
        parse_config({"packaging": {"exec_timeout": 0}})
