"""Chat templates come from models and artifacts edgeft did not write: render them bounded.

transformers and llama-cpp-python render chat templates in Jinja's sandbox, which stops attribute
tricks but not size or time: `{{ 'x' * 200000000 }}` builds a 200 MB prompt (92 s and 10.8 GB
in `edgeft run` once tokenised). Before a runtime renders a conversation, `guard` renders the
same conversation once in a sandbox that bounds every value an operator, filter, method call or
`~` join may build (`MAX_CHARS`), the rendered output, and the wall time (`MAX_SECONDS`, where
the process can set an alarm), and raises `TemplateRefused` (an input error) instead. The same
template then renders the same conversation in the runtime within those bounds.

A template that raises an error of its own (`raise_exception('Conversation roles must
alternate')`) or that the sandbox blocks is refused the same way, with the template's words.
"""

from __future__ import annotations

import contextlib
import functools
import re
import signal
import threading
from collections.abc import Iterator
from typing import Any

from edgeft.core.errors import InputError

# A rendered prompt of ~1M tokens: far beyond any context edgeft trains or verifies.
MAX_CHARS = 4_000_000
MAX_SECONDS = 10.0
# `"%0100000000d"|format(1)` or `'{:>9999999}'.format(x)`: a field width that big is an attack.
_WIDE_FORMAT = re.compile(r"\d{7,}")

_TURNS = [
    {"role": "user", "content": "Hello"},
    {"role": "assistant", "content": "Hi."},
    {"role": "user", "content": "Thanks"},
]
# With and without a system turn: many templates refuse one of the two.
SAMPLES = ([{"role": "system", "content": "You are helpful."}, *_TURNS], _TURNS)


class TemplateRefused(InputError):
    """A chat template that would not render within bounds, or refused the conversation."""


def _sized(value: Any, what: str) -> Any:
    if isinstance(value, (str, bytes, list, tuple, dict)) and len(value) > MAX_CHARS:
        from jinja2.exceptions import SecurityError

        raise SecurityError(f"{what} makes a value of {len(value):,} items (limit {MAX_CHARS:,})")
    return value


def _check_args(args: tuple, kwargs: dict, what: str, value: Any = None) -> None:
    """Refuse a size argument (width, count) over the limit, or a format string with a huge width."""
    from jinja2.exceptions import SecurityError

    for a in (*args, *kwargs.values()):
        if isinstance(a, int) and not isinstance(a, bool) and abs(a) > MAX_CHARS:
            raise SecurityError(f"{what} with argument {a:,} (limit {MAX_CHARS:,})")
    for a in (value, *args):
        wide = _WIDE_FORMAT.search(a) if isinstance(a, str) and ("%" in a or "{" in a) else None
        if wide:
            raise SecurityError(f"{what} with a field width of {wide.group()} characters")


def _bounded_filter(name: str, f: Any) -> Any:
    @functools.wraps(f)  # keeps jinja's pass_context / pass_environment marks
    def bounded(*args: Any, **kwargs: Any) -> Any:
        _check_args(args[1:], kwargs, f"the |{name} filter", args[0] if args else None)
        return _sized(f(*args, **kwargs), f"the |{name} filter")

    return bounded


def _bounded_join(original: Any) -> Any:
    def join(seq: Any) -> Any:
        parts = [str(x) for x in seq]
        if sum(map(len, parts)) > MAX_CHARS:
            _sized("x" * (MAX_CHARS + 1), "joining strings with ~")
        return original(parts)

    return join


@functools.lru_cache(maxsize=1)
def _environment() -> Any:
    from jinja2 import nodes
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Generation(Extension):
        """transformers' `{% generation %}` marks assistant text for training; here it only renders."""

        tags = {"generation"}

        def parse(self, parser: Any) -> Any:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.Scope(body).set_lineno(lineno)

    class Bounded(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset({"*", "**", "+"})

        def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
            from jinja2.exceptions import SecurityError

            if operator == "**" and isinstance(right, (int, float)) and abs(right) > 64:
                raise SecurityError(f"raising to the power {right}")
            if operator == "*":
                for seq, n in ((left, right), (right, left)):
                    if (
                        isinstance(seq, (str, list, tuple))
                        and isinstance(n, int)
                        and len(seq) * n > MAX_CHARS
                    ):
                        raise SecurityError(
                            f"repeating a value {n:,} times makes {len(seq) * n:,} items "
                            f"(limit {MAX_CHARS:,})"
                        )
            return _sized(super().call_binop(context, operator, left, right), f"the {operator!r} operator")

        def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
            name = getattr(__obj, "__name__", "a function")
            _check_args(args, kwargs, f"calling {name}", getattr(__obj, "__self__", None))
            return _sized(super().call(__context, __obj, *args, **kwargs), f"calling {name}")

    env = Bounded(trim_blocks=True, lstrip_blocks=True, extensions=[Generation, loopcontrols])
    env.filters = {name: _bounded_filter(name, f) for name, f in env.filters.items()}

    def raise_exception(message: str) -> None:
        from jinja2.exceptions import TemplateError

        raise TemplateError(message)

    def strftime_now(fmt: str) -> str:
        import datetime

        return datetime.datetime.now().strftime(fmt)

    env.globals.update(raise_exception=raise_exception, strftime_now=strftime_now)
    return env


@functools.lru_cache(maxsize=32)
def _compiled(template: str) -> Any:
    compiled = _environment().from_string(template)
    # `~` compiles to jinja2.runtime's str_join/markup_join, looked up in the template's module
    # namespace: bound them there (no other way to intercept the operator).
    space = compiled.root_render_func.__globals__
    for name in ("str_join", "markup_join"):
        if name in space:
            space[name] = _bounded_join(space[name])
    return compiled


class _Timeout(Exception):
    pass


@contextlib.contextmanager
def _deadline(seconds: float) -> Iterator[None]:
    """SIGALRM after `seconds` (main thread only: elsewhere size bounds alone apply)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum: int, frame: Any) -> None:
        raise _Timeout

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def guard(
    template: str | None,
    messages: list[dict[str, str]] | None = None,
    *,
    source: str = "the model",
    add_generation_prompt: bool = True,
    special_tokens: dict[str, str] | None = None,
) -> None:
    """Render `messages` with `template` within the bounds; raise TemplateRefused naming `source`
    and the cause otherwise. Without `messages`, a sample conversation is rendered for the bounds
    only: a template may refuse the sample (many refuse a system turn) and still be fine."""
    if not template:
        return
    for conversation in [messages] if messages is not None else SAMPLES:
        why = _render_bounded(template, conversation, add_generation_prompt, special_tokens or {})
        # A sample only tests the bounds; the user's own conversation must also render.
        if why and (messages is not None or why.startswith(("was stopped", "takes more"))):
            raise TemplateRefused(f"{source}: its chat template {why}")


def _render_bounded(
    template: str, messages: list[dict[str, str]], add_generation_prompt: bool, special_tokens: dict[str, Any]
) -> str | None:
    """None if the conversation renders within the bounds, else why not."""
    from jinja2.exceptions import SecurityError, TemplateError

    try:
        with _deadline(MAX_SECONDS):
            compiled = _compiled(template)
            size = 0
            for chunk in compiled.generate(
                messages=messages, add_generation_prompt=add_generation_prompt, **special_tokens
            ):
                size += len(chunk)
                if size > MAX_CHARS:
                    raise SecurityError(f"the rendered prompt passes {MAX_CHARS:,} characters")
    except _Timeout:
        return f"takes more than {MAX_SECONDS:g} s to render one conversation"
    except SecurityError as e:
        return f"was stopped: {e}"
    except TemplateError as e:
        return f"refuses the conversation: {e}"
    except (RecursionError, MemoryError) as e:
        return f"was stopped: {type(e).__name__}"
    except (TypeError, ValueError, ArithmeticError, LookupError) as e:
        return f"fails to render: {type(e).__name__}: {e}"
    return None
