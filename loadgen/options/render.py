"""The table on a command line: rendered into a parser, read back from its namespace.

``add_arguments`` puts every option a front end shows on its parser
(argparse for ``loadgen connect`` and ``loadgen run``, Locust's for the
``--vpn-*`` options); ``from_namespace`` reads the parsed values back into a
checked ``ClientOptions``; ``to_argv`` writes options as a command line, for
a parent handing them to its engine processes.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any

from loadgen.engine.feeder import FeederError, check_user_pattern
from loadgen.options.spec import Alias, Front, OptionError, Spec, dest_of, flag_of
from loadgen.options.table import ClientOptions, default_of, specs

__all__ = ["add_arguments", "from_namespace", "namespace_keys", "secrets_env", "to_argv"]


def add_arguments(parser: Any, front: Front) -> None:
    """Add every option ``front`` shows to ``parser`` (argparse, or Locust's parser).

    Values stay text until ``from_namespace`` reads them: Locust forwards a
    master's options to its workers as they are, so one reader serves both.
    """
    groups: dict[str, Any] = {}
    for name, spec in specs(front):
        default = default_of(name, front)
        target = parser
        if front is not Front.LOCUST:
            if spec.group not in groups:
                groups[spec.group] = parser.add_argument_group(spec.group)
            target = groups[spec.group]
        help_text = spec.help
        if not spec.is_flag and default is not None and not spec.secret:
            help_text += f" (default {spec.show(default)})"
        flags = [spec.flag(front)]
        if spec.short and front is not Front.LOCUST:
            flags.insert(0, spec.short)
        kwargs: dict[str, Any] = {"dest": spec.dest(front), "help": help_text}
        if spec.is_flag:
            kwargs.update(action="store_true", default=False)
        elif spec.repeat:
            kwargs.update(action="append", metavar=spec.metavar, default=None)
        else:
            # argparse keeps None for "not given"; Locust's web UI shows the default
            shown = _locust_default(spec, default) if front is Front.LOCUST else None
            kwargs.update(metavar=spec.metavar, choices=spec.choices, default=shown)
        if front is Front.LOCUST:
            if spec.env_var:
                kwargs["env_var"] = spec.env_var
            if spec.secret:
                # is_secret only masks the field: the page would still carry the value
                kwargs.update(is_secret=True, include_in_web_ui=False)
        target.add_argument(*flags, **kwargs)
        for alias in _aliases(spec, front):
            old = dict(kwargs, dest=_alias_dest(alias, front), help=argparse.SUPPRESS)
            old.pop("env_var", None)
            if front is Front.LOCUST:
                old["include_in_web_ui"] = False
            old["default"] = False if spec.is_flag else None
            target.add_argument(flag_of(alias.name, front), **old)


def _aliases(spec: Spec, front: Front) -> list[Alias]:
    return [a for a in spec.aliases if front in a.fronts]


def _locust_default(spec: Spec, value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, tuple):
        return spec.show(value)
    return value


def _alias_dest(alias: Alias, front: Front) -> str:
    return "deprecated_" + dest_of(alias.name, front)


def namespace_keys(front: Front) -> tuple[str, ...]:
    """Every attribute ``from_namespace`` reads for ``front`` (its options and old spellings)."""
    keys = []
    for _, spec in specs(front):
        keys.append(spec.dest(front))
        keys += [_alias_dest(a, front) for a in _aliases(spec, front)]
    return tuple(keys)


def secrets_env(opts: ClientOptions) -> dict[str, str]:
    """The secrets ``to_argv`` leaves out, as the environment variables that give them
    (the password excepted: it goes through stdin)."""
    env: dict[str, str] = {}
    for name, spec in specs(Front.RUN):
        value = getattr(opts, name)
        if spec.secret and spec.env_var and value and name != "password":
            env[spec.env_var] = "\n".join(value) if spec.repeat else str(value)
    return env


def to_argv(opts: ClientOptions, front: Front) -> list[str]:
    """The command line that gives ``opts`` on ``front`` (what differs from the
    defaults), secrets left out: how a parent hands its options to children."""
    argv: list[str] = []
    for name, spec in specs(front):
        value = getattr(opts, name)
        if spec.secret or value == default_of(name, front):
            continue
        if spec.is_flag:
            if value:
                argv.append(spec.flag(front))
        elif spec.repeat:
            for item in value:
                argv += [spec.flag(front), spec.show(item)]
        elif value is not None:
            argv += [spec.flag(front), spec.show(value)]
    return argv


def from_namespace(
    namespace: Any, front: Front, *, warn: Callable[[str], None] | None = None
) -> ClientOptions:
    """The options ``front`` parsed into ``namespace`` (None: all defaults), checked.

    Text values are parsed; typed ones (a Locust master forwards values as
    they are) are checked.  A deprecated spelling works, with a warning.
    Raises OptionError naming the option as ``front`` spells it.
    """
    values: dict[str, Any] = {}
    for name, spec in specs(front):
        default = default_of(name, front)
        raw = _given(namespace, spec.dest(front), spec, front, default)
        for alias in _aliases(spec, front):
            old = _given(namespace, _alias_dest(alias, front), spec, front, None)
            if old is None:
                continue
            old_flag, new_flag = flag_of(alias.name, front), spec.flag(front)
            if raw is not None:
                raise OptionError(f"give {new_flag} or its old spelling {old_flag}, not both")
            (warn or _warn)(f"{old_flag} is deprecated: use {new_flag}")
            raw, given_as = old, old_flag
            break
        else:
            given_as = spec.flag(front)
        values[name] = default if raw is None else _value(spec, raw, given_as)
    try:
        opts = ClientOptions(**values)
    except OptionError as exc:
        # the table's own checks name the CLI spelling; say it as this front end does
        raise OptionError(_respell(str(exc), front)) from None
    _check_together(opts, front)
    return opts


def _given(namespace: Any, dest: str, spec: Spec, front: Front, default: Any) -> Any:
    """The value given for ``dest``, or None when it was not given (Locust keeps
    the default it showed, which counts as not given)."""
    value = getattr(namespace, dest, None) if namespace is not None else None
    stdin = getattr(namespace, "password_stdin", False) is True
    if (
        value is None
        and spec.env_var
        and spec.secret
        and front is not Front.LOCUST
        and not (spec.name == "password" and stdin)
    ):
        # Locust reads its env_var itself; the CLI takes secrets from the environment too
        value = os.environ.get(spec.env_var) or None
        if value is not None and spec.repeat:
            value = value.split("\n")
    if value is None or (spec.is_flag and value is False) or (spec.repeat and not value):
        return None
    # Locust's web UI shows every option in a field: empty, or the default shown, is none
    if front is Front.LOCUST and value in ("", _locust_default(spec, default)):
        return None
    return value


def _value(spec: Spec, raw: Any, given_as: str) -> Any:
    if spec.is_flag:
        return bool(raw)
    try:
        if spec.repeat:
            return spec.parse_all([raw] if isinstance(raw, str) else raw)
        if isinstance(raw, str):
            return spec.parse(raw)
        value = tuple(raw) if isinstance(raw, list) else raw
        spec.validate(value)
        return value
    except (ValueError, TypeError) as exc:
        detail = "(hidden)" if spec.secret else str(exc)
        raise OptionError(f"{given_as}: {detail}") from None


def _respell(message: str, front: Front) -> str:
    if front is not Front.LOCUST:
        return message
    for _, spec in specs():
        cli = spec.flag(Front.CONNECT)
        if message.startswith(cli + ":"):
            return spec.flag(front) + message[len(cli) :]
    return message


def _check_together(opts: ClientOptions, front: Front) -> None:
    """What no single option can check."""

    def flag(name: str) -> str:
        return flag_of(name, front)

    if opts.servercert is not None and opts.insecure:
        raise OptionError(f"{flag('servercert')} and {flag('insecure')} contradict each other")
    if opts.password is not None and opts.password_stdin:
        raise OptionError(f"give either {flag('password')} or {flag('password-stdin')}, not both")
    if opts.credentials is None:
        try:
            # many sessions need a unique user each, or the gateway evicts one
            check_user_pattern(opts.user, need_n=front is not Front.CONNECT)
        except FeederError as exc:
            raise OptionError(f"{flag('user')}: {exc}") from None


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)
