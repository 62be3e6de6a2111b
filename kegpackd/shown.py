"""How text from outside (labels, mount paths, engine answers) is shown in errors and logs.

A container owner chooses label values and mount destinations: shown raw, a newline
forges a log line or a stdout line that scripts parse, an ESC drives the reader's
terminal, and a 4 MB value is copied into every error, record, log line and webhook body
that names it. So every such value is cut to a length and its control characters escaped.
No kegpackd imports: errors, values, logs and the CLI all use it.
"""

from __future__ import annotations

# How much of one outside value an error or record echoes.
VALUE_LIMIT = 200
# How much of a whole message (which may name several values) is kept.
MESSAGE_LIMIT = 1000


def cut(text: str, limit: int) -> str:
    """``text``, or its first ``limit`` characters, an ellipsis and the original length."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text)} characters)"


def cut_middle(text: str, limit: int) -> str:
    """``text``, or its head and its tail (a message's reason comes last) around an
    ellipsis and the original length, ``limit`` characters of it in all."""
    if len(text) <= limit:
        return text
    tail = limit // 4
    return f"{text[: limit - tail]}… ({len(text)} characters) …{text[-tail:]}"


def one_line(text: str) -> str:
    """``text`` with every non-printable character (newline, ESC, C1, bidi controls)
    written as its Python escape, so that it stays one inert line on any terminal."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def shown(text: str, limit: int = VALUE_LIMIT) -> str:
    """An outside value for a message: cut, then escaped."""
    return one_line(cut(text, limit))


def quoted(value: object, limit: int = VALUE_LIMIT) -> str:
    """``repr(value)``, cut to ``limit`` characters (repr already escapes a string's
    control characters); repr() of an integer of thousands of digits raises, hence the
    fallback."""
    if isinstance(value, str):
        shown_text = repr(value[:limit])
        return shown_text if len(value) <= limit else f"{shown_text}… ({len(value)} characters)"
    try:
        return one_line(cut(repr(value), limit))
    except ValueError:
        return f"<{type(value).__name__} too long to show>"
