"""The product catalogue (`TWIN_CATALOGUE`, TOML; else the bundled example): what a customer may
order, the options they choose, and how each choice changes the routing and the price.

A product has a base routing (operations in sequence, each with a machine type, minutes per
unit, set-up minutes and optionally a site) and a base price per unit. An option is a choice
among `values` or free text (`pattern`, `max_length`), and always has a `default`. A choice's
`effects[value]` (a text option's `effect`, applied when the text is not empty) may add to the
price per unit or per order, scale an operation's minutes per unit, and insert operations
(after a named one, or at the end). `rules` forbid combinations of choices. A bad file stops
start-up naming the file, the line and the reason.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from twin.config import Loc, read_toml
from twin.errors import InvalidRequest

BUNDLED_CATALOGUE = Path(__file__).with_name("catalogue.toml")

Name = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,64}$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Operation(_Strict):
    name: Name
    machine_type: str | None = None
    site: str | None = None
    minutes_per_unit: float = Field(ge=0)
    setup_min: float = Field(default=0.0, ge=0)
    after: Name | None = None  # an inserted operation: after this one (else at the end)


class Effect(_Strict):
    price_per_unit: float = 0.0
    price: float = 0.0  # once per order
    scale: dict[Name, Annotated[float, Field(gt=0)]] = {}  # operation -> minutes factor
    operations: list[Operation] = []


class Option(_Strict):
    label: str | None = None
    values: list[str] | None = Field(default=None, min_length=1)
    pattern: str | None = None
    max_length: int | None = Field(default=None, ge=1, le=1000)
    default: str
    effects: dict[str, Effect] = {}  # a choice's value -> its effect
    effect: Effect | None = None  # a text option's, when the text is not empty

    @model_validator(mode="after")
    def _consistent(self) -> Option:
        if (self.values is None) == (self.pattern is None):
            raise ValueError("an option has either `values` (a choice) or `pattern` (free text)")
        if self.values is not None:
            if len(set(self.values)) != len(self.values):
                raise ValueError("`values` repeats a value")
            unknown = sorted(set(self.effects) - set(self.values))
            if unknown:
                raise ValueError(f"`effects` names {', '.join(unknown)}, not among `values`")
            if self.effect is not None or self.max_length is not None:
                raise ValueError("`effect` and `max_length` are for free-text options")
        else:
            if self.effects:
                raise ValueError("a free-text option has one `effect`, not `effects`")
            if self.max_length is None:
                raise ValueError("a free-text option needs `max_length`")
            try:
                re.compile(self.pattern or "")
            except re.error as exc:
                raise ValueError(f"`pattern` is not a regular expression: {exc}") from None
        return self

    def check(self, value: str) -> str | None:
        """None if `value` is allowed, else why not."""
        if self.values is not None:
            return None if value in self.values else f"not one of {', '.join(self.values)}"
        assert self.pattern is not None
        assert self.max_length is not None
        if len(value) > self.max_length:
            return f"longer than {self.max_length} characters"
        if value and not re.fullmatch(self.pattern, value):
            return f"does not match {self.pattern}"
        return None

    def effect_of(self, value: str) -> Effect | None:
        if self.values is not None:
            return self.effects.get(value)
        return self.effect if value else None


class Rule(_Strict):
    forbid: dict[Name, str] = Field(min_length=2)  # these choices together are not allowed
    reason: str


class Product(_Strict):
    id: Name
    name: str
    price_per_unit: float = Field(ge=0)
    currency: str = "EUR"
    operations: list[Operation] = Field(min_length=1)
    options: dict[Name, Option] = {}
    rules: list[Rule] = []


class Catalogue(_Strict):
    products: list[Product] = Field(min_length=1)

    def product(self, product_id: str) -> Product:
        for product in self.products:
            if product.id == product_id:
                return product
        known = ", ".join(p.id for p in self.products)
        raise InvalidRequest(f"no product {product_id!r} in the catalogue (it has {known})")

    def public(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


def load_catalogue(path: Path | None) -> Catalogue:
    """The catalogue file (`TWIN_CATALOGUE`), else the bundled one; a bad file names itself,
    the line and the reason."""
    return read_toml(path or BUNDLED_CATALOGUE, Catalogue, problems)


def problems(catalogue: Catalogue) -> Iterator[tuple[Loc, str]]:
    """What a valid shape can still get wrong, each at its key: a default an option does not
    allow, repeated names, effects and rules that name what the product does not have."""
    ids = [p.id for p in catalogue.products]
    for i, product in enumerate(catalogue.products):
        at: Loc = ("products", i)
        if ids.index(product.id) != i:
            yield (*at, "id"), f"product id {product.id} repeats"
        names = [op.name for op in product.operations]
        for j, op in enumerate(product.operations):
            if names.index(op.name) != j:
                yield (*at, "operations", j, "name"), f"operation name {op.name} repeats"
            if op.after is not None:
                yield (*at, "operations", j, "after"), "`after` is for inserted operations"
        for name, option in product.options.items():
            here = (*at, "options", name)
            problem = option.check(option.default)
            if problem:
                yield (*here, "default"), f"{option.default!r}: {problem}"
            effects = [((*here, "effects", v), e) for v, e in option.effects.items()]
            if option.effect is not None:
                effects.append(((*here, "effect"), option.effect))
            for where, effect in effects:
                inserted = [op.name for op in effect.operations]
                known = set(names) | set(inserted)
                for target in effect.scale:
                    if target not in known:
                        yield (*where, "scale", target), _no_operation(target, names)
                for k, op in enumerate(effect.operations):
                    if op.name in names or inserted.index(op.name) != k:
                        yield (*where, "operations", k, "name"), f"{op.name} is taken"
                    if op.after is not None and op.after not in known:
                        yield (*where, "operations", k, "after"), _no_operation(op.after, names)
        for k, rule in enumerate(product.rules):
            for name, value in rule.forbid.items():
                where = (*at, "rules", k, "forbid", name)
                if name not in product.options:
                    yield where, f"no option {name}"
                elif problem := product.options[name].check(value):
                    yield where, f"{value!r}: {problem}"


def _no_operation(name: str, routing: list[str]) -> str:
    return f"no operation {name} (the routing has {', '.join(routing)})"
