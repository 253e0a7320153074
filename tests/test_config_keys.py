"""Each recipe key is declared once, on its section's dataclass (edgeopt.core.checks.key): its default, the check
of its raw value and its doc. The allowed keys, the schema and the reference all read that declaration; the
README's recipe and the recipe `edgeopt init` writes name only declared keys."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from edgeopt.core.checks import describe, key, keys_of, table_of
from edgeopt.errors import UserInputError

ROOT = Path(__file__).resolve().parents[1]


def sections() -> dict[str, type]:
    from edgeopt.config.budgets import Budgets
    from edgeopt.config.compression import CompressionConfig
    from edgeopt.config.pruning import FinetuneConfig, PruningConfig
    from edgeopt.config.qat import QatConfig
    from edgeopt.config.recipe import ExportConfig, ModelConfig, ParityConfig
    from edgeopt.core.parity import Tolerance
    from edgeopt.core.profile import ProfileConfig
    from edgeopt.core.tasks import TaskConfig
    from edgeopt.data.dataset import DataConfig
    from edgeopt.data.preprocess import Preprocess

    return {"model": ModelConfig, "export": ExportConfig, "parity": ParityConfig, "parity.tolerances.*": Tolerance,
            "profile": ProfileConfig, "calibration": DataConfig, "evaluation": DataConfig,
            "calibration.preprocess": Preprocess, "evaluation.preprocess": Preprocess, "preprocess": Preprocess,
            "compression": CompressionConfig, "pruning": PruningConfig, "pruning.finetune": FinetuneConfig,
            "pruning.finetune.preprocess": Preprocess, "qat": QatConfig, "qat.preprocess": Preprocess,
            "select": Budgets, "task": TaskConfig}


NOT_KEYS = {"DataConfig": {"base_dir"}}  # fields that are not recipe keys (set by the loader)


def test_every_field_of_a_section_is_a_declared_key_with_a_doc():
    for name, cls in sections().items():
        declared = keys_of(cls)
        plain = {f.name for f in dataclasses.fields(cls)} - set(declared) - NOT_KEYS.get(cls.__name__, set())
        assert not plain, f"[{name}] {cls.__name__}: fields {plain} are not declared with key(...)"
        for k, default, doc in describe(cls):
            assert doc and len(doc) <= 120, (name, k)


def test_the_schema_allowed_keys_and_defaults_come_from_the_declaration():
    @dataclasses.dataclass(frozen=True)
    class Section:
        from edgeopt.core.checks import integer

        size: int = key(3, check=integer(1, 10), doc="a size")
        name: str = key("x", doc="checked by the class itself")

    check = table_of(Section, "[demo]")
    check({"size": 5, "name": "y"}, "[demo]")
    with pytest.raises(UserInputError, match=r"\[demo\] size = 11: an integer from 1 to 10"):
        check({"size": 11}, "[demo]")
    assert describe(Section) == [("size", 3, "a size"), ("name", "x", "checked by the class itself")]
    assert Section().size == 3


def test_a_misspelt_section_key_is_refused_with_the_closest_name(tmp_path):
    from edgeopt.config.compression import CompressionConfig
    from edgeopt.config.pruning import PruningConfig

    with pytest.raises(UserInputError, match="Did you mean 'subset_size' for 'subset_sise'") as e:
        CompressionConfig.from_dict({"subset_sise": 10})
    assert "reduce_range" in e.value.fix  # every declared key is allowed
    with pytest.raises(UserInputError, match="Did you mean 'ratio'"):
        PruningConfig.from_dict({"ration": 0.3})


def test_a_declared_check_refuses_a_bad_value_in_a_recipe(tmp_path):
    """The old hand-kept schema had no [profile] rounds: rounds = "x" ended in a ValueError traceback."""
    from edgeopt.config.recipe import recipe_from_dict

    base = {"model": {"source": "m.onnx"}, "inputs": [{"name": "x", "shape": [1, 4]}]}
    for section, value, message in (("profile", {"rounds": "x"}, "[profile] rounds = 'x': an integer from 1"),
                                    ("preprocess", {"pad_value": 300}, "[preprocess] pad_value = 300"),
                                    ("preprocess", {"letterbox": "yes"}, "letterbox = 'yes': true or false")):
        with pytest.raises(UserInputError, match=re.escape(message)):
            recipe_from_dict({**base, section: value}, tmp_path)


def _written_keys(toml_text: str) -> dict[str, set[str]]:
    """{section: keys} of a commented TOML text, commented-out keys and tables included."""
    out, section = {}, ""
    for raw in toml_text.splitlines():
        line = raw.strip().lstrip("#").strip()
        if m := re.match(r"^\[\[?([\w.\-]+)\]\]?", line):
            section = m[1]
            continue
        if m := re.match(r"^([a-z_]+)\s*=", line):
            out.setdefault(section, set()).add(m[1])
    return out


def _section_class(name: str):
    table = sections()
    if name in table:
        return table[name]
    wild = re.sub(r"^parity\.tolerances\.\w+$", "parity.tolerances.*", name)
    return table.get(wild)


@pytest.mark.parametrize("source", ["README", "init"])
def test_documented_recipes_name_only_declared_keys(source, tmp_path):
    if source == "README":
        text = (ROOT / "README.md").read_text()
        start = text.index("## The recipe")
        block = text[text.index("```toml", start) + 7:text.index("```", text.index("```toml", start) + 7)]
    else:
        pytest.importorskip("PIL")
        from PIL import Image

        from edgeopt.config.starter import starter_recipe

        for c in "ab":
            (tmp_path / "digits" / c).mkdir(parents=True)
            Image.new("L", (8, 8)).save(tmp_path / "digits" / c / "0.png")
        block = starter_recipe("model.py:build", tmp_path / "digits", base=tmp_path)
    checked = 0
    for section, written in _written_keys(block).items():
        cls = _section_class(section)
        if cls is None:
            continue  # top level, [[inputs]], [dims.*]: not dataclass sections
        unknown = written - set(keys_of(cls))
        assert not unknown, f"{source} [{section}] writes undeclared keys {unknown}"
        checked += len(written)
    assert checked >= 15


def test_every_section_with_a_schema_is_a_recipe_key():
    from edgeopt.config.recipe import TOP_KEYS, section_checks
    from edgeopt.config.schema import TOP_LEVEL

    assert set(section_checks()) | set(TOP_LEVEL) <= set(TOP_KEYS)
    assert set(TOP_KEYS) - set(section_checks()) - set(TOP_LEVEL) == {"task"}  # [task]: TaskConfig checks itself
