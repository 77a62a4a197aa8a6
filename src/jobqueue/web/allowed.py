"""What a caller of ``POST /jobs`` may ask the provider for: models and options.

The API passes ``model`` and ``options`` through to the generator, and the provider bills
by them (a bigger size, more images, a dearer model). So the host app decides what callers
may pick, with an `Allowed`; the default allows the models and options docs/generators.md
documents, with sizes and counts bounded. A refused request is a 422 problem that names
what is allowed, and nothing is enqueued.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigurationError
from .problems import ApiError

#: An option's allowed values: a collection of exact values (strings, numbers,
#: booleans), or a ``range`` of integers.
OptionRule = Collection[str | int | float | bool] | range

DEFAULT_MODELS: frozenset[str] = frozenset(
    {"google/nano-banana", "openai/gpt-image-1", "gpt-image-1"}
)
DEFAULT_OPTIONS: Mapping[str, OptionRule] = {
    # Google models
    "aspect_ratio": ("1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9"),
    "image_size": ("1K", "2K"),
    # OpenAI models
    "size": ("auto", "1024x1024", "1536x1024", "1024x1536"),
    "quality": ("auto", "low", "medium", "high"),
    "background": ("auto", "transparent", "opaque"),
    "output_format": ("png", "jpeg", "webp"),
    # how many images (the mock and OpenAI models)
    "n": range(1, 5),
}


@dataclass(frozen=True)
class Allowed:
    """The models and options callers may choose.

    ``models``: the model names accepted (leaving the model out always is: the generator
    then uses its own default); None accepts any name. ``options``: each allowed option
    and its allowed values; None accepts any options (their size is still bounded by the
    queue's payload limit).
    """

    models: Iterable[str] | None = DEFAULT_MODELS
    options: Mapping[str, OptionRule] | None = field(default_factory=lambda: DEFAULT_OPTIONS)

    def __post_init__(self) -> None:
        if self.models is not None:
            if isinstance(self.models, str):
                raise ConfigurationError(
                    "Allowed(models=...) takes a collection of names, not one string",
                    hint='Allowed(models={"google/nano-banana"})',
                )
            object.__setattr__(self, "models", frozenset(self.models))
        if self.options is not None:
            for name, rule in self.options.items():
                if isinstance(rule, str) or not isinstance(rule, Collection):
                    raise ConfigurationError(
                        f"Allowed(options=...): the rule for {name!r} must be a collection "
                        f"of values or a range, not {rule!r}"
                    )
            object.__setattr__(self, "options", dict(self.options))

    @classmethod
    def anything(cls) -> Allowed:
        """No restriction: any model name and any options (the host checks them itself)."""
        return cls(models=None, options=None)

    def check(self, model: str | None, options: Mapping[str, Any]) -> None:
        """Raise a 422 `ApiError` naming what is allowed when ``model`` or ``options`` is not."""
        if model is not None and self.models is not None and model not in self.models:
            raise ApiError(
                422,
                "model_not_allowed",
                f"the model {model[:80]!r} is not allowed",
                hint="allowed models: "
                + _listing(sorted(self.models))
                + " (or leave 'model' out for the default)",
            )
        if self.options is None:
            return
        for name, value in options.items():
            rule = self.options.get(name)
            if rule is None:
                raise ApiError(
                    422,
                    "option_not_allowed",
                    f"the option {name[:80]!r} is not allowed",
                    hint="allowed options: " + _listing(sorted(self.options)),
                )
            if not _fits(value, rule):
                raise ApiError(
                    422,
                    "option_not_allowed",
                    f"the option {name[:80]!r} cannot be {_short(value)}",
                    hint=f"{name} takes {_describe(rule)}",
                )


def _fits(value: Any, rule: OptionRule) -> bool:
    if isinstance(rule, range):
        return isinstance(value, int) and not isinstance(value, bool) and value in rule
    # Exact type as well as value: JSON's true is not the number 1, nor 1.0 the integer 1.
    return any(type(value) is type(allowed) and value == allowed for allowed in rule)


def _describe(rule: OptionRule) -> str:
    if isinstance(rule, range) and rule.step == 1 and len(rule):
        return f"an integer from {rule.start} to {rule.stop - 1}"
    return "one of " + _listing([repr(v) if isinstance(v, str) else str(v) for v in rule])


def _listing(items: list[str]) -> str:
    return ", ".join(items) if items else "(none)"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
