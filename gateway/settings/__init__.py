"""One frozen, typed settings object, declared once (:mod:`.sections`), built once at the edge
from ``GATEWAY_*`` variables and command-line flags. Nothing else in the gateway reads the
environment.

Each section is a ``msgspec.Struct`` whose fields carry their type, bounds and meaning
(``Annotated[int, Meta(ge=1, le=256, description=...)]``): msgspec converts the environment's
strings and checks the bounds (``msgspec.convert(..., strict=False)``), ``gateway serve
--help`` shows the descriptions, and a few checks that span fields or parse a value (a Redis
URL, a CIDR network) are each section's :meth:`~.sections.Section.check`.

Every setting also has a flat name, the one the README's table, the ``GATEWAY_<NAME>``
variable and the ``--<name>`` flag use: the section's ``env_prefix`` and the field's name
(section ``redis``, field ``url``: ``redis_url``), unless the field names its own
(``Meta(extra={"name": ...})``). :data:`FIELDS` maps each flat name to its section and field;
:meth:`Settings.load`, :meth:`Settings.replace` and :meth:`Settings.to_env` speak flat names.
"""

from __future__ import annotations

import os
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Final, Literal, Self

import msgspec

from publisher.secretinput import SecretError, read_secret

from .sections import (
    ENV_PREFIX,
    SECTIONS,
    BridgeSection,
    BrowserSettings,
    FanoutSettings,
    IdentitySettings,
    LimitSettings,
    RedisSettings,
    Section,
    ServerSettings,
    SettingsError,
    SyncSection,
)

__all__ = [
    "ENV_PREFIX",
    "FIELDS",
    "SECRET_FIELDS",
    "SHARED_ENV",
    "BridgeSection",
    "BridgeSettings",
    "BrowserSettings",
    "FanoutSettings",
    "Field",
    "IdentitySettings",
    "LimitSettings",
    "RedisSettings",
    "ServerSettings",
    "Settings",
    "SettingsError",
    "SettingsGroup",
    "SyncSection",
    "SyncSettings",
    "field_docs",
]


class SettingsGroup(msgspec.Struct, frozen=True, kw_only=True):
    """What a settings object of one command is made of: its sections (each a field of the
    struct) and the machinery that loads them from the environment and flags. A group's
    :attr:`FIELDS` maps every flat name to its section and field."""

    #: section attribute -> section class, and every flat name; set once per group below
    SECTIONS: ClassVar[Mapping[str, type[Section]]]
    FIELDS: ClassVar[Mapping[str, Field]]

    def __post_init__(self) -> None:
        """Every section checked, however the settings were made (an embedder's
        ``Settings(server=ServerSettings(port=0))`` included): the declared bounds and each
        section's :meth:`~.sections.Section.check`; :class:`SettingsError` naming the
        variable and flag."""
        for name, kind in self.SECTIONS.items():
            section = getattr(self, name)
            try:
                msgspec.convert(msgspec.to_builtins(section), kind, strict=False)
            except msgspec.ValidationError as exc:
                given = msgspec.structs.asdict(section)
                raise SettingsError(_explain(self.FIELDS, kind, exc, given)) from None
            section.check()

    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Self:
        """Defaults, then ``GATEWAY_*`` from ``environ``, then ``overrides`` (flat names: CLI
        flags; ``None`` values are ignored). A secret setting (:data:`SECRET_FIELDS`) may come
        from the file ``GATEWAY_<NAME>_FILE`` names instead (its variable wins when both are
        set); one in :data:`SHARED_ENV` falls back last to the shared variable named there
        (``KEV_REDIS_URL``). Raises :class:`SettingsError` naming the variable."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name, field in cls.FIELDS.items():
            raw = env.get(field.env)
            if raw is None and field.secret and env.get(field.env + "_FILE"):
                try:
                    raw = read_secret(env[field.env + "_FILE"], what=field.env + "_FILE")
                except SecretError as exc:
                    raise SettingsError(str(exc)) from None
            if raw is None and field.shared_env:
                raw = env.get(field.shared_env)
            if raw is not None:
                values[name] = field.from_text(raw)
        for name, value in overrides.items():
            if name not in cls.FIELDS:
                raise TypeError(f"no setting named {name!r}")
            if value is not None:
                values[name] = value
        return cls.from_flat(values)

    @classmethod
    def from_flat(cls, values: Mapping[str, Any]) -> Self:
        """Settings from flat names and values (typed, or text msgspec converts), each
        section checked. Raises :class:`SettingsError` naming the variable and flag."""
        by_section: dict[str, dict[str, Any]] = {section: {} for section in cls.SECTIONS}
        for name, value in values.items():
            field = cls.FIELDS[name]
            by_section[field.section][field.attr] = value
        sections: dict[str, Any] = {}
        for section, kind in cls.SECTIONS.items():
            try:
                sections[section] = msgspec.convert(by_section[section], kind, strict=False)
            except msgspec.ValidationError as exc:
                raise SettingsError(_explain(cls.FIELDS, kind, exc, by_section[section])) from None
        return cls(**sections)  # checked by __post_init__

    @classmethod
    def parse(cls, name: str, raw: str) -> Any:
        """The value of setting ``name`` from its text form (an environment variable or a
        flag), cast to the setting's type, not yet checked against its bounds: ints, floats,
        booleans (true/false, 1/0, yes/no, on/off), choices and comma lists. Raises
        :class:`SettingsError` naming the variable."""
        field = cls.FIELDS[name]
        try:
            return msgspec.convert(field.from_text(raw), field.plain, strict=False)
        except msgspec.ValidationError as exc:
            raise SettingsError(
                f"{field.env}: {raw!r} is not a valid {field.kind} ({exc})"
            ) from None

    def flat(self) -> dict[str, Any]:
        """Every setting by its flat name."""
        return {name: getattr(getattr(self, f.section), f.attr) for name, f in self.FIELDS.items()}

    def replace(self, **changes: Any) -> Self:
        """These settings with some changed (flat names), checked as by :meth:`load`."""
        return self.from_flat({**self.flat(), **changes})

    def to_env(self) -> dict[str, str]:
        """These settings as ``GATEWAY_*`` variables: what worker processes read back."""
        env: dict[str, str] = {}
        for name, value in self.flat().items():
            if isinstance(value, tuple):
                text = ",".join(value)
            elif isinstance(value, bool):
                text = "true" if value else "false"
            else:
                text = str(value)
            env[self.FIELDS[name].env] = text
        return env


class Settings(SettingsGroup, frozen=True, kw_only=True):
    """Every knob of a gateway replica (``gateway serve``), by section; the README's
    configuration table lists them by their flat names (:data:`FIELDS`)."""

    server: ServerSettings = msgspec.field(default_factory=ServerSettings)
    redis: RedisSettings = msgspec.field(default_factory=RedisSettings)
    fanout: FanoutSettings = msgspec.field(default_factory=FanoutSettings)
    limits: LimitSettings = msgspec.field(default_factory=LimitSettings)
    identity: IdentitySettings = msgspec.field(default_factory=IdentitySettings)
    browser: BrowserSettings = msgspec.field(default_factory=BrowserSettings)


class BridgeSettings(SettingsGroup, frozen=True, kw_only=True):
    """Every knob of ``gateway bridge``: its own section (``GATEWAY_BRIDGE_*``) and the
    gateway's Redis, named as ``gateway serve`` names it (``GATEWAY_REDIS_*``,
    ``KEV_REDIS_URL``), so one environment serves both."""

    bridge: BridgeSection
    redis: RedisSettings = msgspec.field(default_factory=RedisSettings)


class SyncSettings(SettingsGroup, frozen=True, kw_only=True):
    """Every knob of ``gateway sync-identities``: its own section (``GATEWAY_SYNC_*``) and
    the gateway's Redis, named as ``gateway serve`` names it."""

    sync: SyncSection
    redis: RedisSettings = msgspec.field(default_factory=RedisSettings)


_BOOL_WORDS: Final = {"yes": "true", "on": "true", "no": "false", "off": "false", "": "false"}


@dataclass(frozen=True, slots=True)
class Field:
    """One setting as declared: where it lives, its flat name and variable, its types."""

    name: str
    section: str
    attr: str
    #: the declared type with its bounds, and the bare one (what a flag casts to)
    annotation: Any
    plain: Any
    #: None for one made per process (the replica's name)
    default: Any
    description: str
    secret: bool
    shared_env: str | None
    #: put between ``GATEWAY_`` and the name in the variable (the section's ``env_group``)
    env_group: str = ""
    section_kind: type[Section] | None = None

    @property
    def env(self) -> str:
        return ENV_PREFIX + (self.env_group + self.name).upper()

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def kind(self) -> str:
        """``int``, ``float``, ``str``, ``bool``, ``list`` or ``choice``."""
        origin = typing.get_origin(self.plain)
        if origin is Literal:
            return "choice"
        if origin is tuple:
            return "list"
        return str(getattr(self.plain, "__name__", self.plain))

    @property
    def choices(self) -> tuple[str, ...]:
        return typing.get_args(self.plain) if self.kind == "choice" else ()

    def from_text(self, raw: str) -> Any:
        """What msgspec converts, from a variable's or a flag's text: an int or float by
        Python's ``int``/``float`` (``" 80 "``, ``"+80"``, ``"1_000"``; ``"8080.0"`` is not an
        int: :class:`SettingsError`); a boolean from its words (true/false, 1/0, yes/no,
        on/off, any case); a choice case-folded (``INFO`` is ``info``); a comma list split,
        each part stripped; any other text exactly as given (a password may start or end
        with a space, and a worker reads back the very value its parent had)."""
        kind = self.kind
        if kind == "list":
            return [part.strip() for part in raw.split(",") if part.strip()]
        if kind == "bool":
            text = raw.strip()
            return _BOOL_WORDS.get(text.lower(), text)
        if kind == "choice":
            text = raw.strip()
            if all(isinstance(c, str) and c == c.lower() for c in self.choices):
                return text.lower()
            return text
        if kind in ("int", "float"):
            try:
                return int(raw) if kind == "int" else float(raw)
            except ValueError:
                raise SettingsError(f"{self.env}: {raw!r} is not a valid {kind}") from None
        return raw


def _bare(annotation: Any) -> Any:
    """The type without ``Annotated`` metadata (``Port`` -> ``int``)."""
    while typing.get_origin(annotation) is Annotated:
        annotation = typing.get_args(annotation)[0]
    return annotation


def _metas(annotation: Any) -> list[msgspec.Meta]:
    """Every ``Meta`` of an annotation, outermost last (``Annotated[Port, Meta(...)]``)."""
    found: list[msgspec.Meta] = []
    while typing.get_origin(annotation) is Annotated:
        annotation, *extras = typing.get_args(annotation)
        found = [m for m in extras if isinstance(m, msgspec.Meta)] + found
    return found


def _fields(sections: Mapping[str, type[Section]]) -> dict[str, Field]:
    found: dict[str, Field] = {}
    for section, kind in sections.items():
        hints = typing.get_type_hints(kind, include_extras=True)
        for info in msgspec.structs.fields(kind):
            extra: dict[str, Any] = {}
            description = ""
            for meta in _metas(hints[info.name]):
                extra |= meta.extra or {}
                description = meta.description or description
            name = extra.get("name") or kind.env_prefix + info.name
            default = None if info.default is msgspec.NODEFAULT else info.default
            found[name] = Field(
                name=name,
                section=section,
                attr=info.name,
                annotation=hints[info.name],
                plain=_bare(hints[info.name]),
                default=default,
                description=description,
                secret=bool(extra.get("secret")),
                shared_env=extra.get("shared_env"),
                env_group=kind.env_group,
                section_kind=kind,
            )
    return found


Settings.SECTIONS = SECTIONS
Settings.FIELDS = _fields(SECTIONS)
BridgeSettings.SECTIONS = {"bridge": BridgeSection, "redis": RedisSettings}
BridgeSettings.FIELDS = _fields(BridgeSettings.SECTIONS)
SyncSettings.SECTIONS = {"sync": SyncSection, "redis": RedisSettings}
SyncSettings.FIELDS = _fields(SyncSettings.SECTIONS)

#: every setting of ``gateway serve`` by its flat name
FIELDS: Final[Mapping[str, Field]] = Settings.FIELDS

#: variables the gateway shares with the publisher's CLI (``kev-publish``), read when the
#: setting's own ``GATEWAY_*`` variable is unset: one export serves both commands
SHARED_ENV: Final = {name: f.shared_env for name, f in FIELDS.items() if f.shared_env}

#: settings that may hold a secret: also read from the file ``GATEWAY_<NAME>_FILE`` names, and
#: given to ``gateway serve`` as ``--<name>-file`` (a flag's value is visible in ``ps``)
SECRET_FIELDS: Final = tuple(name for name, f in FIELDS.items() if f.secret)


def field_docs() -> dict[str, str]:
    """Each setting's meaning (its declared description), by flat name: what ``gateway
    serve --help`` shows."""
    return {name: f.description for name, f in FIELDS.items()}


def _explain(
    fields: Mapping[str, Field],
    kind: type[Section],
    exc: msgspec.ValidationError,
    given: Mapping[str, Any],
) -> str:
    """A msgspec error about one field as the operator knows the setting: its variable and
    flag, what it must be (from the declared bounds or choices), and what it got."""
    message = str(exc)
    attr = message.rpartition("- at `$.")[2].rstrip("`").split(".")[0].split("[")[0]
    field = next((f for f in fields.values() if f.section_kind is kind and f.attr == attr), None)
    if field is None:
        return message
    return f"{field.env} ({field.flag}): {_expected(field)}, got {given.get(attr)!r}"


def _expected(field: Field) -> str:
    """What a setting must be, from its declaration (or its ``Meta(extra={"expected":
    ...})`` where the bounds alone would mislead)."""
    for meta in _metas(field.annotation):
        if meta.extra and "expected" in meta.extra:
            return f"must be {meta.extra['expected']}"
    if field.kind == "choice":
        return "must be one of " + ", ".join(map(str, field.choices))
    if field.kind == "bool":
        return "must be true or false (or 1/0, yes/no, on/off)"
    bounds: dict[str, Any] = {}
    for meta in _metas(field.annotation):
        for limit in ("ge", "gt", "le", "lt", "pattern"):
            if getattr(meta, limit) is not None:
                bounds[limit] = getattr(meta, limit)
    if "pattern" in bounds:
        return f"must match {bounds['pattern']}"
    units = [m.extra["unit"] for m in _metas(field.annotation) if m.extra and "unit" in m.extra]
    unit = units[0] if units else " s" if field.kind == "float" else ""
    a_kind = ("an " if field.kind[0] in "aeiou" else "a ") + field.kind
    if "ge" in bounds and "le" in bounds:
        return f"must be {a_kind} {bounds['ge']}-{bounds['le']}{unit}"
    parts = []
    if "gt" in bounds:
        parts.append(f"> {bounds['gt']}")
    elif "ge" in bounds:
        parts.append(f">= {bounds['ge']}")
    if "lt" in bounds:
        parts.append(f"< {bounds['lt']}")
    elif "le" in bounds:
        parts.append(f"<= {bounds['le']}")
    if not parts:
        return f"must be {a_kind}"
    return f"must be {a_kind} {' and '.join(parts)}{unit}"
